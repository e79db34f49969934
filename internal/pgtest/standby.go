package pgtest

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby makes a streaming standby of primary, with the primary's
// server binaries: pg_basebackup -R into a new directory, started on its
// own port. When no pg_basebackup of the primary's major or newer is
// installed (the npm packages of 16+ hold none, and Debian's 15 refuses
// newer servers), it copies the data directory between pg_backup_start and
// pg_backup_stop instead (PostgreSQL's low-level base backup). It returns
// once the standby's WAL receiver is streaming. A t.Cleanup stops and
// removes it (before the primary, which was started earlier).
func StartStandby(t testing.TB, primary *Cluster, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, Options{BinDir: primary.BinDir})
	c.DataDir = filepath.Join(c.root, "data")
	if primary.hasClientTool(t, "pg_basebackup") {
		out, err := c.run(context.Background(), "pg_basebackup", "-D", c.DataDir,
			"-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port), "-U", "postgres",
			"-R", "-X", "stream", "-c", "fast", "--no-sync")
		if err != nil {
			t.Fatalf("pgtest: standby base backup: %v\n%s", err, out)
		}
	} else if err := primary.copyBackup(c); err != nil {
		t.Fatalf("pgtest: standby base backup (pg_backup_start and a copy): %v", err)
	}
	c.configure(t, opts)
	if err := c.start(true); err != nil {
		t.Fatalf("pgtest: start standby: %v\n%s", err, c.logSection())
	}
	err := c.poll(startTimeout, func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var n int
		err := conn.QueryRow(ctx, "select count(*) from pg_stat_wal_receiver where status = 'streaming'").Scan(&n)
		return n == 1, err
	})
	if err != nil {
		t.Fatalf("pgtest: standby on port %d not streaming: %v\n%s", c.Port, err, c.logSection())
	}
	return c
}

// Promote promotes a standby (pg_ctl promote -w) and waits until
// pg_is_in_recovery() is false.
func (c *Cluster) Promote(t testing.TB) {
	t.Helper()
	out, err := c.run(context.Background(), "pg_ctl", "-D", c.DataDir, "-w",
		"-t", strconv.Itoa(int(startTimeout/time.Second)), "promote")
	if err != nil {
		t.Fatalf("pgtest: promote: %v\n%s\n%s", err, out, c.logSection())
	}
	c.WaitPromoted(t)
}

// WaitPromoted waits until the server has left recovery (pg_is_in_recovery()
// is false), e.g. after a point-in-time restore with
// recovery_target_action = 'promote'. It fails the test at once if the
// postmaster dies meanwhile.
func (c *Cluster) WaitPromoted(t testing.TB) {
	t.Helper()
	err := c.poll(startTimeout, func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var rec bool
		err := conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&rec)
		return !rec, err
	})
	if err != nil {
		t.Fatalf("pgtest: cluster on port %d did not leave recovery: %v\n%s", c.Port, err, c.logSection())
	}
}

// poll calls cond on a connection to the postgres database until it
// returns true, the timeout passes, or the postmaster dies. Connection
// errors are retried.
func (c *Cluster) poll(timeout time.Duration, cond func(context.Context, *pgx.Conn) (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if !c.Running() {
			return fmt.Errorf("postmaster is not running (last error: %v)", last)
		}
		done := false
		err := c.withConn("postgres", func(ctx context.Context, conn *pgx.Conn) error {
			var err error
			done, err = cond(ctx, conn)
			return err
		})
		if err == nil && done {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last == nil {
				return fmt.Errorf("condition not met after %v", timeout)
			}
			return fmt.Errorf("condition not met after %v: %w", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
