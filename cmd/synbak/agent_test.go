package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/storage/s3/s3test"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/internal/wait"
	"github.com/synbak/synbak/wal"
)

// agentSite is a Synapse-shaped cluster with its homeserver.yaml, media
// store, repository and state directory, for running the real agent.
type agentSite struct {
	c        *pgtest.Cluster
	bin      string
	dir      string // everything else lives here
	hsFile   string
	media    string
	repoDir  string
	stateDir string
	env      []string
	seed     []byte   // the signing key's
	repoEnv  []string // where the repository is, for the agent and restores
	// secrets must never be in a file the restored server's user could
	// read (the S3 secret key, the age identity's lines).
	secrets []string
	s3      *s3test.Server // set by useS3
}

func newAgentSite(t *testing.T) *agentSite {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	c.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")
	c.Exec(t, "synapse", "CREATE TABLE acks (n int primary key)")
	dir := pgtest.ServerDir(t) // the postgres user can traverse it (restore_command)
	s := &agentSite{
		c: c, bin: pgtest.SynbakBinary(t), dir: dir,
		hsFile: filepath.Join(dir, "synapse", "homeserver.yaml"), media: filepath.Join(dir, "synapse", "media_store"),
		repoDir: filepath.Join(dir, "repo"), stateDir: filepath.Join(dir, "state"),
	}
	if err := os.MkdirAll(s.media, 0o755); err != nil {
		t.Fatal(err)
	}
	s.writeHomeserver(t, "# version 1\n")
	seed := make([]byte, 32)
	rand.Read(seed)
	s.seed = seed
	if err := os.WriteFile(filepath.Join(dir, "synapse", "test.example.signing.key"), fmt.Appendf(nil, "ed25519 a_test %s\n", base64.RawStdEncoding.EncodeToString(seed)), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Synapse's user owns its signing key (nobody stands in for
		// matrix-synapse): a root restore gives it and the media back.
		if err := os.Chown(filepath.Join(dir, "synapse", "test.example.signing.key"), nobodyUID(t), nobodyUID(t)); err != nil {
			t.Fatal(err)
		}
	}
	s.env = []string{
		"SYNBAK_SYNAPSE_CONFIG=" + s.hsFile, "SYNBAK_SYNAPSE_WORKDIR=" + filepath.Dir(s.hsFile),
		"SYNBAK_STATE_DIR=" + s.stateDir,
		"SYNBAK_HTTP_LISTEN=127.0.0.1:0", "SYNBAK_WAL_STATUS_INTERVAL=200ms", "SYNBAK_WAL_PARTIAL_INTERVAL=500ms",
		"SYNBAK_BASEBACKUP_INTERVAL=0", "SYNBAK_BASEBACKUP_PART_SIZE_MB=4",
		"SYNBAK_HEALTH_PROBE_INTERVAL=200ms", "SYNBAK_HEALTH_DISCONNECTED=1s", "SYNBAK_MEDIA_QUIET_PERIOD=200ms",
		"SYNBAK_LOG_LEVEL=debug",
	}
	s.repoEnv = []string{"SYNBAK_REPOSITORY_PATH=" + s.repoDir}
	return s
}

// useS3 puts the repository in a bucket of a versitygw started for the
// test, encrypted with a new age key; it returns the directory versitygw
// stores the bucket in.
func (s *agentSite) useS3(t *testing.T) string {
	t.Helper()
	srv := s3test.Start(t)
	s.s3 = srv
	bucket := srv.NewBucket(t)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "synbak.age")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.repoDir = ""
	s.repoEnv = []string{
		"SYNBAK_REPOSITORY_URL=s3://" + bucket + "/homeserver", "SYNBAK_REPOSITORY_S3_ENDPOINT=" + srv.Endpoint,
		"SYNBAK_REPOSITORY_S3_INSECURE=true", "SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID=" + s3test.AccessKey,
		"SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY=" + s3test.SecretKey,
		"SYNBAK_REPOSITORY_ENCRYPTION_RECIPIENTS=" + id.Recipient().String(),
		"SYNBAK_REPOSITORY_ENCRYPTION_IDENTITY_FILE=" + idFile,
	}
	s.secrets = append([]string{s3test.SecretKey}, strings.Split(strings.TrimSpace(id.String()), "\n")...)
	return filepath.Join(srv.Dir, bucket)
}

// writeHomeserver replaces homeserver.yaml the way editors and config
// managers do: a new file renamed over the old one.
func (s *agentSite) writeHomeserver(t *testing.T, comment string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(s.hsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`%sserver_name: test.example
database:
  name: psycopg2
  args: {user: postgres, password: secret-password, dbname: synapse, host: 127.0.0.1, port: %d}
media_store_path: %s
`, comment, s.c.Port, s.media)
	tmp := s.hsFile + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.hsFile); err != nil {
		t.Fatal(err)
	}
}

// upload writes a media file the way Synapse does (two new directory
// levels, the file written in place, then its row) and returns its path
// relative to the media store.
func (s *agentSite) upload(t *testing.T, size int) string {
	t.Helper()
	id := make([]byte, 12)
	rand.Read(id)
	mediaID := hex.EncodeToString(id)
	rel := filepath.Join("local_content", mediaID[:2], mediaID[2:4], mediaID[4:])
	p := filepath.Join(s.media, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, size)
	rand.Read(body)
	if err := os.WriteFile(p, body, 0o644); err != nil {
		t.Fatal(err)
	}
	s.c.Exec(t, "synapse", "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ($1, 'application/octet-stream', $2, $3, '@alice:test.example')",
		mediaID, size, time.Now().UnixMilli())
	return rel
}

type agentProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logFile string
}

// startAgent runs `synbak agent` and waits until it serves /status.
func (s *agentSite) startAgent(t *testing.T) *agentProc {
	t.Helper()
	addrFile := filepath.Join(s.stateDir, "agent.addr")
	_ = os.Remove(addrFile)
	p := s.startSynbak(t, "agent", 40, "agent")
	waitFor(t, 30*time.Second, "the agent's address", func() bool {
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.logFile)
			t.Fatalf("the agent exited: %v\n%s", p.err, b)
		default:
		}
		_, err := os.Stat(addrFile)
		return err == nil
	})
	return p
}

// startSynbak starts `synbak <args>` with the site's environment, its output
// in a log file (its last logLines shown when the test fails), killed at
// cleanup if still running.
func (s *agentSite) startSynbak(t *testing.T, name string, logLines int, args ...string) *agentProc {
	t.Helper()
	logf, err := os.CreateTemp(s.dir, name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(s.bin, append([]string{"-c", "/dev/null"}, args...)...)
	cmd.Env = append(append(os.Environ(), s.env...), s.repoEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{}), logFile: logf.Name()}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.logFile)
			t.Logf("%s log %s (tail):\n%s", name, p.logFile, tail(string(b), logLines))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *agentSite) addr(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.stateDir, "agent.addr"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (s *agentSite) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.addr(t) + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *agentSite) status(t *testing.T) agent.Status {
	t.Helper()
	code, body := s.get(t, "/status")
	var st agent.Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("/status: %d %s", code, body)
	}
	return st
}

// metric returns the value of an unlabelled metric in /metrics.
func (s *agentSite) metric(t *testing.T, name string) string {
	t.Helper()
	_, body := s.get(t, "/metrics")
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

var waitFor = wait.For

// stop sends sig and waits at most limit for the agent to exit.
func (p *agentProc) stop(t *testing.T, sig syscall.Signal, limit time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		return time.Since(start), p.err
	case <-time.After(limit):
		t.Fatalf("the agent did not exit within %s of %s", limit, sig)
		return 0, nil
	}
}

// ackLoad inserts rows into acks one by one until stopped and remembers,
// for each, the server's WAL position after its commit returned.
type ackLoad struct {
	mu    sync.Mutex
	lsns  map[int]pglogrepl.LSN
	stop  chan struct{}
	done  chan struct{}
	next  int
	errMu sync.Mutex
	err   error
}

func startAckLoad(t *testing.T, c *pgtest.Cluster, from int) *ackLoad {
	l := &ackLoad{lsns: map[int]pglogrepl.LSN{}, stop: make(chan struct{}), done: make(chan struct{}), next: from}
	conn := c.Conn(t, "synapse")
	go func() {
		defer close(l.done)
		ctx := context.Background()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			var lsn string
			if _, err := conn.Exec(ctx, "INSERT INTO acks VALUES ($1)", l.next); err != nil {
				l.errMu.Lock()
				l.err = err
				l.errMu.Unlock()
				return
			}
			if err := conn.QueryRow(ctx, "select pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
				l.errMu.Lock()
				l.err = err
				l.errMu.Unlock()
				return
			}
			v, _ := pglogrepl.ParseLSN(lsn)
			l.mu.Lock()
			l.lsns[l.next] = v
			l.mu.Unlock()
			l.next++
		}
	}()
	return l
}

func (l *ackLoad) end(t *testing.T) map[int]pglogrepl.LSN {
	t.Helper()
	close(l.stop)
	<-l.done
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	return l.lsns
}

func (l *ackLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lsns)
}

// restoreCLI runs `synbak restore` as a user would and starts the result.
func (s *agentSite) restoreCLI(t *testing.T, args ...string) (*pgtest.Cluster, string) {
	t.Helper()
	// The repository stays as the agent wrote it (root, 0700): the
	// restore serves the WAL itself.
	pgdata := filepath.Join(pgtest.ServerDir(t), "data")
	cmd := exec.Command(s.bin, append([]string{"-c", "/dev/null", "restore", "--pgdata", pgdata}, args...)...)
	// A new machine: the repository settings and an empty state directory.
	cmd.Env = append(append(os.Environ(), s.repoEnv...), "SYNBAK_STATE_DIR="+filepath.Join(t.TempDir(), "state"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// While it runs: no secret in the directories the server's user can
	// reach (the data directory, the restore's work directory, the
	// server's socket directories).
	secretDirs := func() []string {
		socks, _ := filepath.Glob("/tmp/synbak-restore-*")
		return append([]string{pgdata, pgdata + ".synbak-restore"}, socks...)
	}
	var runErr error
	polls := 0
	for running := true; running; {
		select {
		case runErr = <-done:
			running = false
		case <-time.After(50 * time.Millisecond):
			if len(s.secrets) > 0 {
				noSecrets(t, secretDirs(), s.secrets, 1<<20)
				polls++
			}
		}
	}
	if runErr != nil {
		t.Fatalf("synbak restore %v: %v\n%s", args, runErr, out.String())
	}
	if len(s.secrets) > 0 {
		noSecrets(t, secretDirs(), s.secrets, 0)
		t.Logf("no secret in the server's reach in %d polls during the restore and after it", polls)
	}
	// After it: the data directory belongs to the server's user, and
	// nothing of the restore's stays but its server log.
	if os.Geteuid() == 0 {
		fi, err := os.Stat(pgdata)
		if err != nil {
			t.Fatal(err)
		}
		pu, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		if uid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid); uid != pu.Uid {
			t.Errorf("the restored data directory belongs to uid %s, want postgres (%s)", uid, pu.Uid)
		}
	}
	if left, err := os.ReadDir(pgdata + ".synbak-restore"); err != nil || len(left) != 1 || left[0].Name() != "postgres.log" {
		t.Errorf("beside the data directory the restore left %v (%v), want only postgres.log", left, err)
	}
	return pgtest.StartDataDir(t, pgdata, pgtest.Options{}), out.String()
}

// nobodyUID is nobody's uid (its gid is taken to be the same number,
// as for any unprivileged test owner).
func nobodyUID(t *testing.T) int {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// noSecrets fails t if a regular file under dirs (at most maxSize bytes
// when not 0) contains one of secrets.
func noSecrets(t *testing.T, dirs, secrets []string, maxSize int64) {
	t.Helper()
	for _, d := range dirs {
		_ = filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() || (maxSize > 0 && fi.Size() > maxSize) {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil // gone meanwhile
			}
			for _, sec := range secrets {
				if sec != "" && bytes.Contains(b, []byte(sec)) {
					t.Errorf("%s holds a secret (%.12s...)", p, sec)
				}
			}
			return nil
		})
	}
}

func listFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestAgentEndToEnd runs the agent while rows are written, media uploaded
// and homeserver.yaml replaced by rename; kills it with SIGKILL under load
// and restarts it; stops it with SIGTERM under load. Restores to a time in
// the middle and to the latest point give the rows and media of that time,
// and every row whose commit the agent had acknowledged as flushed.
func TestAgentEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	agentEndToEnd(t, newAgentSite(t))
}

// TestAgentEndToEndS3 is TestAgentEndToEnd with the repository in an
// S3 bucket (versitygw on loopback), encrypted, restored on a "new machine"
// with only the repository settings and the identity file.
func TestAgentEndToEndS3(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	s := newAgentSite(t)
	bucketDir := s.useS3(t)
	agentEndToEnd(t, s)
	// Nothing in the bucket is readable without the key: not the
	// database password of homeserver.yaml, not the signing key.
	seed := base64.RawStdEncoding.EncodeToString(s.seed)
	n := 0
	err := filepath.Walk(bucketDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		n++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("secret-password")) || bytes.Contains(b, []byte(seed)) {
			t.Errorf("%s holds a secret in clear", p)
		}
		return nil
	})
	if err != nil || n < 10 {
		t.Fatalf("walked %d objects in %s: %v", n, bucketDir, err)
	}
}

func agentEndToEnd(t *testing.T, s *agentSite) {
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup and WAL streaming, healthy", func() bool {
		st := s.status(t)
		return st.Healthy && st.Backups != nil && st.Backups.Count == 1 && st.WAL.Streaming
	})

	// Before the target: marker 1 and media file A.
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	fileA := s.upload(t, 300<<10)
	waitFor(t, time.Minute, "media file A stored", func() bool { st := s.status(t); return st.Media.Added >= 1 && st.Media.Pending == 0 })
	target := s.c.Now(t)
	waitFor(t, 10*time.Second, "the server clock to pass the target", func() bool { return s.c.Now(t).After(target) })
	time.Sleep(10 * time.Millisecond) // media mtimes have the file system's granularity; keep B strictly after the target

	// After the target: marker 2, media file B, homeserver.yaml replaced.
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (2)")
	fileB := s.upload(t, 50<<10)
	replaced := time.Now()
	s.writeHomeserver(t, "# version 2\n")
	waitFor(t, time.Minute, "media file B stored", func() bool { st := s.status(t); return st.Media.Added >= 2 && st.Media.Pending == 0 })
	if n, _ := strconv.Atoi(s.metric(t, "synbak_media_copy_latency_seconds_count")); n < 2 {
		t.Errorf("synbak_media_copy_latency_seconds_count = %d after two uploads", n)
	}
	waitFor(t, time.Minute, "the replaced homeserver.yaml snapshotted", func() bool {
		st := s.status(t)
		return st.Config != nil && st.Config.LastSnapshot.After(replaced.Add(time.Second)) && st.Config.Files >= 2
	})

	// SIGKILL under load, then a restart continues with no gap.
	load := startAckLoad(t, s.c, 1)
	waitFor(t, 30*time.Second, "load", func() bool { return load.count() > 200 })
	if _, err := p.stop(t, syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("the agent exited cleanly after SIGKILL?")
	}
	p = s.startAgent(t)
	waitFor(t, time.Minute, "streaming again after SIGKILL", func() bool { st := s.status(t); return st.WAL.Streaming })
	n := load.count()
	waitFor(t, 30*time.Second, "more load", func() bool { return load.count() > n+200 })

	// SIGTERM under load: exit 0 within 10 s.
	took, err := p.stop(t, syscall.SIGTERM, 10*time.Second)
	if err != nil {
		t.Fatalf("the agent exited with %v after SIGTERM", err)
	}
	t.Logf("the agent stopped %s after SIGTERM", took.Round(time.Millisecond))
	acked := load.end(t)
	flushed, err := pglogrepl.ParseLSN(s.c.Text(t, "postgres", "select restart_lsn::text from pg_replication_slots where slot_name = 'synbak'"))
	if err != nil {
		t.Fatal(err)
	}
	var mustHave []int
	for n, lsn := range acked {
		if lsn <= flushed {
			mustHave = append(mustHave, n)
		}
	}
	if len(mustHave) < 400 {
		t.Fatalf("only %d of %d rows were acknowledged as flushed (%s); the test needs more", len(mustHave), len(acked), flushed)
	}

	// verify --media: the database's media are all in the backup; a row
	// whose file never reached it is named.
	verifyMedia := func() (int, string) {
		cmd := exec.Command(s.bin, "-c", "/dev/null", "verify", "--quick", "--media")
		cmd.Env = append(append(append(os.Environ(), s.env...), s.repoEnv...), "SYNBAK_STATE_DIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}
	if code, out := verifyMedia(); code != 0 || !strings.Contains(out, "OK: no problem found") {
		t.Errorf("verify --media after the uploads: exit %d\n%s", code, out)
	}
	s.c.Exec(t, "synapse", "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ('zzyyxxwwvvuuttss', 'image/png', 1234, $1, '@bob:test.example')",
		time.Now().Add(-time.Hour).UnixMilli())
	if code, out := verifyMedia(); code != 1 || !strings.Contains(out, "local_content/zz/yy/xxwwvvuuttss") {
		t.Errorf("verify --media with a row the backup lacks: exit %d, want 1 naming local_content/zz/yy/xxwwvvuuttss\n%s", code, out)
	}

	// Restore to the target: marker 1 and file A only.
	cfgAtTarget := filepath.Join(s.dir, "config-at-target")
	rc, out := s.restoreCLI(t, "--target-time", target.Format(time.RFC3339Nano), "--media-dir", filepath.Join(s.dir, "media-at-target"), "--config-dir", cfgAtTarget)
	if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1" {
		t.Errorf("restored to %s: markers %q, want 1\n%s", target, got, out)
	}
	if got, want := listFiles(t, filepath.Join(s.dir, "media-at-target")), []string{fileA}; !slices.Equal(got, want) {
		t.Errorf("media at %s: %v, want %v", target, got, want)
	}
	if b, err := os.ReadFile(filepath.Join(cfgAtTarget, s.hsFile)); err != nil || !strings.HasPrefix(string(b), "# version 1\n") {
		t.Errorf("homeserver.yaml at %s: %q, %v; want version 1", target, b, err)
	}
	keyFile := filepath.Join(filepath.Dir(s.hsFile), "test.example.signing.key")
	if b, err := os.ReadFile(filepath.Join(cfgAtTarget, keyFile)); err != nil || !strings.Contains(string(b), base64.RawStdEncoding.EncodeToString(s.seed)) {
		t.Errorf("signing key at %s: %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(cfgAtTarget, "synbak-manifest.json")); err != nil {
		t.Error(err)
	}
	if os.Geteuid() == 0 {
		// Restored as root: each config file has its recorded owner, the
		// media store the signing key's (Synapse's user).
		for _, p := range []string{filepath.Join(cfgAtTarget, keyFile), filepath.Join(s.dir, "media-at-target", fileA)} {
			if fi, err := os.Stat(p); err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != nobodyUID(t) {
				t.Errorf("%s: %v: want it owned by Synapse's user (uid %d)", p, err, nobodyUID(t))
			}
		}
	}
	rc.Stop(t)

	// Restore the latest: both markers, both files, every acknowledged row.
	cfgLatest := filepath.Join(s.dir, "config-latest")
	rc, out = s.restoreCLI(t, "--latest", "--media-dir", filepath.Join(s.dir, "media-latest"), "--config-dir", cfgLatest, "--new-signing-key")
	if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2" {
		t.Errorf("restored --latest: markers %q, want 1,2\n%s", got, out)
	}
	have := map[int]bool{}
	rows, err := rc.Conn(t, "synapse").Query(context.Background(), "select n from acks")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		have[n] = true
	}
	rows.Close()
	missing := 0
	for _, n := range mustHave {
		if !have[n] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of the %d rows acknowledged as flushed (up to %s) are missing after restore --latest", missing, len(mustHave), flushed)
	}
	t.Logf("%d rows acknowledged as flushed, %d restored, %d written", len(mustHave), len(have), len(acked))
	want := []string{fileA, fileB}
	sort.Strings(want)
	if got := listFiles(t, filepath.Join(s.dir, "media-latest")); !slices.Equal(got, want) {
		t.Errorf("media --latest: %v, want %v", got, want)
	}

	// The latest config with a new signing key: the restored
	// homeserver.yaml (version 2) lists the old public key.
	hs := filepath.Join(cfgLatest, s.hsFile)
	b, err := os.ReadFile(hs)
	if err != nil || !strings.HasPrefix(string(b), "# version 2\n") {
		t.Fatalf("homeserver.yaml --latest: %q, %v; want version 2", b, err)
	}
	h, err := synapse.Load([]string{hs}, cfgLatest)
	if err != nil {
		t.Fatal(err)
	}
	oldPub := base64.RawStdEncoding.EncodeToString(ed25519.NewKeyFromSeed(s.seed).Public().(ed25519.PublicKey))
	if old, ok := h.OldSigningKeys["ed25519:a_test"]; !ok || old.Key != oldPub || old.ExpiredTS <= 0 {
		t.Errorf("old_signing_keys %v, want ed25519:a_test with key %s", h.OldSigningKeys, oldPub)
	}
	kb, err := os.ReadFile(filepath.Join(cfgLatest, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := confsnap.ParseSigningKeys(kb)
	if err != nil || len(keys) != 1 || keys[0].ID() == "ed25519:a_test" || bytes.Equal(keys[0].Seed, s.seed) {
		t.Errorf("new signing key file: %v (%d keys)", err, len(keys))
	}
	if !strings.Contains(out, "signing key:") {
		t.Errorf("the report does not mention the new key:\n%s", out)
	}
}

// TestAgentHealthFollowsTheDatabase scrapes /healthz and /metrics while the
// database is stopped and started again.
func TestAgentHealthFollowsTheDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	s := newAgentSite(t)
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "healthy", func() bool { code, _ := s.get(t, "/healthz"); return code == 200 })
	for name, want := range map[string]string{"synbak_postgres_up": "1", "synbak_wal_streaming": "1", "synbak_healthy": "1", "synbak_basebackups": "1"} {
		if got := s.metric(t, name); got != want {
			t.Errorf("%s = %q while healthy, want %s", name, got, want)
		}
	}
	if got := s.metric(t, "synbak_basebackup_last_success_timestamp_seconds"); got == "" || got == "0" {
		t.Errorf("synbak_basebackup_last_success_timestamp_seconds = %q", got)
	}
	// The real scrape is clean by Prometheus's own linter, and says which
	// synbak runs.
	_, scraped := s.get(t, "/metrics")
	problems, err := promlint.New(strings.NewReader(scraped)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if !strings.Contains(scraped, "synbak_build_info{commit=") {
		t.Errorf("no synbak_build_info in the scrape")
	}

	s.c.Stop(t)
	var body string
	waitFor(t, time.Minute, "/healthz 503 naming the database and the receiver", func() bool {
		var code int
		code, body = s.get(t, "/healthz")
		return code == 503 && strings.Contains(body, "postgres: unreachable") && strings.Contains(body, "wal: the receiver has not been streaming")
	})
	t.Logf("/healthz with the database down:\n%s", body)
	for name, want := range map[string]string{"synbak_postgres_up": "0", "synbak_wal_streaming": "0", "synbak_healthy": "0"} {
		if got := s.metric(t, name); got != want {
			t.Errorf("%s = %q with the database down, want %s", name, got, want)
		}
	}

	s.c.StartAgain(t)
	waitFor(t, 2*time.Minute, "/healthz 200 again", func() bool { code, _ := s.get(t, "/healthz"); return code == 200 })
	for name, want := range map[string]string{"synbak_postgres_up": "1", "synbak_wal_streaming": "1", "synbak_healthy": "1"} {
		if got := s.metric(t, name); got != want {
			t.Errorf("%s = %q after the database came back, want %s", name, got, want)
		}
	}
	if _, err := p.stop(t, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// TestAgentRetention runs the agent with a short basebackup.interval and
// retention.backups 2: after several backups only the newest ones are
// left with the WAL from the oldest kept one's start, a restore inside the
// window works and one before it is refused naming the window.
func TestAgentRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	s := newAgentSite(t)
	s.env = append(s.env, "SYNBAK_BASEBACKUP_INTERVAL=1s", "SYNBAK_RETENTION_BACKUPS=2", "SYNBAK_RETENTION_WINDOW=1s")
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "the first base backup", func() bool { st := s.status(t); return st.Backups != nil && st.Backups.Taken >= 1 })
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	early := s.c.Now(t)
	waitFor(t, 3*time.Minute, "five base backups", func() bool { return s.status(t).Backups.Taken >= 5 })
	st := s.status(t)
	if !strings.HasPrefix(st.Backups.LastPrune, "deleted ") && st.Backups.LastPrune != "nothing to delete" {
		t.Errorf("last prune: %q", st.Backups.LastPrune)
	}
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (2)")
	// The commit returns before the receiver has its WAL (no synchronous
	// replication): wait until it is durable before stopping the agent.
	lsn, err := pglogrepl.ParseLSN(s.c.Text(t, "synapse", "SELECT pg_current_wal_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "marker 2's WAL flushed by the agent", func() bool {
		st := s.status(t)
		if st.WAL == nil {
			return false
		}
		f, err := pglogrepl.ParseLSN(st.WAL.Flushed)
		return err == nil && f >= lsn
	})
	if _, err := p.stop(t, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}

	be, err := local.New(s.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	backups, err := basebackup.List(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(backups) < 2 || len(backups) > 3 {
		t.Fatalf("%d complete backups after five with retention.backups 2 and a 1s window, want the anchor and the two newest (2 or 3)", len(backups))
	}
	first := wal.SegmentAt(backups[0].Timeline, pglogrepl.LSN(backups[0].StartLSN), 1<<20)
	var older []string
	if err := r.List(ctx, "wal/00000001/", func(oi storage.ObjectInfo) error {
		if strings.TrimPrefix(oi.Name, "wal/00000001/")[:24] < first.Name() {
			older = append(older, oi.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(older) > 0 {
		t.Errorf("WAL before the oldest kept backup's start (%s) is still there: %v", first.Name(), older)
	}

	// Before the window: refused, naming the window; inside it: restored.
	cmd := exec.Command(s.bin, "-c", "/dev/null", "restore", "--pgdata", filepath.Join(pgtest.ServerDir(t), "data"), "--target-time", early.Format(time.RFC3339Nano))
	cmd.Env = append(append(os.Environ(), s.repoEnv...), "SYNBAK_STATE_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "restores are possible") {
		t.Errorf("restore to %s, before the window: %v\n%s", early, err, out)
	}
	rc, _ := s.restoreCLI(t, "--latest")
	if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2" {
		t.Errorf("restore --latest after the prunes: markers %q, want 1,2", got)
	}
}

// TestAgentDumps runs the agent with a short dump.interval and
// retention.dumps 2: dumps are taken one after another, each followed by
// retention, and /status and /metrics show them.
func TestAgentDumps(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	s := newAgentSite(t)
	s.env = append(s.env, "SYNBAK_DUMP_INTERVAL=1s", "SYNBAK_RETENTION_DUMPS=2", "SYNBAK_DUMP_PART_SIZE_MB=1")
	p := s.startAgent(t)
	waitFor(t, 3*time.Minute, "four dumps", func() bool { st := s.status(t); return st.Dumps != nil && st.Dumps.Taken >= 4 })
	waitFor(t, time.Minute, "healthy", func() bool { code, _ := s.get(t, "/healthz"); return code == 200 })
	st := s.status(t).Dumps
	if st.Count != 2 || st.LastID == "" || st.LastSize <= 0 || st.LastError != "" || !strings.HasPrefix(st.LastPrune, "deleted ") {
		t.Errorf("dump status %+v", st)
	}
	if got := s.metric(t, "synbak_dumps"); got != "2" {
		t.Errorf("synbak_dumps = %q, want 2", got)
	}
	if got := s.metric(t, "synbak_dump_last_end_timestamp_seconds"); got == "" || got == "0" {
		t.Errorf("synbak_dump_last_end_timestamp_seconds = %q", got)
	}
	if _, err := p.stop(t, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	be, err := local.New(s.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dump.List(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	// 2, or 3 when one finished as SIGTERM came, before its prune.
	if len(ds) < 2 || len(ds) > 3 {
		t.Errorf("%d complete dumps after %d taken with retention.dumps 2", len(ds), st.Taken)
	}
}
