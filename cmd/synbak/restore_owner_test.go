package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/wal"
)

// TestRestoreAsRepositoryOwner: a repository written by `synbak agent` run
// as a non-root service user (here nobody), then restored (to a time; the
// latest point with media and config) and drilled by that same user: the restored
// server runs as that user, the data directory belongs to it, and the
// report says what to chown before the distribution's service starts it.
func TestRestoreAsRepositoryOwner(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run synbak as another user (as any other user, every restore test is this case)")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	bin := pgtest.SynbakBinary(t)
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	c.FillSynapse(t, "synapse", 20)
	c.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")

	// The user's own directory (its home, as a service user's state
	// directory would be).
	home, err := os.MkdirTemp("/tmp", "synbak-owner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(home, "repo")
	as := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"-c", "/dev/null"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Dir = home
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "SYNBAK_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, "HOME="+home, "SYNBAK_REPOSITORY_PATH="+repoDir, "SYNBAK_STATE_DIR="+filepath.Join(home, "state"),
			"SYNBAK_POSTGRES_DSN="+c.DSN("synapse"), "SYNBAK_WAL_STATUS_INTERVAL=200ms", "SYNBAK_WAL_PARTIAL_INTERVAL=300ms")
		return cmd
	}
	run := func(args ...string) (int, string) {
		t.Helper()
		out, err := as(args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}

	// Synapse's files, the user's (its config directory and media store).
	syn := filepath.Join(home, "synapse")
	media := filepath.Join(syn, "media_store")
	mediaFile := filepath.Join("local_content", "ab", "cd", "efghijklmnop")
	if err := os.MkdirAll(filepath.Join(media, filepath.Dir(mediaFile)), 0o700); err != nil {
		t.Fatal(err)
	}
	hs := filepath.Join(syn, "homeserver.yaml")
	for p, body := range map[string]string{
		hs: fmt.Sprintf("server_name: test.example\ndatabase:\n  name: psycopg2\n  args: {user: postgres, dbname: synapse, host: 127.0.0.1, port: %d}\nmedia_store_path: %s\n", c.Port, media),
		filepath.Join(syn, "test.example.signing.key"): "ed25519 a_test AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
		filepath.Join(media, mediaFile):                "an uploaded file",
	} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := filepath.Walk(syn, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid) // the fixture is the user's, as Synapse's files would be its
	}); err != nil {
		t.Fatal(err)
	}

	// The agent as that user: a base backup at start, WAL, media, config.
	agentCmd := as("agent")
	agentCmd.Env = append(agentCmd.Env, "SYNBAK_SYNAPSE_CONFIG="+hs, "SYNBAK_SYNAPSE_WORKDIR="+syn, "SYNBAK_HTTP_LISTEN=127.0.0.1:0",
		"SYNBAK_BASEBACKUP_INTERVAL=0", "SYNBAK_BASEBACKUP_PART_SIZE_MB=4", "SYNBAK_MEDIA_QUIET_PERIOD=200ms")
	var agentOut bytes.Buffer
	agentCmd.Stdout, agentCmd.Stderr = &agentOut, &agentOut
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if t.Failed() {
			t.Logf("agent output (tail):\n%s", tail(agentOut.String(), 30))
		}
		if !stopped {
			_ = agentCmd.Process.Kill()
			_ = agentCmd.Wait()
		}
	}()
	has := func(pattern string) bool { m, _ := filepath.Glob(filepath.Join(repoDir, pattern)); return len(m) > 0 }
	waitFor(t, 2*time.Minute, "the agent's first backup, media and config snapshot", func() bool {
		return has("backups/*/backup.json") && has("media/index/*") && has("config/index/*")
	})
	// An admin runs `synbak backup` as root with the agent's settings
	// while the agent runs: every file it leaves, in the repository and in
	// the state directory, is the agent's user's (the agent keeps reading,
	// listing and pruning them; the restores below, run as that user, use
	// this backup).
	rootBackup := as("backup")
	rootBackup.SysProcAttr = nil
	if out, err := rootBackup.CombinedOutput(); err != nil {
		t.Fatalf("synbak backup as root: %v\n%s", err, out)
	}
	for _, dir := range []string{repoDir, filepath.Join(home, "state")} {
		if err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != uint32(uid) {
				t.Errorf("%s: owned by uid %d after root's backup, want the agent's user (%d)", p, st.Uid, uid)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(repoDir, "backups/*/backup.json")); len(m) != 2 {
		t.Fatalf("want the agent's and root's backups, found %d", len(m))
	}
	c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	mid := timeAfterCommit(t, c)
	c.Exec(t, "synapse", "INSERT INTO markers VALUES (2)")
	c.FillSynapse(t, "synapse", 5)
	end, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(repoDir, filepath.FromSlash(wal.SegmentAt(1, end-1, 1<<20).ObjectName()))
	waitFor(t, time.Minute, "WAL archived by nobody's agent", func() bool { _, err := os.Stat(seg); return err == nil })
	_ = agentCmd.Process.Signal(syscall.SIGTERM)
	stopped = true
	if err := agentCmd.Wait(); err != nil {
		t.Fatalf("agent: %v\n%s", err, agentOut.String())
	}
	if fi, err := os.Stat(seg); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("segment %s: %v %v: want nobody's, private", seg, err, fi.Mode())
	}

	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"at-time", "1", []string{"--target-time", mid.Format(time.RFC3339Nano)}},
		{"latest", "1,2", []string{"--latest", "--media-dir", filepath.Join(home, "media-restored"), "--config-dir", filepath.Join(home, "config-restored")}},
	} {
		pgdata := filepath.Join(home, tc.name)
		args := append([]string{"restore", "--pgdata", pgdata, "--pg-bindir", c.BinDir}, tc.args...)
		if code, out := run(append(args, "--dry-run")...); code != 0 {
			t.Fatalf("%s: dry run as nobody: exit %d\n%s", tc.name, code, out)
		}
		code, out := run(append(args, "--leave-running")...)
		if code != 0 {
			t.Fatalf("%s: restore as nobody: exit %d\n%s", tc.name, code, out)
		}
		t.Logf("%s:\n%s", tc.name, out)
		fi, err := os.Stat(pgdata)
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
			t.Errorf("%s: data directory %v: want it nobody's", tc.name, err)
		}
		if !strings.Contains(out, "chown -R postgres:postgres "+pgdata) {
			t.Errorf("%s: the report does not say what to chown", tc.name)
		}
		if tc.name == "latest" {
			if b, err := os.ReadFile(filepath.Join(home, "media-restored", mediaFile)); err != nil || string(b) != "an uploaded file" {
				t.Errorf("restored media file: %q, %v", b, err)
			}
			if b, err := os.ReadFile(filepath.Join(home, "config-restored", hs)); err != nil || !strings.Contains(string(b), "server_name: test.example") {
				t.Errorf("restored homeserver.yaml: %q, %v", b, err)
			}
			if !strings.Contains(out, fmt.Sprintf("chown -R %d:%d %s", uid, gid, filepath.Join(home, "media-restored"))) {
				t.Errorf("the report does not say what to chown for the media store")
			}
		}
		sock := ""
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "/tmp/synbak-restore-") {
				sock = strings.TrimRight(f, ";,.")
				break
			}
		}
		port := ""
		if i := strings.Index(out, "127.0.0.1:"); i >= 0 {
			port = strings.Fields(out[i+len("127.0.0.1:"):])[0]
		}
		conn, err := pgx.Connect(context.Background(), "host="+sock+" port="+port+" user=postgres dbname=synapse sslmode=disable")
		if err != nil {
			t.Fatalf("%s: connect to the server left running (socket %q, port %q): %v", tc.name, sock, port, err)
		}
		var got string
		if err := conn.QueryRow(context.Background(), "select string_agg(n::text, ',' order by n) from markers").Scan(&got); err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
		if got != tc.want {
			t.Errorf("%s: markers %q, want %q", tc.name, got, tc.want)
		}
		// Left running after promotion: restore_command is gone (its
		// socket is), the private settings stay until the admin finishes.
		auto, err := os.ReadFile(filepath.Join(pgdata, "postgresql.auto.conf"))
		if err != nil || strings.Contains(string(auto), "restore_command") || !strings.Contains(string(auto), "# synbak restore: private settings") {
			t.Errorf("%s: postgresql.auto.conf of the server left running (%v):\n%s", tc.name, err, auto)
		}
		if _, err := os.Stat(filepath.Join(sock, "synbak-wal.sock")); err == nil {
			t.Errorf("%s: the WAL socket outlived the restore", tc.name)
		}
		stopLeftRunning(t, pgdata)
		os.RemoveAll(sock)
	}

	scratch := filepath.Join(home, "scratch")
	if err := os.Mkdir(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chown(scratch, uid, gid)
	if code, out := run("drill", "--scratch-dir", scratch, "--pg-bindir", c.BinDir); code != 0 || !strings.Contains(out, "OK: the newest backup restores") {
		t.Errorf("drill as nobody: exit %d\n%s", code, out)
	}
}

// timeAfterCommit returns a server time after the last commit and waits
// until the server's clock has passed it.
func timeAfterCommit(t *testing.T, c *pgtest.Cluster) time.Time {
	t.Helper()
	now := c.Now(t)
	waitFor(t, 10*time.Second, "server clock to advance", func() bool { return c.Now(t).After(now) })
	return now
}

// stopLeftRunning stops a server a restore left running (SIGINT to the
// postmaster) and waits for it.
func stopLeftRunning(t *testing.T, pgdata string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the restored server to stop", func() bool { return syscall.Kill(pid, 0) != nil })
}
