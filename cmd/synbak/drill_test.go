package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/wal"
)

// TestDrill runs `synbak drill` on a healthy repository of a Synapse-shaped
// cluster (exit 0, checks and RTO printed, nothing left behind), then on
// the same repository with a WAL segment missing in the middle (exit 1,
// the segment named).
func TestDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	c.FillSynapse(t, "synapse", 30)
	dir := pgtest.ServerDir(t)
	repoDir := filepath.Join(dir, "repo")
	r := newLocalRepo(t, repoDir)
	stop := streamInto(t, c, r)
	b, err := basebackup.Take(ctx, c.ReplicationConn(t), r, basebackup.Options{PartSize: 1 << 20, WALTimeout: 2 * time.Minute,
		Facts: map[string]string{"main_database": "synapse"}}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	var switched string
	for range 3 {
		c.FillSynapse(t, "synapse", 10)
		switched = c.Text(t, "postgres", "select pg_switch_wal()::text") // the end of the completed segment
	}
	end, err := pglogrepl.ParseLSN(switched)
	if err != nil {
		t.Fatal(err)
	}
	last := wal.SegmentAt(1, end-1, 1<<20)
	waitFor(t, time.Minute, "WAL archived", func() bool { _, err := r.Stat(ctx, last.ObjectName()); return err == nil })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	drillCLI := func(t *testing.T) (int, string) {
		t.Helper()
		scratch := filepath.Join(dir, "scratch")
		if err := os.MkdirAll(scratch, 0o711); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(pgtest.SynbakBinary(t), "-c", "/dev/null", "drill", "--scratch-dir", scratch, "--pg-bindir", c.BinDir)
		cmd.Env = append(os.Environ(), "SYNBAK_REPOSITORY_PATH="+repoDir, "SYNBAK_STATE_DIR="+t.TempDir())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if left, _ := os.ReadDir(scratch); len(left) != 0 {
			t.Errorf("the drill left %v in its scratch directory", left)
		}
		return code, out.String()
	}

	code, out := drillCLI(t)
	if code != 0 {
		t.Fatalf("drill on a healthy repository: exit %d\n%s", code, out)
	}
	t.Logf("synbak drill:\n%s", out)
	for _, want := range []string{"Drill: restored backup " + b.ID, "ok   database synapse opens", "ok   table events has rows", "ok   one-time keys emptied", "ok   pg_amcheck on synapse", "RTO (restore and checks): ", "OK: "} {
		if !strings.Contains(out, want) {
			t.Errorf("drill output lacks %q:\n%s", want, out)
		}
	}

	missing := wal.SegmentAt(1, pglogrepl.LSN(b.EndLSN), 1<<20).Next()
	if err := os.Remove(filepath.Join(repoDir, missing.ObjectName())); err != nil {
		t.Fatal(err)
	}
	code, out = drillCLI(t)
	if code != 1 || !strings.Contains(out, "PROBLEM: restore failed") || !strings.Contains(out, missing.ObjectName()) {
		t.Errorf("drill with %s missing: exit %d, want 1 naming it:\n%s", missing.ObjectName(), code, out)
	}
}
