package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startWALStream runs `synbak wal stream` for the site.
func (s *agentSite) startWALStream(t *testing.T) *agentProc {
	t.Helper()
	return s.startSynbak(t, "wal stream", 60, "wal", "stream")
}

func (p *agentProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// walsenderPID is the PID of synbak's walsender, 0 when none streams.
func (s *agentSite) walsenderPID(t *testing.T) int {
	t.Helper()
	n, _ := strconv.Atoi(s.c.Text(t, "postgres", "select coalesce(max(pid), 0)::text from pg_stat_replication where application_name = 'synbak' and state = 'streaming'"))
	return n
}

// TestBackupDuringWALStreamReconnect: `synbak backup` started while
// `wal stream` reconnects (its walsender terminated just before) never makes
// the stream fail: 10 times, the backup completes using the running
// receiver, the stream keeps going, and the last commit is archived.
func TestBackupDuringWALStreamReconnect(t *testing.T) {
	if testing.Short() {
		t.Skip("real clusters")
	}
	s := newAgentSite(t)
	ws := s.startWALStream(t)
	waitFor(t, 30*time.Second, "wal stream streaming", func() bool { return s.walsenderPID(t) != 0 })
	env := append(append(os.Environ(), s.env...), s.repoEnv...)
	for i := 1; i <= 10; i++ {
		s.c.Exec(t, "synapse", "INSERT INTO markers VALUES ($1)", i)
		pid := s.walsenderPID(t)
		if pid == 0 {
			t.Fatalf("trial %d: wal stream is not streaming", i)
		}
		s.c.Exec(t, "postgres", "SELECT pg_terminate_backend($1)", pid)
		// The backup starts within the receiver's reconnection backoff.
		cmd := exec.Command(s.bin, "-c", "/dev/null", "backup")
		cmd.Env = env
		start := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("trial %d: backup took %s\n%s", i, time.Since(start).Round(time.Millisecond), tail(string(out), 8))
		if err != nil {
			t.Fatalf("trial %d: synbak backup: %v\n%s", i, err, tail(string(out), 30))
		}
		if !strings.Contains(string(out), "is archiving WAL; the backup waits for it") {
			t.Errorf("trial %d: the backup did not leave the WAL to the running wal stream:\n%s", i, tail(string(out), 30))
		}
		if ws.exited() {
			b, _ := os.ReadFile(ws.logFile)
			t.Fatalf("trial %d: wal stream exited: %v\n%s", i, ws.err, tail(string(b), 30))
		}
		waitFor(t, 30*time.Second, "wal stream streaming again", func() bool {
			if ws.exited() {
				t.Fatalf("trial %d: wal stream exited: %v", i, ws.err)
			}
			return s.walsenderPID(t) != 0 && s.walsenderPID(t) != pid
		})
	}
	b, _ := os.ReadFile(ws.logFile)
	if strings.Contains(string(b), "level=ERROR") {
		t.Errorf("wal stream logged errors:\n%s", tail(string(b), 30))
	}
	// The last commit: stored when wal stream stops, then restored.
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (1000)")
	flush := s.c.Text(t, "postgres", "select pg_current_wal_flush_lsn()::text")
	waitFor(t, 30*time.Second, "the last commit flushed by wal stream", func() bool {
		return s.c.Bool(t, "postgres", "select coalesce(max(flush_lsn) >= $1::pg_lsn, false) from pg_stat_replication where application_name = 'synbak'", flush)
	})
	if _, err := ws.stop(t, syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("wal stream exited with %v after SIGTERM", err)
	}
	s.c.Stop(t)
	rc, out := s.restoreCLI(t, "--latest")
	if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2,3,4,5,6,7,8,9,10,1000" {
		t.Errorf("restored --latest: markers %q, want 1..10 and 1000\n%s", got, out)
	}
}
