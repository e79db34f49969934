package wal_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/wal"
)

// TestKill9UnderLoad kills the receiver 20 times at random moments while
// pgbench writes, restarting it each time. The slot must never be ahead of
// the WAL that is on disk (spool or repository), and in the end the archive
// must be contiguous and byte-identical to the server's pg_wal.
func TestKill9UnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	bin := pgtest.SynbakBinary(t)
	c := startCluster(t)
	repoDir, stateDir := t.TempDir(), t.TempDir()
	env := append(os.Environ(),
		"SYNBAK_POSTGRES_DSN="+c.DSN("postgres"),
		"SYNBAK_STATE_DIR="+stateDir,
		"SYNBAK_REPOSITORY_PATH="+repoDir,
		"SYNBAK_WAL_STATUS_INTERVAL=100ms",
		"SYNBAK_WAL_PARTIAL_INTERVAL=500ms",
		"SYNBAK_LOG_LEVEL=debug",
	)
	logFile, err := os.Create(filepath.Join(t.TempDir(), "synbak.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			_ = os.WriteFile(filepath.Join(os.TempDir(), "synbak-kill9-failed.log"), b, 0o600)
			t.Logf("synbak's log: %s", filepath.Join(os.TempDir(), "synbak-kill9-failed.log"))
		}
	})
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "-c", "/dev/null", "wal", "stream")
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}

	c.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bench := exec.CommandContext(ctx, filepath.Join(c.BinDir, "pgbench"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "-c", "2", "-T", "600", "postgres")
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = bench.Wait() }()

	sysid := c.IdentifySystem(t).SystemID
	spool := filepath.Join(stateDir, "wal", sysid)
	checked, slotSeen := 0, false
	for i := 0; i < 20; i++ {
		cmd := start()
		time.Sleep(time.Duration(200+rand.IntN(1300)) * time.Millisecond) // a random moment, on purpose
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		var restart string
		n := c.Int64(t, "postgres", "select count(*) from pg_replication_slots where slot_name = 'synbak' and restart_lsn is not null")
		if n == 0 {
			continue // killed before the slot existed
		}
		restart = c.Text(t, "postgres", "select restart_lsn::text from pg_replication_slots where slot_name = 'synbak'")
		rl, err := pglogrepl.ParseLSN(restart)
		if err != nil {
			t.Fatal(err)
		}
		durable := durableEnd(t, c, repoDir, spool)
		if durable == 0 && !slotSeen {
			// Killed after creating the slot and before writing any WAL:
			// restart_lsn is RESERVE_WAL's reservation (the last redo
			// point), not a flush position the receiver reported.
			slotSeen = true
			continue
		}
		slotSeen = true
		if rl > durable {
			t.Fatalf("kill %d: slot restart_lsn %s is ahead of the WAL on disk (%s)", i+1, rl, durable)
		}
		checked++
	}
	if checked < 15 {
		t.Fatalf("only %d of 20 kills checked the slot", checked)
	}

	// Let a last receiver catch up, then stop it cleanly.
	cmd := start()
	cancel()
	_ = bench.Wait()
	end := switchWAL(t, c)
	last := wal.SegmentAt(1, end-1, segSize)
	waitFor(t, 2*time.Minute, "archive of "+last.Name(), func() bool {
		_, err := os.Stat(filepath.Join(repoDir, last.ObjectName()))
		return err == nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		logFile.Sync()
		b, _ := os.ReadFile(logFile.Name())
		t.Fatalf("synbak wal stream after SIGTERM: %v\n%s", err, b)
	}
	if des, _ := os.ReadDir(filepath.Join(spool, "conflicts")); len(des) != 0 {
		t.Fatalf("%d segments conflicted with the repository", len(des))
	}
	checkArchive(t, c, openRepo(t, repoDir), 1, 10)
}

func openRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), b, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// durableEnd is the end of the WAL that is on disk: the newest complete
// segment (repository or spool), or the part of the open spool segment that
// matches the server's copy.
func durableEnd(t *testing.T, c *pgtest.Cluster, repoDir, spool string) pglogrepl.LSN {
	t.Helper()
	var end pglogrepl.LSN
	for _, n := range archived(t, openRepo(t, repoDir), 1) {
		s, _ := wal.ParseSegmentName(n, segSize)
		end = max(end, s.EndLSN())
	}
	des, _ := os.ReadDir(spool)
	for _, de := range des {
		name := de.Name()
		if s, err := wal.ParseSegmentName(name, segSize); err == nil {
			end = max(end, s.EndLSN())
			continue
		}
		if len(name) == 24+len(".partial") && filepath.Ext(name) == ".partial" {
			s, err := wal.ParseSegmentName(name[:24], segSize)
			if err != nil {
				continue
			}
			got, err1 := os.ReadFile(filepath.Join(spool, name))
			want, err2 := os.ReadFile(filepath.Join(c.PgWalDir(), name[:24]))
			if err1 != nil || err2 != nil {
				continue
			}
			n := 0
			for n < len(got) && n < len(want) && got[n] == want[n] {
				n++
			}
			end = max(end, s.StartLSN()+pglogrepl.LSN(n))
		}
	}
	return end
}
