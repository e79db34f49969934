package repo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
)

// TestEncoderCache stores objects concurrently through one EncoderCache:
// every object reads back intact, storing the same plaintext again without
// the cache (other window and block sizes) is not a conflict, and the cache
// keeps no more than its bound.
func TestEncoderCache(t *testing.T) {
	for _, comp := range []string{"zstd", "s2", "none"} {
		t.Run(comp, func(t *testing.T) {
			ctx := context.Background()
			r, b := initRepo(t, Options{Compression: comp, ZstdLevel: 2})
			cache := NewEncoderCache(2)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					data := mixedPayload(1<<20 + i*4099)
					if _, err := r.Put(ctx, fmt.Sprintf("c/%d", i), bytes.NewReader(data), nil, WithEncoderCache(cache)); err != nil {
						errs <- err
						return
					}
					if _, err := r.Put(ctx, fmt.Sprintf("c/%d", i), bytes.NewReader(data), nil); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			for i := range 8 {
				data := mixedPayload(1<<20 + i*4099)
				rd, err := r.Get(ctx, fmt.Sprintf("c/%d", i))
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rd)
				rd.Close()
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("object %d read back %d bytes (%v), want %d", i, len(got), err, len(data))
				}
				if comp != "none" {
					if raw := readRaw(t, b, fmt.Sprintf("c/%d", i)); len(raw) >= len(data) {
						t.Errorf("object %d: stored %d bytes of %d, expected compression", i, len(raw), len(data))
					}
				}
			}
			cache.mu.Lock()
			defer cache.mu.Unlock()
			for _, l := range cache.zstd {
				if len(l) > 2 {
					t.Errorf("cache holds %d zstd encoders, bound 2", len(l))
				}
			}
			if len(cache.s2) > 2 || len(cache.bufs) > 2 {
				t.Errorf("cache holds %d s2 writers and %d buffers, bound 2", len(cache.s2), len(cache.bufs))
			}
		})
	}
}

func readRaw(t *testing.T, b interface {
	Get(context.Context, string, int64, int64) (io.ReadCloser, error)
}, name string) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
