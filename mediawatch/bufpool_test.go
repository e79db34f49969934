package mediawatch

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBufClass(t *testing.T) {
	for _, c := range []struct{ n, class, size int }{
		{1, 0, 16 << 10}, {16 << 10, 0, 16 << 10}, {16<<10 + 1, 1, 32 << 10},
		{1 << 20, 6, 1 << 20}, {1<<20 + 1, 7, 2 << 20}, {4 << 20, 8, 4 << 20},
	} {
		if class, size := bufClass(c.n); class != c.class || size != c.size {
			t.Errorf("bufClass(%d) = %d, %d; want %d, %d", c.n, class, size, c.class, c.size)
		}
	}
}

// TestBufPoolBounded: however many workers ask for buffers of whatever
// sizes, the buffers in use and kept free never exceed the budget, a
// buffer holds a file of its length plus the byte that tells it grew, and
// drop leaves nothing behind.
func TestBufPoolBounded(t *testing.T) {
	const budget = 8 << 20
	p := newBufPool(budget)
	var peak atomic.Int64
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 300 {
				n := 1 + rng.IntN(smallFile)
				var b []byte
				if rng.IntN(4) == 0 {
					n = smallFile + rng.IntN(bigFile-smallFile)
					if b = p.tryGet(n + 1); b == nil {
						continue
					}
				} else {
					var err error
					if b, err = p.get(context.Background(), n+1); err != nil {
						t.Error(err)
						return
					}
				}
				if len(b) != n+1 {
					t.Errorf("get(%d): len %d", n+1, len(b))
				}
				b[n] = 1 // the byte past the file's length is there
				a, _ := p.usage()
				for old := peak.Load(); a > old && !peak.CompareAndSwap(old, a); old = peak.Load() {
				}
				p.put(b)
			}
		})
	}
	wg.Wait()
	if peak.Load() > budget {
		t.Errorf("buffers of %d bytes at once, budget %d", peak.Load(), budget)
	}
	if peak.Load() < budget/2 {
		t.Errorf("at most %d bytes of buffers with 32 workers: the budget (%d) is not used", peak.Load(), budget)
	}
	a, free := p.usage()
	if a != free || a > budget {
		t.Errorf("all buffers back: allocated %d, free %d", a, free)
	}
	p.drop()
	if a, free := p.usage(); a != 0 || free != 0 {
		t.Errorf("after drop: allocated %d, free %d; want none", a, free)
	}

	// A full budget makes tryGet give up and get wait for a put.
	b1, _ := p.get(context.Background(), 4<<20+1)
	b2, _ := p.get(context.Background(), 4<<20+1)
	if b := p.tryGet(16 << 10); b != nil {
		t.Fatal("tryGet succeeded with the budget used up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if _, err := p.get(ctx, 100); err == nil {
		t.Fatal("get returned with the budget used up")
	}
	cancel()
	got := make(chan []byte)
	go func() {
		b, err := p.get(context.Background(), 100)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	p.put(b1)
	if b := <-got; len(b) != 100 {
		t.Errorf("get after a put: len %d", len(b))
	}
	p.put(b2)
}

// TestIdleWatcherReleasesMemory: once the initial copy is done, the
// watcher keeps no copy buffers and no compressors and returns the freed
// memory to the operating system; a trickle of new files afterwards does
// not make it release again and again.
func TestIdleWatcherReleasesMemory(t *testing.T) {
	store := t.TempDir()
	r := newTestRepo(t)
	rng := rand.New(rand.NewPCG(7, 7))
	want := map[string][]byte{}
	for i := range 60 {
		id := mediaID(rng)
		var b []byte
		switch i % 3 {
		case 0: // compressible: the compressors are used
			b = []byte(strings.Repeat("synapse media "+id, 1+rng.IntN(3000)))
		case 1:
			b = randomContent(rng, 1+rng.IntN(64<<10))
		default:
			b = randomContent(rng, smallFile/2+rng.IntN(bigFile))
		}
		want[contentPath(id)] = b
		writeLikeSynapse(t, store, contentPath(id), b)
	}
	old := time.Now().Add(-time.Hour)
	for rel := range want {
		if err := os.Chtimes(filepath.Join(store, rel), old, old); err != nil {
			t.Fatal(err)
		}
	}
	opts := testOptions(t)
	opts.CopyMemory = 6 << 20
	w := New(r, store, opts)
	var freed atomic.Int32
	w.e.freeOS = func() { freed.Add(1) }
	encBefore := w.e.encoders()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	released := func() int {
		w.e.mu.Lock()
		defer w.e.mu.Unlock()
		return w.e.releases
	}
	waitFor(t, 30*time.Second, "the initial copy and the release after it", func() bool {
		if a, _ := w.e.bufs.usage(); a > opts.CopyMemory {
			t.Fatalf("copy buffers of %d bytes, budget %d", a, opts.CopyMemory)
		}
		return w.Stats().Added == int64(len(want)) && released() == 1
	})
	checkRepo(t, r, want)
	if a, free := w.e.bufs.usage(); a != 0 || free != 0 {
		t.Errorf("idle after the copy: %d bytes of copy buffers (%d free); want none", a, free)
	}
	if w.e.encoders() == encBefore {
		t.Error("the compressors of the initial copy are still cached")
	}
	if freed.Load() != 1 {
		t.Errorf("memory returned to the OS %d times, want once", freed.Load())
	}

	// A few new files: copied, but not worth another release.
	for range 5 {
		id := mediaID(rng)
		b := randomContent(rng, 1000)
		want[contentPath(id)] = b
		writeLikeSynapse(t, store, contentPath(id), b)
	}
	waitFor(t, 30*time.Second, "the new files", hasAll(t, r, want))
	waitFor(t, 10*time.Second, "idle", w.e.idle)
	if n := released(); n != 1 {
		t.Errorf("released %d times after a trickle of new files, want still 1", n)
	}
}
