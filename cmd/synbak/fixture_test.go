package main

import (
	"context"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/wal"
)

// newLocalRepo creates a zstd repository in dir.
func newLocalRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	return repotest.New(t, dir, repotest.Zstd)
}

// streamInto runs a WAL receiver from c into r until the returned stop
// (which reports the receiver's error); it returns once it streams.
func streamInto(t *testing.T, c *pgtest.Cluster, r *repo.Repo) (stop func() error) {
	t.Helper()
	rcv := wal.NewReceiver(pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}, r,
		wal.Options{Slot: "synbak", SpoolDir: t.TempDir(), StatusInterval: 200 * time.Millisecond, PartialInterval: 300 * time.Millisecond}, pgtest.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()
	waitFor(t, time.Minute, "streaming", func() bool { return rcv.Status().Streaming })
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			cancel()
			err, stopped = <-done, true
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}
