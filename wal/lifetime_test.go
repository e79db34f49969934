package wal_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/wal"
)

// TestRunJoinsItsGoroutines: the receiver streams, loses its server (the
// open segment reaches the repository while disconnected), and stops; when
// Run returns, every goroutine it started (uploader and its workers,
// finisher, deadlines) has ended.
func TestRunJoinsItsGoroutines(t *testing.T) {
	c := startCluster(t)
	c.Exec(t, "postgres", "CREATE TABLE t (n int)")
	rp := newRepo(t, t.TempDir())
	ignore := goleak.IgnoreCurrent()
	run := startReceiver(t, c, rp, t.TempDir(), wal.Options{PartialInterval: time.Hour})
	waitFor(t, 30*time.Second, "streaming", func() bool { return run.rcv.Status().Streaming })
	c.Exec(t, "postgres", "INSERT INTO t SELECT generate_series(1, 20000)")
	switchWAL(t, c)
	c.Exec(t, "postgres", "INSERT INTO t VALUES (1)")
	flushed := run.rcv.Status().Flushed
	waitFor(t, 30*time.Second, "the commit flushed", func() bool {
		st := run.rcv.Status()
		return st.Flushed > flushed && st.Archived > 0
	})
	// The partial interval is an hour: only the disconnection stores the
	// open segment.
	c.Kill(t)
	waitFor(t, 30*time.Second, "the open segment stored while disconnected", func() bool {
		st := run.rcv.Status()
		return !st.Streaming && st.Stored >= st.Flushed && st.UnstoredSince.IsZero() && st.Spooled == 0
	})
	run.stop(t)
	goleak.VerifyNone(t, ignore)
}

// TestSpoolLockIsNeverPermanent: a second receiver on the same spool waits
// for the lock (it does not fail) and takes over when the first stops; with
// YieldSpool it steps aside at once with an error IsSpoolLocked answers.
func TestSpoolLockIsNeverPermanent(t *testing.T) {
	c := startCluster(t)
	rp := newRepo(t, t.TempDir())
	spool := t.TempDir()
	first := startReceiver(t, c, rp, spool, wal.Options{})
	waitFor(t, 30*time.Second, "the first receiver streaming", func() bool { return first.rcv.Status().Streaming })

	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}
	yield := wal.NewReceiver(src, rp, wal.Options{Slot: "synbak", SpoolDir: spool, YieldSpool: true}, pgtest.Logger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := yield.Run(ctx); !wal.IsSpoolLocked(err) || wal.IsPermanent(err) {
		t.Fatalf("YieldSpool receiver: %v, want an error IsSpoolLocked and not IsPermanent", err)
	}

	second := startReceiver(t, c, rp, spool, wal.Options{})
	time.Sleep(2 * time.Second) // it must keep waiting, not fail
	select {
	case <-second.done:
		t.Fatalf("the second receiver returned while the first held the spool: %v", second.err)
	default:
	}
	if second.rcv.Status().Streaming {
		t.Fatal("two receivers stream into one spool")
	}
	// WAL archived by the first: the second says so as soon as it
	// streams (not 0/0 until its own first segment completes).
	c.Exec(t, "postgres", "CREATE TABLE IF NOT EXISTS fill AS SELECT g FROM generate_series(1, 50000) g")
	switched := c.Text(t, "postgres", "SELECT pg_switch_wal()::text")
	waitFor(t, 30*time.Second, "a segment archived by the first receiver", func() bool { return first.rcv.Status().Archived > 0 })
	archived := first.rcv.Status().Archived
	first.stop(t)
	waitFor(t, 30*time.Second, "the second receiver streaming", func() bool { return second.rcv.Status().Streaming })
	if got := second.rcv.Status().Archived; got < archived {
		t.Errorf("the second receiver reports WAL archived to %s; the repository holds it to %s (switched at %s)", got, archived, switched)
	}
	second.stop(t)
}
