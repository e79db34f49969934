package retention_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/retention"
	"github.com/synbak/synbak/retention/retentiontest"
)

// chainedWorld is the retentiontest world with chains: B0 full, B1 on B0,
// B2 on B1; B3 full, B4 on B3.
func chainedWorld(t *testing.T) *retentiontest.World {
	t.Helper()
	w := retentiontest.New(t, t0())
	w.MakeIncremental(t, 1, 0)
	w.MakeIncremental(t, 2, 1)
	w.MakeIncremental(t, 4, 3)
	return w
}

func deletedBackups(p retention.Plan) []string {
	var out []string
	for _, b := range p.Delete {
		if b.Complete {
			out = append(out, b.ID)
		}
	}
	return out
}

// TestPlanKeepsChains: a kept incremental keeps its whole chain, and the
// backups deleted go children first.
func TestPlanKeepsChains(t *testing.T) {
	w := chainedWorld(t)
	ids := func(is ...int) []string {
		var out []string
		for _, i := range is {
			out = append(out, w.Backups[i].ID)
		}
		return out
	}
	// The window's anchor is B2, which needs B1 and B0.
	p, err := retention.NewPlan(context.Background(), w.R, retention.Options{Backups: 2, Window: 36 * time.Hour, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(0, 1, 2, 3, 4), p.Kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if d := deletedBackups(p); len(d) != 0 {
		t.Errorf("deletes %v, which the anchor's chain needs", d)
	}
	if !p.Horizon.Equal(w.Backups[0].StartTime) {
		t.Errorf("horizon %s, want B0's start %s (a kept chain member)", p.Horizon, w.Backups[0].StartTime)
	}
	// The anchor is B3: B0..B2 go, B2 first, B0 last.
	p, err = retention.NewPlan(context.Background(), w.R, retention.Options{Backups: 2, Window: 12 * time.Hour, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(3, 4), p.Kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(ids(2, 1, 0), deletedBackups(p)); diff != "" {
		t.Errorf("deletion order (-want +got):\n%s", diff)
	}
}

// TestPruneChainKilledAtEveryPoint interrupts a prune that deletes a chain
// after each possible number of deletions: every backup still listed as
// complete has its whole chain, the kept ones are complete, the window is
// restorable, and a second prune reaches the uninterrupted result.
func TestPruneChainKilledAtEveryPoint(t *testing.T) {
	template := chainedWorld(t)
	ref := template.Clone(t)
	opts := retention.Options{Backups: 2, Window: 12 * time.Hour, Now: ref.Now}
	r, c := openCrashing(t, ref, -1)
	if _, err := prune(t, r, opts); err != nil {
		t.Fatal(err)
	}
	want := ref.Names(t)
	total := c.deletes
	if total < 10 {
		t.Fatalf("only %d deletions in a full prune", total)
	}
	for k := 0; k < total; k++ {
		w := template.Clone(t)
		r, _ := openCrashing(t, w, k)
		if _, err := prune(t, r, opts); !errors.Is(err, errCrash) {
			t.Fatalf("k=%d: prune returned %v, want the crash", k, err)
		}
		complete, err := basebackup.List(context.Background(), w.R)
		if err != nil {
			t.Fatalf("k=%d: %v", k, err)
		}
		var listed []string
		for _, b := range complete {
			listed = append(listed, b.ID)
			if _, err := basebackup.LoadChain(context.Background(), w.R, b); err != nil {
				t.Errorf("k=%d: listed backup %s without its chain: %v", k, b.ID, err)
			}
		}
		for _, keep := range w.Backups[3:] {
			if !slices.Contains(listed, keep.ID) {
				t.Errorf("k=%d: kept backup %s not complete", k, keep.ID)
			}
		}
		checkRestorable(t, w, w.Backups[3].EndTime, w.End)
		if t.Failed() {
			t.Fatalf("k=%d: broken after the crash", k)
		}
		r2, _ := openCrashing(t, w, -1)
		if _, err := prune(t, r2, opts); err != nil {
			t.Fatalf("k=%d: second prune: %v", k, err)
		}
		if diff := cmp.Diff(want, w.Names(t)); diff != "" {
			t.Fatalf("k=%d: state after the second prune differs from an uninterrupted prune (-want +got):\n%s", k, diff)
		}
	}
	t.Logf("%d interruption points checked", total)
}

// TestApplyRefusesANewDependent: an incremental backup taken on top of a
// backup after the plan chose to delete it stops Apply before it deletes
// anything.
func TestApplyRefusesANewDependent(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	p, err := retention.NewPlan(ctx, w.R, retention.Options{Backups: 2, Window: 12 * time.Hour, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(deletedBackups(p), w.Backups[2].ID) {
		t.Fatalf("the plan keeps %s; the test needs it deleted", w.Backups[2].ID)
	}
	w.MakeIncremental(t, 3, 2) // B3 now needs B2
	before2 := w.Names(t)
	_, err = retention.Apply(ctx, w.R, p, nil)
	if !retention.IsNeeded(err) {
		t.Fatalf("Apply = %v, want IsNeeded", err)
	}
	if diff := cmp.Diff(before2, w.Names(t)); diff != "" {
		t.Fatalf("Apply deleted objects before refusing (-before +after):\n%s", diff)
	}
}
