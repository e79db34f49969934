package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRepositoryDiskFull: the repository on a small file system that fills
// up while the agent streams (synchronously) under load: /healthz turns 503
// naming the full disk, archiving resumes when space is freed, and
// restore --latest holds every acknowledged commit.
func TestRepositoryDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("real clusters")
	}
	s := newAgentSite(t)
	// A small file system for the repository (unmounted last: cleanups
	// run in reverse order).
	if err := os.MkdirAll(s.repoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", s.repoDir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs for the repository (the test needs root): %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", s.repoDir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", s.repoDir, err, out)
		}
	})
	s.env = append(s.env, "SYNBAK_WAL_SYNCHRONOUS=true", "SYNBAK_HEALTH_WAL_BACKLOG=2s")
	s.c.Exec(t, "postgres", "ALTER SYSTEM SET synchronous_standby_names = 'synbak'")
	s.c.Exec(t, "postgres", "SELECT pg_reload_conf()")
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup and WAL streaming, healthy", func() bool {
		st := s.status(t)
		return st.Healthy && st.Backups != nil && st.Backups.Count == 1 && st.WAL.Streaming
	})

	// Fill the file system.
	filler := filepath.Join(s.repoDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	load := startCommits(t, s.c)
	waitFor(t, time.Minute, "/healthz 503 naming the full disk", func() bool {
		code, body := s.get(t, "/healthz")
		return code == 503 && strings.Contains(body, "no space left on device")
	})
	_, body := s.get(t, "/healthz")
	t.Logf("/healthz with the repository's disk full:\n%s", body)
	if n := load.count(); n == 0 {
		t.Fatal("no commit acknowledged while the repository's disk was full (the spool is on another disk)")
	}
	// Push some segments into the spool, then free the space.
	for i := 0; i < 3; i++ {
		s.c.Exec(t, "synapse", "SELECT pg_switch_wal()")
		s.c.Exec(t, "synapse", "INSERT INTO markers VALUES ($1)", i)
	}
	waitFor(t, 30*time.Second, "segments waiting in the spool", func() bool { return s.status(t).WAL.Spooled > 0 })
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// The client keeps committing: the acknowledged WAL not yet stored is
	// never zero for long, but its age stays within the partial interval
	// (500 ms) plus an upload.
	waitFor(t, time.Minute, "archiving resumed: healthy, nothing waiting, the backlog young", func() bool {
		st := s.status(t)
		return st.Healthy && st.WAL.Spooled == 0 && st.WAL.UploadError == "" && st.WAL.UnstoredSeconds < 1.5
	})
	acked := load.end(t)
	if _, err := p.stop(t, syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatalf("the agent exited with %v after SIGTERM", err)
	}
	s.c.Stop(t)

	rc, out := s.restoreCLI(t, "--latest")
	rows, err := rc.Conn(t, "synapse").Query(context.Background(), "select n from acks")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for _, n := range ns {
		have[n] = true
	}
	missing := 0
	for _, n := range acked {
		if !have[n] {
			missing++
		}
	}
	t.Logf("%d commits acknowledged, %d restored, %d missing", len(acked), len(have), missing)
	if missing > 0 {
		t.Errorf("%d of %d acknowledged commits missing after restore --latest\n%s", missing, len(acked), out)
	}
}
