package restore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/golden"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

const segSize = 1 << 20

// fakeArchive is a repository with a backup on timeline 1 and WAL that
// switches to timeline 2 inside segment 5:
//
//	TLI 1: 2 3 4 5.partial        (the old timeline's last, partial segment)
//	TLI 2:         5 6 7.partial  (history: 1 ended at 0/580000)
type fakeArchive struct {
	r      *repo.Repo
	t0     time.Time // backup end
	segEnd map[string]time.Time
}

func newFakeArchive(t *testing.T) *fakeArchive {
	t.Helper()
	ctx := context.Background()
	b, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{Compression: "none", ZstdLevel: 1})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeArchive{r: r, t0: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), segEnd: map[string]time.Time{}}
	put := func(name string, data []byte, attrs map[string]string) {
		if _, err := r.Put(ctx, name, bytes.NewReader(data), attrs); err != nil {
			t.Fatal(err)
		}
	}
	put("wal/settings.json", []byte(`{"system_id":"1","segment_size":1048576}`), nil)
	bk := basebackup.Backup{
		ID: "20261124T095900Z-000000", StartLSN: 0x200028, EndLSN: 0x200100, Timeline: 1, EndTimeline: 1,
		StartTime: f.t0.Add(-time.Minute), EndTime: f.t0, PGVersion: 150018, SystemID: "1", SegmentSize: segSize,
	}
	meta, _ := json.Marshal(bk)
	put(basebackup.MetaName(bk.ID), meta, nil)
	seg := func(tli uint32, no uint64, partial uint64, minutes int) {
		s := wal.SegmentAt(tli, pglogrepl.LSN(no*segSize), segSize)
		name := s.ObjectName()
		if partial > 0 {
			name = s.PartialObjectName(partial)
		}
		f.segEnd[name] = f.t0.Add(time.Duration(minutes) * time.Minute)
		put(name, []byte("wal"), map[string]string{wal.AttrLastTime: f.segEnd[name].Format(time.RFC3339Nano)})
	}
	seg(1, 2, 0, 1)
	seg(1, 3, 0, 2)
	seg(1, 4, 0, 3)
	seg(1, 5, 0x80000, 4)
	put(wal.HistoryObjectName(2), []byte("1\t0/580000\tno recovery target specified\n"), nil)
	seg(2, 5, 0, 5)
	seg(2, 6, 0, 6)
	seg(2, 7, 0x1000, 7)
	return f
}

func TestPlanFollowsTimelines(t *testing.T) {
	ctx := context.Background()
	f := newFakeArchive(t)
	p, err := restore.NewPlan(ctx, f.r, restore.Point{Latest: true})
	if err != nil {
		t.Fatal(err)
	}
	if p.Timeline != 2 || p.FirstSegment != "000000010000000000000002" || p.LastSegment != "000000020000000000000007 (partial)" || p.Segments != 6 || p.ArchiveEndLSN.String() != "0/701000" {
		t.Errorf("plan %+v", p)
	}
	if !p.ArchiveCompleteTo.Equal(f.t0.Add(7*time.Minute)) || !p.Window.From.Equal(f.t0) || !p.Window.To.Equal(f.t0.Add(7*time.Minute)) {
		t.Errorf("plan times %+v, window %+v", p, p.Window)
	}
	if s := p.String(); !strings.Contains(s, "from 2026-11-24T10:00:00Z to 2026-11-24T10:07:00Z") {
		t.Errorf("plan text:\n%s", s)
	}
	js, err := json.Marshal(p)
	if err != nil || !strings.Contains(string(js), `"backup_id":"20261124T095900Z-000000"`) || !strings.Contains(string(js), `"latest":true`) {
		t.Errorf("plan JSON %s, %v", js, err)
	}
	if _, err := restore.NewPlan(ctx, f.r, restore.Point{Time: f.t0.Add(6 * time.Minute)}); err != nil {
		t.Errorf("time inside the archive: %v", err)
	}
	for name, target := range map[string]restore.Point{
		"before the first backup": {Time: f.t0.Add(-time.Second)},
		"after the archive":       {Time: f.t0.Add(8 * time.Minute)},
		"LSN after the archive":   {LSN: 0x701001},
	} {
		_, err := restore.NewPlan(ctx, f.r, target)
		if !restore.IsRefused(err) || !strings.Contains(err.Error(), "restores are possible from 2026-11-24T10:00:00Z to 2026-11-24T10:07:00Z") {
			t.Errorf("%s: %v, want a refusal naming the window", name, err)
		}
	}
	if _, err := restore.NewPlan(ctx, f.r, restore.Point{Time: f.t0, Latest: true}); err == nil || restore.IsRefused(err) {
		t.Errorf("two targets: %v, want an argument error", err)
	}
}

func TestPlanRefusesAGap(t *testing.T) {
	ctx := context.Background()
	f := newFakeArchive(t)
	missing := wal.SegmentAt(2, 6*segSize, segSize).ObjectName()
	if err := f.r.Delete(ctx, missing); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]restore.Point{
		"latest":          {Latest: true},
		"after the hole":  {Time: f.t0.Add(6 * time.Minute)},
		"LSN beyond hole": {LSN: 0x650000},
	} {
		_, err := restore.NewPlan(ctx, f.r, target)
		if !restore.IsRefused(err) || !strings.Contains(err.Error(), missing) {
			t.Errorf("%s: %v, want a refusal naming %s", name, err, missing)
		}
	}
	// A leftover partial snapshot of the missing segment does not hide the
	// hole: later WAL exists, so the segment was completed.
	if _, err := f.r.Put(ctx, wal.SegmentAt(2, 6*segSize, segSize).PartialObjectName(0x800), bytes.NewReader([]byte("wal")),
		map[string]string{wal.AttrLastTime: f.t0.Add(5*time.Minute + 30*time.Second).Format(time.RFC3339Nano)}); err != nil {
		t.Fatal(err)
	}
	if _, err := restore.NewPlan(ctx, f.r, restore.Point{Latest: true}); !restore.IsRefused(err) || !strings.Contains(err.Error(), missing) {
		t.Errorf("latest with a leftover partial of %s: %v, want a refusal naming it", missing, err)
	}
	if problems, err := restore.ArchiveProblems(ctx, f.r); err != nil || len(problems) != 1 || !strings.Contains(problems[0], missing) {
		t.Errorf("ArchiveProblems with a leftover partial: %q, %v", problems, err)
	}
	if err := f.r.Delete(ctx, wal.SegmentAt(2, 6*segSize, segSize).PartialObjectName(0x800)); err != nil {
		t.Fatal(err)
	}
	// Before the hole the WAL is complete.
	p, err := restore.NewPlan(ctx, f.r, restore.Point{Time: f.t0.Add(5 * time.Minute)})
	if err != nil || p.LastSegment != "000000020000000000000005" {
		t.Errorf("time before the hole: %+v, %v", p, err)
	}
	// A hole in the backup's own WAL: no restore at all.
	if err := f.r.Delete(ctx, wal.SegmentAt(1, 2*segSize, segSize).ObjectName()); err != nil {
		t.Fatal(err)
	}
	_, err = restore.NewPlan(ctx, f.r, restore.Point{Time: f.t0.Add(5 * time.Minute)})
	if !restore.IsRefused(err) || !strings.Contains(err.Error(), "wal/00000001/000000010000000000000002") {
		t.Errorf("backup WAL missing: %v", err)
	}
}

// TestPlanGolden: the plan's text (--dry-run) and JSON over the fixed
// archive, for each kind of target.
func TestPlanGolden(t *testing.T) {
	ctx := context.Background()
	f := newFakeArchive(t)
	for _, c := range []struct {
		name string
		p    restore.Point
	}{
		{"latest", restore.Point{Latest: true}},
		{"time", restore.Point{Time: f.t0.Add(5*time.Minute + 30*time.Second)}},
		{"lsn", restore.Point{LSN: 0x5A0000}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := restore.NewPlan(ctx, f.r, c.p)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, "plan."+c.name+".txt", []byte(p.String()))
			js, err := json.MarshalIndent(p, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, "plan."+c.name+".json", append(js, '\n'))
			var back restore.Plan
			if err := json.Unmarshal(js, &back); err != nil {
				t.Fatal(err)
			}
			if again, err := json.MarshalIndent(back, "", "  "); err != nil || !bytes.Equal(again, js) {
				t.Errorf("the plan's JSON does not read back: %v\n%s", err, again)
			}
		})
	}
}
