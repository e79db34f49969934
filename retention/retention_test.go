package retention_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/retention"
	"github.com/synbak/synbak/retention/retentiontest"
	"github.com/synbak/synbak/wal"
)

const segSize = retentiontest.SegSize

// t0 puts the world's Now a few seconds before the real clock, so that
// objects written now are "just written" for the policy.
func t0() time.Time {
	return time.Now().Add(-4*retentiontest.Day - 12*time.Hour).Truncate(time.Minute)
}

func ids(w *retentiontest.World, idx ...int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, w.Backups[i].ID)
	}
	return out
}

func deleted(p retention.Plan) []string {
	var out []string
	for _, b := range p.Delete {
		out = append(out, b.ID)
	}
	return out
}

func walName(tli uint32, no uint64) string {
	return wal.SegmentAt(tli, pglogrepl.LSN(no*segSize), segSize).Name()
}

func TestPlanPolicies(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	b := w.Backups
	type want struct {
		anchor    int
		kept      []int
		del       []string
		untouched []string
		wal       []retention.WALRange // Bytes not compared
		media     []string
		config    []string
		after     time.Time
	}
	tests := []struct {
		name string
		opts retention.Options
		want want
	}{
		{
			name: "count-bound: 2 backups, no window",
			opts: retention.Options{Backups: 2, Window: 0, Now: w.Now},
			want: want{
				anchor: 4, kept: []int{3, 4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID, b[2].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal: []retention.WALRange{
					{Timeline: 1, First: walName(1, 2), Last: walName(1, 8), Objects: 7},
					{Timeline: 2, First: walName(2, 8), Last: walName(2, 9), Objects: 2},
				},
				media:  []string{"gone", "replaced-old", "orphan-old"},
				config: []string{"C1"},
				after:  b[3].EndTime,
			},
		},
		{
			name: "window-bound: 36h window, anchor B2",
			opts: retention.Options{Backups: 1, Window: 36 * time.Hour, Now: w.Now},
			want: want{
				anchor: 2, kept: []int{2, 3, 4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal:       []retention.WALRange{{Timeline: 1, First: walName(1, 2), Last: walName(1, 5), Objects: 4}},
				media:     []string{"gone", "replaced-old", "orphan-old"},
				config:    []string{"C1"},
				after:     b[2].EndTime,
			},
		},
		{
			name: "anchor ended exactly at the window start",
			opts: retention.Options{Backups: 1, Window: w.Now.Sub(b[3].EndTime), Now: w.Now},
			want: want{
				anchor: 3, kept: []int{3, 4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID, b[2].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal: []retention.WALRange{
					{Timeline: 1, First: walName(1, 2), Last: walName(1, 8), Objects: 7},
					{Timeline: 2, First: walName(2, 8), Last: walName(2, 9), Objects: 2},
				},
				media:  []string{"gone", "replaced-old", "orphan-old"},
				config: []string{"C1"},
				after:  b[3].EndTime,
			},
		},
		{
			name: "anchor ended a second after the window start: the one before",
			opts: retention.Options{Backups: 1, Window: w.Now.Sub(b[3].EndTime) + time.Second, Now: w.Now},
			want: want{
				anchor: 2, kept: []int{2, 3, 4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal:       []retention.WALRange{{Timeline: 1, First: walName(1, 2), Last: walName(1, 5), Objects: 4}},
				media:     []string{"gone", "replaced-old", "orphan-old"},
				config:    []string{"C1"},
				after:     b[2].EndTime,
			},
		},
		{
			name: "count beats window: 4 backups",
			opts: retention.Options{Backups: 4, Window: 36 * time.Hour, Now: w.Now},
			want: want{
				anchor: 2, kept: []int{1, 2, 3, 4},
				del:       []string{b[0].ID, w.Abandoned},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal:       []retention.WALRange{{Timeline: 1, First: walName(1, 2), Last: walName(1, 3), Objects: 2}},
				media:     []string{"gone", "replaced-old", "orphan-old"}, // horizon D(1): gone was deleted at D(1) exactly
				after:     b[1].EndTime,
			},
		},
		{
			name: "window before every backup: the oldest is the anchor, only an old orphan goes",
			opts: retention.Options{Backups: 1, Window: 30 * retentiontest.Day, Now: w.Now},
			want: want{
				anchor: 0, kept: []int{0, 1, 2, 3, 4},
				untouched: []string{w.Abandoned, w.StaleRecent, w.InProgress},
				media:     []string{"orphan-old"},
				after:     b[0].EndTime,
			},
		},
		{
			name: "1 backup, no window: only the newest stays",
			opts: retention.Options{Backups: 1, Window: 0, Now: w.Now},
			want: want{
				anchor: 4, kept: []int{4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID, b[2].ID, b[3].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal: []retention.WALRange{
					{Timeline: 1, First: walName(1, 2), Last: walName(1, 8), Objects: 7},
					{Timeline: 2, First: walName(2, 8), Last: walName(2, 11), Objects: 4},
				},
				media:  []string{"gone", "replaced-old", "orphan-old", "late-del"},
				config: []string{"C1"},
				after:  b[4].EndTime,
			},
		},
		{
			name: "the newest backup ended after now: still kept, with the one before",
			opts: retention.Options{Backups: 1, Window: 0, Now: b[4].EndTime.Add(-time.Minute)},
			want: want{
				anchor: 3, kept: []int{3, 4},
				del:       []string{b[0].ID, w.Abandoned, b[1].ID, b[2].ID},
				untouched: []string{w.StaleRecent, w.InProgress},
				wal: []retention.WALRange{
					{Timeline: 1, First: walName(1, 2), Last: walName(1, 8), Objects: 7},
					{Timeline: 2, First: walName(2, 8), Last: walName(2, 9), Objects: 2},
				},
				media:  []string{"gone", "replaced-old", "orphan-old"},
				config: []string{"C1"},
				after:  b[3].EndTime,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := retention.NewPlan(ctx, w.R, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if p.Anchor != b[tt.want.anchor].ID {
				t.Errorf("anchor %s, want B%d %s", p.Anchor, tt.want.anchor, b[tt.want.anchor].ID)
			}
			if diff := cmp.Diff(ids(w, tt.want.kept...), p.Kept); diff != "" {
				t.Errorf("kept (-want +got):\n%s", diff)
			}
			if !slices.Contains(p.Kept, b[4].ID) {
				t.Errorf("the newest backup is not kept")
			}
			if diff := cmp.Diff(tt.want.del, deleted(p)); diff != "" {
				t.Errorf("deleted backups (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(append([]string{}, tt.want.untouched...), p.Untouched); diff != "" {
				t.Errorf("untouched incomplete backups (-want +got):\n%s", diff)
			}
			gotWAL := slices.Clone(p.WAL)
			for i := range gotWAL {
				if gotWAL[i].Bytes <= 0 {
					t.Errorf("WAL range %+v without bytes", gotWAL[i])
				}
				gotWAL[i].Bytes = 0
			}
			if diff := cmp.Diff(append([]retention.WALRange{}, tt.want.wal...), gotWAL); diff != "" {
				t.Errorf("WAL (-want +got):\n%s", diff)
			}
			if p.Media.Objects != len(tt.want.media) || p.Config.Objects != len(tt.want.config) {
				t.Errorf("media %d objects (want %d: %v), config %d (want %d: %v)", p.Media.Objects, len(tt.want.media), tt.want.media,
					p.Config.Objects, len(tt.want.config), tt.want.config)
			}
			if p.After == nil || !p.After.From.Equal(tt.want.after) || !p.After.To.Equal(w.End) {
				t.Errorf("window after %+v, want from %s to %s", p.After, tt.want.after, w.End)
			}
			if p.Before == nil || !p.Before.From.Equal(b[0].EndTime) || !p.Before.To.Equal(w.End) {
				t.Errorf("window before %+v", p.Before)
			}
			if !p.Horizon.Equal(b[tt.want.kept[0]].StartTime) {
				t.Errorf("horizon %s, want %s", p.Horizon, b[tt.want.kept[0]].StartTime)
			}
			if _, err := json.Marshal(p); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestOptionsChecked(t *testing.T) {
	w := retentiontest.New(t, t0())
	for _, o := range []retention.Options{{Backups: 0}, {Backups: 1, Window: -time.Hour}} {
		if _, err := retention.NewPlan(context.Background(), w.R, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// checkRestorable proves from the repository that every kind of restore
// inside [from, to] works: the database (restore.NewPlan), media and
// config as of those times, with every object present and intact.
func checkRestorable(t *testing.T, w *retentiontest.World, from, to time.Time) {
	t.Helper()
	ctx := context.Background()
	targets := []restore.Point{{Latest: true}, {Time: from}, {Time: to}}
	for d := time.Duration(0); from.Add(d).Before(to); d += 7 * time.Hour {
		targets = append(targets, restore.Point{Time: from.Add(d)})
	}
	for _, tg := range targets {
		if _, err := restore.NewPlan(ctx, w.R, tg); err != nil {
			t.Errorf("restore to %s: %v", tg, err)
		}
		at := tg.Time
		if tg.Latest {
			at = time.Time{}
		}
		present, _, err := mediawatch.Set(ctx, w.R, at)
		if err != nil {
			t.Fatal(err)
		}
		for p, ev := range present {
			if _, err := w.R.Verify(ctx, mediawatch.ObjectName(ev.SHA256)); err != nil {
				t.Errorf("media %s as of %s: %v", p, tg, err)
			}
		}
		st, err := confsnap.StateAt(ctx, w.R, at)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range st.Files {
			if f.Deleted {
				continue
			}
			if _, err := w.R.Verify(ctx, confsnap.ObjectName(f.SHA256)); err != nil {
				t.Errorf("config %s as of %s: %v", f.Path, tg, err)
			}
		}
	}
	if _, err := mediawatch.Restore(ctx, w.R, from, t.TempDir()); err != nil {
		t.Errorf("media restore as of %s: %v", from, err)
	}
}

func exists(t *testing.T, r *repo.Repo, name string) bool {
	t.Helper()
	_, err := r.Stat(context.Background(), name)
	if err != nil && !repo.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	b := w.Backups
	// Before: every time from B0's end is restorable.
	checkRestorable(t, w, b[0].EndTime, w.End)

	opts := retention.Options{Backups: 2, Window: 0, Now: w.Now}
	p, err := retention.NewPlan(ctx, w.R, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := retention.Apply(ctx, w.R, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Backups != 4 || res.WAL != 9 || res.Media != 3 || res.Config != 1 || res.Skipped != 0 || res.Objects != p.Objects() || res.Bytes != p.Bytes() {
		t.Errorf("result %+v, plan %d objects %d bytes", res, p.Objects(), p.Bytes())
	}

	complete, err := basebackup.List(ctx, w.R)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, bk := range complete {
		got = append(got, bk.ID)
	}
	if diff := cmp.Diff(ids(w, 3, 4), got); diff != "" {
		t.Errorf("complete backups after prune (-want +got):\n%s", diff)
	}
	inc, err := basebackup.ListIncomplete(ctx, w.R)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, i := range inc {
		got = append(got, i.ID)
	}
	if diff := cmp.Diff([]string{w.StaleRecent, w.InProgress}, got); diff != "" {
		t.Errorf("incomplete backups after prune (-want +got):\n%s", diff)
	}
	for _, n := range w.Names(t) {
		name := strings.Fields(n)[0]
		for _, id := range []string{b[0].ID, b[1].ID, b[2].ID, w.Abandoned} {
			if strings.HasPrefix(name, basebackup.ObjectPrefix(id)) {
				t.Errorf("%s left", name)
			}
		}
		if strings.HasPrefix(name, "wal/00000001/") {
			t.Errorf("%s left", name)
		}
	}
	for name, want := range map[string]bool{
		"wal/settings.json":                                true,
		wal.HistoryObjectName(2):                           true,
		wal.SegmentAt(2, 9*segSize, segSize).ObjectName():  false,
		wal.SegmentAt(2, 10*segSize, segSize).ObjectName(): true,
		mediawatch.ObjectName(w.Media["gone"]):             false,
		mediawatch.ObjectName(w.Media["replaced-old"]):     false,
		mediawatch.ObjectName(w.Media["orphan-old"]):       false,
		mediawatch.ObjectName(w.Media["orphan-new"]):       true,
		mediawatch.ObjectName(w.Media["kept"]):             true,
		mediawatch.ObjectName(w.Media["late-del"]):         true,
		mediawatch.ObjectName(w.Media["replaced-new"]):     true,
		mediawatch.ObjectName(w.Media["new"]):              true,
		confsnap.ObjectName(w.Config["C1"]):                false,
		confsnap.ObjectName(w.Config["C2"]):                true,
		confsnap.ObjectName(w.Config["K1"]):                true,
		confsnap.ObjectName(w.Config["O1"]):                true, // the newest content of a deleted file
		"media/index/000000000001.jsonl":                   true,
		"config/index/000000000001.json":                   true,
	} {
		if got := exists(t, w.R, name); got != want {
			t.Errorf("%s exists: %v, want %v", name, got, want)
		}
	}
	if len(w.Names(t)) == 0 || !exists(t, w.R, "meta/repo.0000000001.json") {
		t.Errorf("repository metadata gone: %v", w.Names(t))
	}

	// Inside the window (from B3's end) every restore works; before it,
	// restore refuses naming the window.
	checkRestorable(t, w, b[3].EndTime, w.End)
	for _, tg := range []time.Time{b[3].EndTime.Add(-time.Second), b[0].EndTime.Add(time.Hour)} {
		_, err := restore.NewPlan(ctx, w.R, restore.Point{Time: tg})
		if !restore.IsRefused(err) || !strings.Contains(err.Error(), "restores are possible from") {
			t.Errorf("restore to %s after prune: %v, want a refusal naming the window", tg, err)
		}
	}

	// A second prune finds nothing to do.
	p2, err := retention.NewPlan(ctx, w.R, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Empty() {
		t.Errorf("second plan not empty: %+v", p2)
	}
}

// TestApplyChecksIndexesAgain: a media file stored after the plan with the
// content of an object the plan would delete keeps that object.
func TestApplyChecksIndexesAgain(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	p, err := retention.NewPlan(ctx, w.R, retention.Options{Backups: 2, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	ev := mediawatch.Event{Path: "local_content/cc/dd/again", SHA256: w.Media["gone"], Size: int64(len("media content gone")),
		MTime: w.Now, FirstSeen: w.Now, Event: mediawatch.Added, At: w.Now}
	line, _ := json.Marshal(ev)
	if _, err := w.R.Put(ctx, "media/index/000000000004.jsonl", strings.NewReader(string(line)+"\n"), nil); err != nil {
		t.Fatal(err)
	}
	res, err := retention.Apply(ctx, w.R, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Skipped != 1 || res.Media != 2 || !exists(t, w.R, mediawatch.ObjectName(w.Media["gone"])) {
		t.Errorf("result %+v; object of the re-added file exists: %v", res, exists(t, w.R, mediawatch.ObjectName(w.Media["gone"])))
	}
	checkRestorable(t, w, w.Backups[3].EndTime, w.End)
}
