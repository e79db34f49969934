package retention_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/retention"
	"github.com/synbak/synbak/retention/retentiontest"
	"github.com/synbak/synbak/wal"
)

var errCrash = errors.New("simulated crash")

// crashing is a backend whose Deletes fail from the (limit+1)-th on, as if
// the process had died after limit deletions; limit < 0 never fails.
type crashing struct {
	storage.Backend
	mu      sync.Mutex
	deletes int
	limit   int
}

func (c *crashing) Delete(ctx context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limit >= 0 && c.deletes >= c.limit {
		return errCrash
	}
	c.deletes++
	return c.Backend.Delete(ctx, name)
}

func openCrashing(t *testing.T, w *retentiontest.World, limit int) (*repo.Repo, *crashing) {
	t.Helper()
	b, err := local.New(w.Dir)
	if err != nil {
		t.Fatal(err)
	}
	c := &crashing{Backend: b, limit: limit}
	r, err := repo.Open(context.Background(), c, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

func prune(t *testing.T, r *repo.Repo, opts retention.Options) (retention.Result, error) {
	t.Helper()
	p, err := retention.NewPlan(context.Background(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return retention.Apply(context.Background(), r, p, nil)
}

// TestPruneKilledAtEveryPoint interrupts a prune after each possible
// number of deletions: the repository must still restore every time inside
// the window, every dump it offers must be whole (and the kept ones
// offered), and a second prune must reach the state an uninterrupted one
// leaves.
func TestPruneKilledAtEveryPoint(t *testing.T) {
	// Window 36h keeps B2 (TLI 1, before the switch), B3 and B4; 2 backups.
	// 2 dumps: Dump2 and Dump3 stay; Dump0, Dump1 and the abandoned go.
	template := retentiontest.New(t, t0())
	template.AddDumps(t)
	ref := template.Clone(t)
	opts := retention.Options{Backups: 2, Window: 36 * time.Hour, Dumps: 2, Now: ref.Now}
	r, c := openCrashing(t, ref, -1)
	if _, err := prune(t, r, opts); err != nil {
		t.Fatal(err)
	}
	want := ref.Names(t)
	total := c.deletes
	if total < 15 {
		t.Fatalf("only %d deletions in a full prune", total)
	}
	windowFrom := ref.Backups[2].EndTime

	for k := 0; k < total; k++ {
		w := template.Clone(t)
		r, _ := openCrashing(t, w, k)
		_, err := prune(t, r, opts)
		if !errors.Is(err, errCrash) {
			t.Fatalf("k=%d: prune returned %v, want the crash", k, err)
		}
		// Every backup the policy keeps is still complete and listed.
		complete, err := basebackup.List(context.Background(), w.R)
		if err != nil {
			t.Fatalf("k=%d: %v", k, err)
		}
		n := 0
		for _, b := range complete {
			for _, keep := range w.Backups[2:] {
				if b.ID == keep.ID {
					n++
				}
			}
		}
		if n != 3 {
			t.Errorf("k=%d: %d of the 3 kept backups complete", k, n)
		}
		checkRestorable(t, w, windowFrom, w.End)
		// Every dump offered is whole; the kept ones are offered.
		dumps, err := dump.List(context.Background(), w.R)
		if err != nil {
			t.Fatalf("k=%d: %v", k, err)
		}
		offered := map[string]bool{}
		for _, d := range dumps {
			offered[d.ID] = true
			checkDumpRestorable(t, w, d)
		}
		for _, d := range w.Dumps[2:] {
			if !offered[d.ID] {
				t.Errorf("k=%d: kept dump %s not offered", k, d.ID)
			}
		}
		if t.Failed() {
			t.Fatalf("k=%d: not restorable after the crash", k)
		}
		// Prune again, to completion.
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

// uploaderRace is a backend on which the WAL uploader replaces the newest
// partial object (by a longer one) just before prune reads it, as it does
// every wal.partial_interval on a live repository.
type uploaderRace struct {
	storage.Backend
	old     string
	replace func()
	once    sync.Once
}

func (u *uploaderRace) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if name == u.old {
		u.once.Do(u.replace)
	}
	return u.Backend.Stat(ctx, name)
}

func TestPlanFollowsAReplacedPartial(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	seg := wal.SegmentAt(2, 14*segSize, segSize)
	later := w.End.Add(time.Minute)
	b, err := local.New(w.Dir)
	if err != nil {
		t.Fatal(err)
	}
	u := &uploaderRace{Backend: b, old: seg.PartialObjectName(0x1000), replace: func() {
		if _, err := w.R.Put(ctx, seg.PartialObjectName(0x2000), strings.NewReader("newer"),
			map[string]string{wal.AttrLastTime: later.Format(time.RFC3339Nano)}); err != nil {
			t.Error(err)
		}
		if err := w.R.Delete(ctx, seg.PartialObjectName(0x1000)); err != nil {
			t.Error(err)
		}
	}}
	r, err := repo.Open(ctx, u, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := retention.NewPlan(ctx, r, retention.Options{Backups: 2, Now: w.Now})
	if err != nil {
		t.Fatal(err)
	}
	if p.After == nil || !p.After.To.Equal(later) {
		t.Errorf("window after %+v, want it to end at the replacing partial's time %s", p.After, later)
	}
}

// watcherRace is a backend on which the media watcher records a new file
// with the content of an object right after prune deleted it (it found the
// object stored a moment before and did not store it again).
type watcherRace struct {
	storage.Backend
	object string
	record func()
	once   sync.Once
}

func (w *watcherRace) Delete(ctx context.Context, name string) error {
	err := w.Backend.Delete(ctx, name)
	if name == w.object {
		w.once.Do(w.record)
	}
	return err
}

func TestApplyReportsAMediaFileRecordedMeanwhile(t *testing.T) {
	ctx := context.Background()
	w := retentiontest.New(t, t0())
	b, err := local.New(w.Dir)
	if err != nil {
		t.Fatal(err)
	}
	sha := w.Media["replaced-old"]
	race := &watcherRace{Backend: b, object: mediawatch.ObjectName(sha), record: func() {
		ev := mediawatch.Event{Path: "local_content/ee/ff/copy", SHA256: sha, Size: int64(len("media content replaced-old")),
			MTime: w.Now, FirstSeen: w.Now, Event: mediawatch.Added, At: w.Now}
		line, _ := json.Marshal(ev)
		if _, err := w.R.Put(ctx, "media/index/000000000004.jsonl", strings.NewReader(string(line)+"\n"), nil); err != nil {
			t.Error(err)
		}
	}}
	r, err := repo.Open(ctx, race, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = prune(t, r, retention.Options{Backups: 2, Now: w.Now})
	if err == nil || !strings.Contains(err.Error(), "touch local_content/ee/ff/copy in the media store") {
		t.Errorf("prune: %v, want an error naming the file to touch", err)
	}
	if exists(t, w.R, confsnap.ObjectName(w.Config["C1"])) {
		t.Error("config objects not pruned after the media report")
	}
}
