package storage

import (
	"testing"
	"time"

	"github.com/synbak/synbak/internal/wait"
)

// TestChunkCacheBoundsAndIdle: released chunks are kept up to the bound
// and reused, and all given back once none was taken for the idle time.
func TestChunkCacheBoundsAndIdle(t *testing.T) {
	f := &freeChunks{idle: 100 * time.Millisecond}
	var held []*chunk
	for range maxFreeChunks + 10 {
		c := f.get()
		c.b[0], c.b[bufChunk-1] = 1, 2 // writable over its whole length
		held = append(held, c)
	}
	for _, c := range held {
		f.put(c)
	}
	f.mu.Lock()
	n := len(f.free)
	f.mu.Unlock()
	if n != maxFreeChunks {
		t.Fatalf("%d chunks kept, want the bound %d", n, maxFreeChunks)
	}
	if c := f.get(); c.b == nil || len(c.b) != bufChunk {
		t.Fatal("a kept chunk came back without its bytes")
	} else {
		f.put(c)
	}
	wait.For(t, 10*time.Second, "the idle cache to empty", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.free) == 0 && f.timer == nil
	})
	for _, c := range held[:maxFreeChunks] {
		if c.b != nil {
			t.Fatal("a trimmed chunk still holds its bytes")
		}
	}
}
