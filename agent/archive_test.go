package agent

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/wal"
)

type statusWAL struct {
	mu sync.Mutex
	st wal.Status
}

func (f *statusWAL) Status() wal.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *statusWAL) Run(ctx context.Context) error { return idle(ctx) }

func (f *statusWAL) set(g func(*wal.Status)) {
	f.mu.Lock()
	g(&f.st)
	f.mu.Unlock()
}

// Health watches WAL moving into the repository: acknowledged WAL that does
// not get there, and a spool that waits while nothing is archived, are
// problems naming the last upload error; both clear when uploads resume.
func TestHealthArchiveStalled(t *testing.T) {
	w := &statusWAL{st: wal.Status{Streaming: true, Timeline: 1, Flushed: 0x3000000, Stored: 0x3000000, Archived: 0x3000000}}
	a := New(Options{Parts: []Part{{Name: "wal", Runner: w}}, Health: HealthOptions{WALBacklog: time.Second}})
	now := time.Now()
	a.sampleOnce(now)
	if st := a.Status(); !st.Healthy {
		t.Fatalf("healthy start: %v", st.Problems)
	}
	const diskFull = "store wal/00000001/000000010000000000000004: no space left on device"
	w.set(func(s *wal.Status) {
		s.Flushed = 0x4800000
		s.UnstoredSince = time.Now().Add(-5 * time.Second)
		s.Spooled = 1
		s.UploadError = diskFull
	})
	a.mu.Lock()
	a.archivedAt = now.Add(-5 * time.Second)
	a.mu.Unlock()
	st := a.Status()
	if st.Healthy || len(st.Problems) != 2 {
		t.Fatalf("problems %q, want the unstored backlog and the stalled spool", st.Problems)
	}
	for _, p := range st.Problems {
		if !strings.Contains(p, diskFull) {
			t.Errorf("problem %q does not name the upload error", p)
		}
	}
	if st.WAL.UnstoredBytes != 0x1800000 || st.WAL.UnstoredSeconds < 4 || st.WAL.Spooled != 1 {
		t.Errorf("/status wal: %+v", st.WAL)
	}
	if code, body := scrape(t, a.Handler(), "/healthz"); code != 503 || !strings.Contains(body, "no space left on device") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	_, metrics := scrape(t, a.Handler(), "/metrics")
	for _, m := range []string{"synbak_wal_unstored_bytes 2.5165824e+07", "synbak_wal_spooled_files 1", "synbak_wal_upload_failing 1"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
	// Uploads resume.
	w.set(func(s *wal.Status) {
		s.Stored, s.Archived = s.Flushed, pglogrepl.LSN(0x4800000)
		s.UnstoredSince, s.Spooled, s.UploadError = time.Time{}, 0, ""
	})
	a.sampleOnce(time.Now())
	if st := a.Status(); !st.Healthy {
		t.Errorf("after the uploads resumed: %v", st.Problems)
	}
}
