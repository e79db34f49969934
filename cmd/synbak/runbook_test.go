package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/pgtest"
)

// TestDisasterRecoveryRunbook runs the README's "Disaster recovery" block,
// every command of it, as root, after the database host was lost (the
// postmaster's process group killed, its data directory moved away) while
// the agent ran, and the homeserver's config and media directories are gone
// too (a new machine). The README's paths are relocated into the test's
// directories; nothing else is changed: no chown, no extra flag.
func TestDisasterRecoveryRunbook(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the runbook is run as root")
	}
	block := readmeRunbook(t)

	s := newAgentSite(t)
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup and WAL streaming", func() bool {
		st := s.status(t)
		return st.Backups != nil && st.Backups.Count == 1 && st.WAL != nil && st.WAL.Streaming
	})
	for i := 1; i <= 50; i++ {
		s.c.Exec(t, "synapse", "INSERT INTO markers VALUES ($1)", i)
	}
	media := s.upload(t, 64<<10)
	end, err := pglogrepl.ParseLSN(s.c.Text(t, "postgres", "SELECT pg_current_wal_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the rows durable in synbak and the media file stored", func() bool {
		st := s.status(t)
		f, err := pglogrepl.ParseLSN(st.WAL.Flushed)
		return err == nil && f >= end && st.Media != nil && st.Media.Added >= 1 && st.Media.Pending == 0
	})
	hsBefore, err := os.ReadFile(s.hsFile)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(filepath.Dir(s.hsFile), "test.example.signing.key")
	keyBefore, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}

	// The disaster: the database host is lost, then the agent is stopped.
	s.c.LoseHost(t)
	if _, err := p.stop(t, syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("agent after SIGTERM: %v", err)
	}
	// The new machine has no Synapse config and no media store.
	synDir := filepath.Dir(s.hsFile) // holds the media store too
	if err := os.Rename(synDir, synDir+".lost"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(synDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// The README's paths, relocated.
	root := pgtest.ServerDir(t) // reachable by the postgres user, like /var/lib
	pgdata := filepath.Join(root, "pg15main")
	newMedia := filepath.Join(root, "media")
	restored := filepath.Join(t.TempDir(), "synbak-restored")
	script := strings.NewReplacer(
		"/var/backups/synbak", s.repoDir,
		"/var/lib/postgresql/15/main", pgdata,
		"/var/lib/matrix-synapse/media", newMedia,
		"/root/synbak-restored", restored,
		"/etc/matrix-synapse", synDir,
	).Replace(block)
	binDir := t.TempDir()
	if err := os.Symlink(s.bin, filepath.Join(binDir, "synbak")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Env = []string{"PATH=" + binDir + ":/usr/bin:/bin", "HOME=" + t.TempDir(),
		"SYNBAK_STATE_DIR=" + filepath.Join(t.TempDir(), "state")} // a new machine's empty state
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = t.TempDir()
	if err := cmd.Run(); err != nil {
		t.Fatalf("the README's runbook failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"Recovery window", "Dry run"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("runbook output lacks %q:\n%s", want, out.String())
		}
	}

	// The restored server starts and holds every row; the one-time keys
	// are gone; homeserver.yaml, the signing key and the media file are back.
	c := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
	if n := c.Int64(t, "synapse", "SELECT count(*) FROM markers"); n != 50 {
		t.Errorf("restored %d markers, want all 50", n)
	}
	if n := c.Int64(t, "synapse", "SELECT count(*) FROM e2e_one_time_keys_json"); n != 0 {
		t.Errorf("%d one-time keys after the restore", n)
	}
	if b, err := os.ReadFile(s.hsFile); err != nil || !bytes.Equal(b, hsBefore) {
		t.Errorf("homeserver.yaml after the runbook: %v (%d bytes, had %d)", err, len(b), len(hsBefore))
	}
	if b, err := os.ReadFile(keyFile); err != nil || !bytes.Equal(b, keyBefore) {
		t.Errorf("the signing key after the runbook: %v", err)
	}
	if _, err := os.Stat(filepath.Join(newMedia, media)); err != nil {
		t.Errorf("media file: %v", err)
	}
}

// readmeRunbook returns the README's disaster-recovery command block.
func readmeRunbook(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, "<!-- runbook:begin -->\n```sh\n"), strings.Index(s, "```\n<!-- runbook:end -->")
	if i < 0 || j < i {
		t.Fatal("README.md has no runbook block")
	}
	return s[i+len("<!-- runbook:begin -->\n```sh\n") : j]
}
