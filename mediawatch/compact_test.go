package mediawatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// historyWriter stores synthetic index batches: files added, some deleted,
// some re-added, dated one second apart.
type historyWriter struct {
	r     *repo.Repo
	rng   *rand.Rand
	seq   uint64
	clock time.Time
	live  []string
	gone  []string
}

func newHistory(r *repo.Repo, seed uint64) *historyWriter {
	return &historyWriter{r: r, rng: rand.New(rand.NewPCG(seed, seed)), seq: 1, clock: t0}
}

func (h *historyWriter) event(p, kind string) Event {
	h.clock = h.clock.Add(time.Second)
	s := sha(fmt.Appendf(nil, "%s %d", p, h.rng.IntN(3)))
	return Event{Path: p, SHA256: s, Size: int64(h.rng.IntN(10000)), MTime: h.clock, FirstSeen: h.clock, Event: kind, At: h.clock}
}

// batches stores n batches of a few events each.
func (h *historyWriter) batches(t *testing.T, n int) {
	t.Helper()
	for range n {
		var evs []Event
		for range 1 + h.rng.IntN(4) {
			switch x := h.rng.IntN(10); {
			case x < 6 || len(h.live) == 0:
				p := contentPath(mediaID(h.rng))
				h.live = append(h.live, p)
				evs = append(evs, h.event(p, Added))
			case x < 8:
				i := h.rng.IntN(len(h.live))
				p := h.live[i]
				h.live = append(h.live[:i], h.live[i+1:]...)
				h.gone = append(h.gone, p)
				evs = append(evs, h.event(p, Deleted))
			case len(h.gone) > 0:
				i := h.rng.IntN(len(h.gone))
				p := h.gone[i]
				h.gone = append(h.gone[:i], h.gone[i+1:]...)
				h.live = append(h.live, p)
				evs = append(evs, h.event(p, Added))
			}
		}
		seq, err := storeBatch(context.Background(), h.r, h.seq, evs)
		if err != nil {
			t.Fatal(err)
		}
		h.seq = seq + 1
	}
}

// indexView is everything a loader can tell: the event sequence, the
// last sequence number and Set at several times.
type indexView struct {
	events []Event
	last   uint64
	sets   []map[string]Event
}

func viewOf(t *testing.T, r *repo.Repo, until time.Time) indexView {
	t.Helper()
	var v indexView
	last, err := ReadIndex(context.Background(), r, func(ev Event) error {
		v.events = append(v.events, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	v.last = last
	step := max(until.Sub(t0)/12, time.Second)
	for at := t0; !at.After(until); at = at.Add(step) {
		set, _, err := Set(context.Background(), r, at)
		if err != nil {
			t.Fatalf("Set(%s): %v", at, err)
		}
		v.sets = append(v.sets, set)
	}
	set, _, err := Set(context.Background(), r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	v.sets = append(v.sets, set)
	return v
}

func sameView(t *testing.T, what string, got, want indexView) {
	t.Helper()
	if len(got.events) != len(want.events) {
		t.Fatalf("%s: %d events, want %d", what, len(got.events), len(want.events))
	}
	for i := range want.events {
		if !reflect.DeepEqual(got.events[i], want.events[i]) {
			t.Fatalf("%s: event %d is %+v, want %+v", what, i, got.events[i], want.events[i])
		}
	}
	if got.last != want.last {
		t.Errorf("%s: last batch %d, want %d", what, got.last, want.last)
	}
	for i := range want.sets {
		if !reflect.DeepEqual(got.sets[i], want.sets[i]) {
			t.Fatalf("%s: media set %d differs (%d paths, want %d)", what, i, len(got.sets[i]), len(want.sets[i]))
		}
	}
}

// indexObjects lists the index's batch objects and snapshots.
func indexObjects(t *testing.T, r *repo.Repo) (batches, snapshots []string) {
	t.Helper()
	if err := r.List(context.Background(), indexPrefix, func(oi storage.ObjectInfo) error {
		if _, ok := parseIndexName(oi.Name); ok {
			batches = append(batches, oi.Name)
		} else if _, _, ok := parseSnapshotName(oi.Name); ok {
			snapshots = append(snapshots, oi.Name)
		} else {
			t.Errorf("unexpected object %s", oi.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return batches, snapshots
}

func compact(t *testing.T, r *repo.Repo) CompactReport {
	t.Helper()
	rep, err := Compact(context.Background(), r)
	if err != nil {
		t.Fatalf("Compact: %v", err)
	}
	return rep
}

func TestCompactKeepsHistory(t *testing.T) {
	t.Parallel()
	r := newTestRepo(t)
	h := newHistory(r, 21)
	h.batches(t, 120)
	before := viewOf(t, r, h.clock)
	if n := len(h.gone); n == 0 {
		t.Fatal("the history has no deletions")
	}

	rep := compact(t, r)
	batches, snaps := indexObjects(t, r)
	if len(batches) != 0 || len(snaps) != 1 || rep.Batches != 120 || rep.Removed != 120 || rep.Snapshot != snaps[0] {
		t.Fatalf("after compaction: %d batches, snapshots %v, report %+v", len(batches), snaps, rep)
	}
	sameView(t, "after compaction", viewOf(t, r, h.clock), before)

	// The engine loads the same state and goes on after the last batch.
	e := newEngine(r, "", Options{})
	if err := e.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.seq != 121 || e.loose != 0 {
		t.Errorf("engine after load: next batch %d, %d loose; want 121, 0", e.seq, e.loose)
	}
	cur := before.sets[len(before.sets)-1]
	live := 0
	for p, st := range e.state {
		if !st.deleted {
			live++
			if _, ok := cur[p]; !ok {
				t.Errorf("engine state has %s, the newest set does not", p)
			}
		}
	}
	if live != len(cur) {
		t.Errorf("engine state: %d live paths, want %d", live, len(cur))
	}

	// More batches, a second compaction: one snapshot again.
	h.batches(t, 50)
	before = viewOf(t, r, h.clock)
	rep = compact(t, r)
	batches, snaps = indexObjects(t, r)
	if len(batches) != 0 || len(snaps) != 1 || !strings.Contains(snaps[0], "snapshot-00000002-000000000170") || rep.Removed != 51 {
		t.Fatalf("second compaction: %d batches, snapshots %v, report %+v", len(batches), snaps, rep)
	}
	sameView(t, "after the second compaction", viewOf(t, r, h.clock), before)
	// Nothing to do: nothing written, nothing removed.
	if rep := compact(t, r); rep.Snapshot != "" || rep.Removed != 0 {
		t.Errorf("compaction of a compacted index: %+v", rep)
	}
}

// TestCompactInterrupted stops a compaction at each of its steps (as a
// crash would) and checks that the index reads the same, then that the
// next compaction completes it.
func TestCompactInterrupted(t *testing.T) {
	build := func(t *testing.T) (*repo.Repo, *historyWriter) {
		r := newTestRepo(t)
		h := newHistory(r, 22)
		h.batches(t, 20)
		compact(t, r) // so that an older snapshot is replaced too
		h.batches(t, 10)
		return r, h
	}
	// Count the steps of an uninterrupted compaction.
	var steps []string
	{
		r, _ := build(t)
		if _, err := compactIndex(context.Background(), r, func(step string) error { steps = append(steps, step); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if len(steps) != 3+11 { // planned, written, stored, 10 batches + the old snapshot removed
		t.Fatalf("steps: %v", steps)
	}
	crash := errors.New("crash")
	for k := range steps {
		t.Run(strings.ReplaceAll(steps[k], "/", "_"), func(t *testing.T) {
			r, h := build(t)
			want := viewOf(t, r, h.clock)
			n := 0
			_, err := compactIndex(context.Background(), r, func(string) error {
				n++
				if n == k+1 {
					return crash
				}
				return nil
			})
			if !errors.Is(err, crash) {
				t.Fatalf("Compact: %v, want the injected crash", err)
			}
			_, snaps := indexObjects(t, r)
			if wantSnaps := map[bool]int{true: 1, false: 2}[k < 2]; len(snaps) != wantSnaps && k < 13 {
				t.Errorf("snapshots after a crash at step %d: %v", k, snaps)
			}
			sameView(t, "after the interrupted compaction", viewOf(t, r, h.clock), want)
			compact(t, r)
			batches, snaps := indexObjects(t, r)
			if len(batches) != 0 || len(snaps) != 1 {
				t.Errorf("after the next compaction: batches %v, snapshots %v", batches, snaps)
			}
			sameView(t, "after the next compaction", viewOf(t, r, h.clock), want)
			// And writers go on after the highest batch.
			e := newEngine(r, "", Options{})
			if err := e.load(context.Background()); err != nil || e.seq != 31 {
				t.Errorf("engine: next batch %d (%v), want 31", e.seq, err)
			}
		})
	}
}

// TestCompactLateAndConcurrentWriters covers what other writers can leave:
// a batch stored by a writer that loaded the index before a compaction,
// under a sequence number the compaction removed; a leftover copy of a
// compacted batch; and the snapshot of a concurrent compaction.
func TestCompactLateAndConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHistory(r, 23)
	h.batches(t, 5)
	p := h.live[0]
	rd, err := r.Get(ctx, indexName(3))
	if err != nil {
		t.Fatal(err)
	}
	var batch3 bytes.Buffer
	if _, err := batch3.ReadFrom(rd); err != nil {
		t.Fatal(err)
	}
	rd.Close()
	stored := len(readEvents(t, r))
	compact(t, r)

	// A late writer's batch under sequence number 2: read after batch 2
	// (and before batch 3) of the snapshot, not lost.
	late := h.event(p, Deleted)
	if _, err := storeBatch(ctx, r, 2, []Event{late}); err != nil {
		t.Fatal(err)
	}
	// A leftover of batch 3 (identical): held by the snapshot, skipped.
	if _, err := r.Put(ctx, indexName(3), bytes.NewReader(batch3.Bytes()), nil); err != nil {
		t.Fatal(err)
	}
	v := viewOf(t, r, h.clock)
	if got := len(v.events); got != stored+1 {
		t.Fatalf("%d events, want %d (one late, batch 3's once)", got, stored+1)
	}
	if got := v.events[evIndex(t, v.events, late)-1]; got.Path == "" {
		t.Fatal("no event before the late one")
	}
	if ev := v.sets[len(v.sets)-1][p]; ev.Path != "" {
		t.Errorf("%s is present after the late writer's deletion", p)
	}
	compact(t, r)
	batches, snaps := indexObjects(t, r)
	if len(batches) != 0 || len(snaps) != 1 {
		t.Fatalf("after compaction: batches %v, snapshots %v", batches, snaps)
	}
	sameView(t, "late writer compacted", viewOf(t, r, h.clock), v)

	// A concurrent compaction's snapshot holding a batch (6, deleting p2)
	// that the newest snapshot does not hold, and the batch object
	// removed: its unit is read in sequence order.
	p2 := h.live[1]
	h.seq = 6
	del := h.event(p2, Deleted)
	if _, err := storeBatch(ctx, r, 6, []Event{del}); err != nil {
		t.Fatal(err)
	}
	st, err := r.Stat(ctx, indexName(6))
	if err != nil {
		t.Fatal(err)
	}
	line, _ := json.Marshal(del)
	hdr, _ := json.Marshal(unitHeader{Batch: 6, SHA256: st.SHA256, Events: 1})
	foreign := snapshotName(1, 6)
	if _, err := r.Put(ctx, foreign, bytes.NewReader(append(append(append(hdr, '\n'), line...), '\n')), nil); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, indexName(6)); err != nil {
		t.Fatal(err)
	}
	// A re-upload of p2 (batch 7) after the deletion: p2 must be present.
	h.seq = 7
	readd := h.event(p2, Added)
	if _, err := storeBatch(ctx, r, 7, []Event{readd}); err != nil {
		t.Fatal(err)
	}
	v = viewOf(t, r, h.clock)
	evs := v.events
	if len(evs) < 2 || !sameEvent(evs[len(evs)-2], del) || !sameEvent(evs[len(evs)-1], readd) {
		t.Fatalf("the foreign snapshot's unit is not read in sequence order: last events %+v", evs[max(len(evs)-2, 0):])
	}
	if _, ok := v.sets[len(v.sets)-1][p2]; !ok {
		t.Errorf("%s missing after its re-upload", p2)
	}
	rep := compact(t, r)
	batches, snaps = indexObjects(t, r)
	if len(batches) != 0 || len(snaps) != 1 || rep.Removed != 3 {
		t.Fatalf("after compacting the foreign snapshot: batches %v, snapshots %v, %+v", batches, snaps, rep)
	}
	sameView(t, "foreign snapshot compacted", viewOf(t, r, h.clock), v)
}

func sameEvent(a, b Event) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// evIndex is the position of ev in evs, after the snapshot's batch 2.
func evIndex(t *testing.T, evs []Event, ev Event) int {
	t.Helper()
	for i := range evs {
		if sameEvent(evs[i], ev) {
			return i
		}
	}
	t.Fatalf("event %+v not read", ev)
	return 0
}

// TestCompactNeverOverwrites: a snapshot name taken meanwhile (by a
// concurrent compaction) is a conflict; nothing is removed, and the index
// reads the same. Compaction is not parallel-safe with the hook: no
// t.Parallel.
func TestCompactNeverOverwrites(t *testing.T) {
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHistory(r, 24)
	h.batches(t, 8)
	want := viewOf(t, r, h.clock)
	rd, err := r.Get(ctx, indexName(1))
	if err != nil {
		t.Fatal(err)
	}
	var b1 bytes.Buffer
	if _, err := b1.ReadFrom(rd); err != nil {
		t.Fatal(err)
	}
	rd.Close()
	// Another compactor's snapshots, holding batch 1 only.
	hdr, _ := json.Marshal(unitHeader{Batch: 1, SHA256: sha(b1.Bytes()), Events: strings.Count(b1.String(), "\n")})
	other := append(append(hdr, '\n'), b1.Bytes()...)
	if _, err := r.Put(ctx, snapshotName(1, 8), bytes.NewReader(other), nil); err != nil {
		t.Fatal(err)
	}
	sameView(t, "with another snapshot holding batch 1", viewOf(t, r, h.clock), want)
	var batches, snaps []string
	_, err = compactIndex(ctx, r, func(step string) error {
		if step == "snapshot written" {
			// Compact picked generation 2; take it before it publishes.
			if _, err := r.Put(ctx, snapshotName(2, 8), bytes.NewReader(other),
				map[string]string{"subsumes": snapshotName(1, 8) + "=" + sha(other)}); err != nil {
				t.Error(err)
			}
			batches, snaps = indexObjects(t, r)
		}
		return nil
	})
	if !repo.IsConflict(err) {
		t.Fatalf("Compact onto a taken name: %v, want a conflict", err)
	}
	b2, s2 := indexObjects(t, r)
	if !reflect.DeepEqual(b2, batches) || !reflect.DeepEqual(s2, snaps) || len(s2) != 2 {
		t.Errorf("a failed compaction removed objects: %v %v, before %v %v", b2, s2, batches, snaps)
	}
	sameView(t, "after the refused compaction", viewOf(t, r, h.clock), want)
	// The next compaction starts from the other's snapshot and completes.
	compact(t, r)
	b3, s3 := indexObjects(t, r)
	if len(b3) != 0 || len(s3) != 1 {
		t.Errorf("after the next compaction: %v %v", b3, s3)
	}
	sameView(t, "after the next compaction", viewOf(t, r, h.clock), want)
}

// TestLoadDuringCompaction: loads that race with a compaction removing
// the objects they listed start again and see the same index.
func TestLoadDuringCompaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHistory(r, 25)
	h.batches(t, 60)
	want, _, err := Set(ctx, r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Compact(ctx, r)
		done <- err
	}()
	loads := 0
	for finished := false; !finished || loads < 3; loads++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Compact: %v", err)
			}
			finished = true
		default:
		}
		got, _, err := Set(ctx, r, time.Time{})
		if err != nil {
			t.Fatalf("Set during compaction (load %d): %v", loads, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Set during compaction (load %d): %d paths, want %d", loads, len(got), len(want))
		}
	}
	t.Logf("%d loads during and after the compaction", loads)
}

// TestSyncCompacts: Sync compacts once CompactAfter batches are outside a
// snapshot, and the next pass loads its state from the snapshot.
func TestSyncCompacts(t *testing.T) {
	t.Parallel()
	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(26, 27))
	want := map[string][]byte{}
	for range 6 {
		p, c := contentPath(mediaID(rng)), randomContent(rng, 500+rng.IntN(3000))
		writeLikeSynapse(t, store, p, c)
		want[p] = c
	}
	opts := testOptions(t)
	opts.BatchSize = 2
	opts.CompactAfter = 2
	syncOnce(t, r, store, opts)
	batches, snaps := indexObjects(t, r)
	if len(batches) != 0 || len(snaps) != 1 {
		t.Fatalf("after Sync: batches %v, snapshots %v", batches, snaps)
	}
	checkRepo(t, r, want)
	if st := syncOnce(t, r, store, opts); st.Added != 0 || st.Uploaded != 0 || st.Scanned != 6 {
		t.Errorf("second Sync: %+v, want 6 scanned and nothing copied", st)
	}
	sameSet(t, "restored", restoredSet(t, r, time.Time{}), want)
}
