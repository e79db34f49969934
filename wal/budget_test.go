package wal_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/shutdown"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/wal"
)

// stallingBackend is a real local backend whose Puts of WAL objects hang,
// while stalled, until their context ends: a repository that stopped
// answering.
type stallingBackend struct {
	storage.Backend
	mu      sync.Mutex
	stalled chan struct{} // closed when the stall ends; nil: not stalled
}

func (b *stallingBackend) stall() {
	b.mu.Lock()
	b.stalled = make(chan struct{})
	b.mu.Unlock()
}

func (b *stallingBackend) release() {
	b.mu.Lock()
	if b.stalled != nil {
		close(b.stalled)
		b.stalled = nil
	}
	b.mu.Unlock()
}

func (b *stallingBackend) Put(ctx context.Context, name string, r io.Reader) error {
	b.mu.Lock()
	c := b.stalled
	b.mu.Unlock()
	if c != nil && strings.HasPrefix(name, "wal/") && !strings.HasSuffix(name, "settings.json") {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c:
		}
	}
	return b.Backend.Put(ctx, name, r)
}

// TestShutdownBudgetWithAStalledRepository: with the repository stalled and
// finished segments waiting in the spool, a cancelled Run returns nil once
// the shutdown budget its context carries is spent (not after the 2-minute
// default drain), with every goroutine joined; the spool keeps the backlog,
// and the next Run stores it: nothing acknowledged is lost.
func TestShutdownBudgetWithAStalledRepository(t *testing.T) {
	c := startCluster(t)
	c.Exec(t, "postgres", "CREATE TABLE t (n int)")
	lb, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := &stallingBackend{Backend: lb}
	defer b.release()
	rp, _, err := repo.Init(context.Background(), b, repo.Options{Compression: "zstd", ZstdLevel: 1})
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	opts := wal.Options{Slot: "synbak", SpoolDir: spool, StatusInterval: 200 * time.Millisecond, PartialInterval: 300 * time.Millisecond}
	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}

	ignore := goleak.IgnoreCurrent()
	rcv := wal.NewReceiver(src, rp, opts, pgtest.Logger(t))
	const budget = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	bctx, releaseBudget := shutdown.WithBudget(ctx, budget)
	done := make(chan error, 1)
	go func() { done <- rcv.Run(bctx) }()
	waitFor(t, 30*time.Second, "streaming", func() bool { return rcv.Status().Streaming })

	b.stall()
	for range 3 {
		c.Exec(t, "postgres", "INSERT INTO t SELECT generate_series(1, 20000)")
		switchWAL(t, c)
	}
	c.Exec(t, "postgres", "INSERT INTO t VALUES (1)")
	waitFor(t, 30*time.Second, "a backlog acknowledged and spooled", func() bool {
		st := rcv.Status()
		return st.Spooled >= 3 && st.UnstoredBytes() > 3*segSize
	})
	acked := rcv.Status().Flushed

	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30 s of the cancellation")
	}
	took := time.Since(start)
	releaseBudget()
	if took < budget-100*time.Millisecond || took > budget+3*time.Second {
		t.Errorf("Run returned %s after the cancellation; the budget was %s", took, budget)
	}
	if st := rcv.Status(); st.Stored >= acked {
		t.Fatalf("the stalled repository stored everything (%s >= %s): nothing was tested", st.Stored, acked)
	}
	goleak.VerifyNone(t, ignore)

	// The repository answers again: the next Run stores the backlog.
	b.release()
	run := startReceiver(t, c, rp, spool, wal.Options{PartialInterval: 300 * time.Millisecond})
	waitFor(t, time.Minute, "the backlog stored by the next run", func() bool { return run.rcv.Status().Stored >= acked })
	run.stop(t)
}
