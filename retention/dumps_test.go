package retention_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/retention"
	"github.com/synbak/synbak/retention/retentiontest"
)

func dumpIDs(w *retentiontest.World, idx ...int) []string {
	out := []string{}
	for _, i := range idx {
		out = append(out, w.Dumps[i].ID)
	}
	return out
}

func TestPlanDumps(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	w.AddDumps(t)
	d, b := w.Dumps, w.Backups
	for _, tt := range []struct {
		name          string
		dumps         int
		kept          []int
		del           []string
		horizon       time.Time
		media, config int
	}{
		{name: "2 dumps: the newest two stay, the horizon is the oldest kept backup's", dumps: 2, kept: []int{2, 3},
			del: []string{d[0].ID, w.DumpAbandoned, d[1].ID}, horizon: b[3].StartTime, media: 3, config: 1},
		{name: "1 dump", dumps: 1, kept: []int{3},
			del: []string{d[0].ID, w.DumpAbandoned, d[1].ID, d[2].ID}, horizon: b[3].StartTime, media: 3, config: 1},
		{name: "4 dumps: the oldest kept dump moves the horizon back", dumps: 4, kept: []int{0, 1, 2, 3},
			del: []string{w.DumpAbandoned}, horizon: d[0].StartTime, media: 1, config: 0},
		{name: "0 keeps every complete dump", dumps: 0, kept: []int{0, 1, 2, 3},
			del: []string{w.DumpAbandoned}, horizon: d[0].StartTime, media: 1, config: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := retention.NewPlan(ctx, w.R, retention.Options{Backups: 2, Dumps: tt.dumps, Now: w.Now})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(dumpIDs(w, tt.kept...), p.KeptDumps); diff != "" {
				t.Errorf("kept dumps (-want +got):\n%s", diff)
			}
			var del []string
			for _, x := range p.DeleteDumps {
				del = append(del, x.ID)
				want := 3 // two parts and dump.json
				if !x.Complete {
					want = 1
				}
				if x.Objects != want || x.Bytes <= 0 || x.Reason == "" {
					t.Errorf("deleted dump %+v: want %d objects, bytes and a reason", x, want)
				}
			}
			if diff := cmp.Diff(tt.del, del); diff != "" {
				t.Errorf("deleted dumps (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{w.DumpRunning}, p.UntouchedDumps); diff != "" {
				t.Errorf("untouched dumps (-want +got):\n%s", diff)
			}
			if !p.Horizon.Equal(tt.horizon) {
				t.Errorf("horizon %s, want %s", p.Horizon, tt.horizon)
			}
			if p.Media.Objects != tt.media || p.Config.Objects != tt.config {
				t.Errorf("media %d objects (want %d), config %d (want %d)", p.Media.Objects, tt.media, p.Config.Objects, tt.config)
			}
			if diff := cmp.Diff([]string{b[0].ID, w.Abandoned, b[1].ID, b[2].ID}, deleted(p)); diff != "" {
				t.Errorf("dumps changed the backups deleted (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := retention.NewPlan(ctx, w.R, retention.Options{Backups: 1, Dumps: -1}); err == nil {
		t.Error("Dumps -1 accepted")
	}
}

// checkDumpRestorable proves that dump d is offered and complete, and that
// media and config as of its start are in the repository.
func checkDumpRestorable(t *testing.T, w *retentiontest.World, d dump.Dump) {
	t.Helper()
	ctx := context.Background()
	got, err := dump.Load(ctx, w.R, d.ID)
	if err != nil {
		t.Errorf("dump %s: %v", d.ID, err)
		return
	}
	for _, db := range got.Databases {
		for i := range db.Parts {
			if _, err := w.R.Verify(ctx, dump.PartName(d.ID, db.Name, i)); err != nil {
				t.Errorf("dump %s: %v", d.ID, err)
			}
		}
	}
	present, _, err := mediawatch.Set(ctx, w.R, d.StartTime)
	if err != nil {
		t.Fatal(err)
	}
	for p, ev := range present {
		if _, err := w.R.Verify(ctx, mediawatch.ObjectName(ev.SHA256)); err != nil {
			t.Errorf("media %s as of dump %s: %v", p, d.ID, err)
		}
	}
	st, err := confsnap.StateAt(ctx, w.R, d.StartTime)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range st.Files {
		if !f.Deleted {
			if _, err := w.R.Verify(ctx, confsnap.ObjectName(f.SHA256)); err != nil {
				t.Errorf("config %s as of dump %s: %v", f.Path, d.ID, err)
			}
		}
	}
}

// A kept dump older than every kept backup keeps the media and config of
// its start time; once it goes, they go.
func TestApplyDumpsHorizon(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	w.AddDumps(t)
	d := w.Dumps
	res, err := prune(t, w.R, retention.Options{Backups: 2, Dumps: 4, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if res.Dumps != 1 || res.Backups != 4 || res.Media != 1 || res.Config != 0 {
		t.Errorf("result %+v", res)
	}
	for _, x := range d {
		checkDumpRestorable(t, w, x)
	}
	for name, want := range map[string]bool{
		mediawatch.ObjectName(w.Media["gone"]):         true, // present at Dump0's start only
		mediawatch.ObjectName(w.Media["replaced-old"]): true,
		mediawatch.ObjectName(w.Media["orphan-old"]):   false,
		confsnap.ObjectName(w.Config["C1"]):            true,
		dump.PartName(w.DumpAbandoned, "synapse", 0):   false,
		dump.PartName(w.DumpRunning, "synapse", 0):     true,
	} {
		if got := exists(t, w.R, name); got != want {
			t.Errorf("%s exists: %v, want %v", name, got, want)
		}
	}

	res, err = prune(t, w.R, retention.Options{Backups: 2, Dumps: 2, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if res.Dumps != 2 || res.Media != 2 || res.Config != 1 {
		t.Errorf("second result %+v", res)
	}
	complete, incomplete, err := dump.Scan(ctx, w.R)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range complete {
		got = append(got, x.ID)
	}
	if diff := cmp.Diff(dumpIDs(w, 2, 3), got); diff != "" || len(incomplete) != 1 || incomplete[0].ID != w.DumpRunning {
		t.Errorf("dumps after prune (-want +got):\n%s; incomplete %+v", diff, incomplete)
	}
	for _, n := range w.Names(t) {
		for _, x := range d[:2] {
			if strings.HasPrefix(n, dump.ObjectPrefix(x.ID)) {
				t.Errorf("%s left", n)
			}
		}
	}
	if exists(t, w.R, mediawatch.ObjectName(w.Media["gone"])) {
		t.Error("media only Dump0 needed outlived it")
	}
	for _, x := range d[2:] {
		checkDumpRestorable(t, w, x)
	}
}
