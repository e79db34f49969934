package mediawatch

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
)

// crashModel is a local backend that keeps track of what a crash would
// leave: an object of a plain Put is durable when the Put returns; one put
// through a sync group (or named by the group's Include) only once a Sync
// of that group, started after the Put returned, has succeeded. For every
// index batch it records which objects were durable when its Put started:
// those are the only ones a crash right after the batch is durable is sure
// to leave.
type crashModel struct {
	*local.Backend
	mu      sync.Mutex
	durable map[string]bool
	batches map[string]map[string]bool // index batch → durable objects when it was stored
}

func (m *crashModel) Put(ctx context.Context, name string, r io.Reader) error {
	var snap map[string]bool
	if _, ok := parseIndexName(name); ok {
		m.mu.Lock()
		snap = maps.Clone(m.durable)
		m.mu.Unlock()
	}
	if err := m.Backend.Put(ctx, name, r); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.durable[name] = true
	if snap != nil {
		m.batches[name] = snap
	}
	return nil
}

func (m *crashModel) NewSyncGroup() storage.SyncGroup {
	return &modelGroup{m: m, g: m.Backend.NewSyncGroup(), pending: map[string]bool{}}
}

type modelGroup struct {
	m       *crashModel
	g       storage.SyncGroup
	mu      sync.Mutex
	pending map[string]bool
}

func (g *modelGroup) Put(ctx context.Context, name string, r io.Reader) error {
	if err := g.g.Put(ctx, name, r); err != nil {
		return err
	}
	g.mu.Lock()
	g.pending[name] = true
	g.mu.Unlock()
	return nil
}

func (g *modelGroup) Include(name string) {
	g.g.Include(name)
	g.mu.Lock()
	g.pending[name] = true
	g.mu.Unlock()
}

func (g *modelGroup) Sync(ctx context.Context) error {
	g.mu.Lock()
	p := g.pending
	g.pending = map[string]bool{}
	g.mu.Unlock()
	if err := g.g.Sync(ctx); err != nil {
		g.mu.Lock()
		maps.Copy(g.pending, p)
		g.mu.Unlock()
		return err
	}
	g.m.mu.Lock()
	maps.Copy(g.m.durable, p)
	g.m.mu.Unlock()
	return nil
}

// TestIndexNamesOnlyDurableObjects: with the directory fsyncs of objects
// deferred to one Sync per index batch, a crash at any moment leaves no
// index batch naming an object that is not durable. That includes an
// object that another writer has published but not yet made durable when
// this one finds it (deduplicated by Stat), and objects whose Put by
// another worker is still in flight.
func TestIndexNamesOnlyDurableObjects(t *testing.T) {
	ctx := context.Background()
	lb, err := local.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	m := &crashModel{Backend: lb, durable: map[string]bool{}, batches: map[string]map[string]bool{}}
	r, _, err := repo.Init(ctx, m, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 8))
	old := time.Now().Add(-time.Hour)
	write := func(content []byte) {
		rel := contentPath(mediaID(rng))
		p := filepath.Join(store, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 150 {
		write(randomContent(rng, 100+rng.IntN(20000)))
		if i%50 == 0 {
			write(randomContent(rng, bigFile+1+rng.IntN(100000))) // streamed
		}
	}
	// Identical files: several workers store or find the same object.
	dup := randomContent(rng, 5000)
	for range 20 {
		write(dup)
	}
	// Another writer published this object and has not made it durable
	// (its group is never synced): finding it must not be enough.
	foreign := []byte("published by another synbak, not durable yet")
	c := repo.NewContent(foreign)
	if _, err := r.PutContent(ctx, ObjectName(c.SHA256()), c, nil, repo.InSyncGroup(r.NewSyncGroup())); err != nil {
		t.Fatal(err)
	}
	write(foreign)

	opts := Options{Workers: 8, BatchSize: 4, Logger: pgtest.Logger(t), CompactAfter: -1}
	st, err := Sync(ctx, r, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.Added != 174 || st.Deduplicated < 1 {
		t.Fatalf("stats %+v, want 174 added and some deduplicated", st)
	}

	m.mu.Lock()
	batches := maps.Clone(m.batches)
	m.mu.Unlock()
	if len(batches) < 10 {
		t.Fatalf("%d index batches, want many (BatchSize 4)", len(batches))
	}
	named := 0
	for name, durable := range batches {
		rd, err := r.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rd)
		rd.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var ev Event
			if err := json.Unmarshal(line, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Event != Added {
				continue
			}
			named++
			if !durable[ObjectName(ev.SHA256)] {
				t.Errorf("index batch %s names %s (%s), which was not durable when the batch was stored", name, ObjectName(ev.SHA256), ev.Path)
			}
		}
	}
	if named != 174 {
		t.Fatalf("batches name %d objects, want 174", named)
	}
}

// statHook is a backend that runs a function before each Stat.
type statHook struct {
	storage.Backend
	before func(name string)
}

func (s *statHook) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	s.before(name)
	return s.Backend.Stat(ctx, name)
}

// TestCopyOfChangingFile: a file that changes between being hashed (which
// names its object) and being stored is not stored under that name, nor at
// all; one that grew or shrank is looked at again.
func TestCopyOfChangingFile(t *testing.T) {
	ctx := context.Background()
	lb, err := local.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	hook := &statHook{Backend: lb, before: func(string) {}}
	r, _, err := repo.Init(ctx, hook, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	rng := rand.New(rand.NewPCG(9, 10))
	e := newEngine(r, store, Options{Logger: pgtest.Logger(t)})
	for _, size := range []int{1000, smallFile + 10, bigFile + 10} {
		rel := contentPath(mediaID(rng))
		p := filepath.Join(store, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		orig := randomContent(rng, size)
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		j := job{path: rel, size: fi.Size(), mtime: fi.ModTime()}

		// Grown since it was checked: look again.
		if _, ok, err := e.copyFile(ctx, job{path: rel, size: fi.Size() - 1, mtime: fi.ModTime()}); ok || err != nil {
			t.Fatalf("size %d: copy of a file that grew: ok %v, %v", size, ok, err)
		}
		// Rewritten (same size) after it was hashed, before it is stored:
		// the check on the object's name runs in between.
		changed := bytes.Clone(orig)
		changed[len(changed)-1] ^= 1
		hook.before = func(name string) {
			if err := os.WriteFile(p, changed, 0o644); err != nil {
				t.Error(err)
			}
		}
		ev, ok, err := e.copyFile(ctx, j)
		hook.before = func(string) {}
		if size <= bigFile {
			// Copied from memory: what was hashed is what is stored.
			if !ok || err != nil {
				t.Fatalf("size %d: in-memory copy: ok %v, %v", size, ok, err)
			}
			wantObject(t, r, ev.SHA256, orig)
			continue
		}
		if ok || err != nil {
			t.Fatalf("size %d: streamed copy of a file that changed: ok %v, %v (event %+v)", size, ok, err, ev)
		}
		n := 0
		if err := lb.List(ctx, objectPrefix, func(storage.ObjectInfo) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("%d objects stored, want only the two in-memory copies", n)
		}
		// Unchanged since: stored.
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, j.mtime, j.mtime); err != nil {
			t.Fatal(err)
		}
		ev, ok, err = e.copyFile(ctx, j)
		if !ok || err != nil {
			t.Fatalf("size %d: streamed copy: ok %v, %v", size, ok, err)
		}
		wantObject(t, r, ev.SHA256, orig)
	}
}

func wantObject(t *testing.T, r *repo.Repo, sha string, want []byte) {
	t.Helper()
	rd, err := r.Get(context.Background(), ObjectName(sha))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got, err := io.ReadAll(rd)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("object %s: %d bytes, %v; want the original %d bytes", sha, len(got), err, len(want))
	}
}
