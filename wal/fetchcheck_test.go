package wal_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/wal"
)

// TestFetcherChecksSegmentHeaders: the Fetcher hands PostgreSQL no segment
// whose first page contradicts its name or the archive, whether it comes
// from a complete object, the prefetch cache or a padded partial: the error
// is corruption (wal-fetch exit 255), DEST stays absent.
func TestFetcherChecksSegmentHeaders(t *testing.T) {
	ctx := context.Background()
	const segSize = 1 << 20
	const sysid = 7000000000000000001
	dir := t.TempDir()
	r := repotest.New(t, filepath.Join(dir, "repo"), repotest.Zstd)
	if _, err := r.Put(ctx, "wal/settings.json", strings.NewReader(`{"system_id":"7000000000000000001","segment_size":1048576}`), nil); err != nil {
		t.Fatal(err)
	}
	seg := func(no uint64) wal.Segment { return wal.Segment{TLI: 1, No: no, Size: segSize} }
	body := func(s wal.Segment, pageOf wal.Segment, id uint64, n int) []byte {
		b := bytes.Repeat([]byte{0x5a}, n)
		copy(b, wal.LongPageHeader(pageOf, 1, id))
		return b
	}
	put := func(name string, b []byte) {
		t.Helper()
		if _, err := r.Put(ctx, name, bytes.NewReader(b), nil); err != nil {
			t.Fatal(err)
		}
	}
	put(seg(2).ObjectName(), body(seg(2), seg(2), sysid, segSize))         // good
	put(seg(3).ObjectName(), body(seg(3), seg(4), sysid, segSize))         // segment 4's bytes under 3's name
	put(seg(4).ObjectName(), body(seg(4), seg(4), sysid+1, segSize))       // another cluster
	put(seg(5).PartialObjectName(4096), body(seg(5), seg(6), sysid, 4096)) // a partial of the wrong segment
	put(seg(7).PartialObjectName(4096), body(seg(7), seg(7), sysid, 4096)) // good partial

	for _, prefetch := range []int{0, 3} {
		f, err := wal.NewFetcher(ctx, r, filepath.Join(dir, "cache"), prefetch, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			s  wal.Segment
			ok bool
		}{{seg(2), true}, {seg(3), false}, {seg(4), false}, {seg(5), false}, {seg(7), true}} {
			dest := filepath.Join(dir, "RECOVERYXLOG")
			os.Remove(dest)
			err := f.Fetch(ctx, c.s.Name(), dest)
			if c.ok {
				if err != nil {
					t.Errorf("prefetch %d: %s: %v", prefetch, c.s.Name(), err)
				} else if st, err := os.Stat(dest); err != nil || st.Size() != segSize {
					t.Errorf("prefetch %d: %s: DEST %v", prefetch, c.s.Name(), err)
				}
				continue
			}
			if !repo.IsCorrupt(err) || !wal.IsSegmentMismatch(err) || wal.IsNotFound(err) {
				t.Errorf("prefetch %d: %s: error %v, want a segment mismatch (corruption)", prefetch, c.s.Name(), err)
			}
			if _, err := os.Stat(dest); err == nil {
				t.Errorf("prefetch %d: %s was written to DEST", prefetch, c.s.Name())
			}
		}
	}
}
