package pgtest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartQuery(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Conf: []string{"fsync = off"}})
	if got := c.Int64(t, "postgres", "select 1"); got != 1 {
		t.Fatalf("select 1 = %d", got)
	}
	if got := c.Text(t, "postgres", "show fsync"); got != "off" {
		t.Errorf("Options.Conf not applied: fsync = %q", got)
	}
	if got := c.Text(t, "postgres", "show wal_level"); got != "replica" {
		t.Errorf("wal_level = %q, want replica", got)
	}
	if got := c.Text(t, "postgres", "show lc_collate"); got != "C" {
		t.Errorf("lc_collate = %q, want C", got)
	}
	if !strings.HasPrefix(c.DataDir, "/tmp/pgt") || !strings.HasPrefix(c.LogFile, filepath.Dir(c.DataDir)) {
		t.Errorf("unexpected layout: data %s, log %s", c.DataDir, c.LogFile)
	}
	if n := len(filepath.Join(c.SocketDir, ".s.PGSQL."+strconv.Itoa(c.Port))); n > 107 {
		t.Errorf("socket path is %d bytes", n)
	}
	fi, err := os.Stat(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v", fi.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != c.user.uid || c.user.name != "postgres" {
			t.Errorf("data dir owned by uid %d, want postgres (%d)", uid, c.user.uid)
		}
	}

	// The Unix socket works too.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "host="+c.SocketDir+" port="+strconv.Itoa(c.Port)+" user=postgres dbname=postgres")
	if err != nil {
		t.Fatalf("connect over the Unix socket: %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Errorf("select 1 over the socket: %d, %v", one, err)
	}
	conn.Close(ctx)

	// Conn is usable and closed by cleanup.
	if err := c.Conn(t, "postgres").Ping(ctx); err != nil {
		t.Error(err)
	}
	if !strings.Contains(c.LogTail(50), "database system is ready to accept connections") {
		t.Errorf("log tail lacks the ready message:\n%s", c.LogTail(50))
	}
}

func TestIdentifySystem(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Conf: []string{"fsync = off"}})
	conn := c.ReplicationConn(t)
	res, err := conn.Exec(context.Background(), "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0][0]) == 0 {
		t.Fatalf("IDENTIFY_SYSTEM: %+v", res)
	}
	sysid := string(res[0].Rows[0][0])
	info := c.IdentifySystem(t)
	if info.SystemID != sysid || info.Timeline != 1 || info.XLogPos == "" {
		t.Errorf("IdentifySystem = %+v, want system id %s on timeline 1", info, sysid)
	}
	if got := c.Text(t, "postgres", "select system_identifier::text from pg_control_system()"); got != sysid {
		t.Errorf("system id %s over SQL, %s over replication", got, sysid)
	}
}

func TestSynapse(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Conf: []string{"fsync = off"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	if v := c.Int64(t, "synapse", "select version from schema_version"); v != SynapseSchemaVersion {
		t.Errorf("schema_version = %d", v)
	}
	c.FillSynapse(t, "synapse", 3000)
	for table, want := range map[string]int64{"events": 3000, "event_json": 3000, "event_to_state_groups": 3000, "state_groups_state": 3000} {
		if got := c.Int64(t, "synapse", "select count(*) from "+table); got != want {
			t.Errorf("%s has %d rows, want %d", table, got, want)
		}
	}
	for table, least := range map[string]int64{"users": 3, "devices": 3, "rooms": 2, "local_media_repository": 100,
		"e2e_one_time_keys_json": 300, "e2e_fallback_keys_json": 3, "state_events": 1, "event_edges": 2000} {
		if got := c.Int64(t, "synapse", "select count(*) from "+table); got < least {
			t.Errorf("%s has %d rows, want at least %d", table, got, least)
		}
	}
	// Sizes: a few hundred bytes to a few kB, valid JSON.
	minLen := c.Int64(t, "synapse", "select min(length(json)) from event_json")
	maxLen := c.Int64(t, "synapse", "select max(length(json)) from event_json")
	avgLen := c.Int64(t, "synapse", "select avg(length(json))::bigint from event_json")
	if minLen < 200 || maxLen < 2000 || maxLen > 20000 || avgLen < 400 || avgLen > 3000 {
		t.Errorf("event_json lengths min %d avg %d max %d", minLen, avgLen, maxLen)
	}
	if n := c.Int64(t, "synapse", "select count(*) from event_json where (json::jsonb)->>'type' is null"); n != 0 {
		t.Errorf("%d event_json rows without a type", n)
	}
	if n := c.Int64(t, "synapse", "select count(distinct sha256) from local_media_repository where length(media_id) = 24"); n < 100 {
		t.Errorf("%d media rows with 24-character ids and distinct hashes", n)
	}
	// A second fill adds to the first.
	c.FillSynapse(t, "synapse", 10)
	if got := c.Int64(t, "synapse", "select count(distinct stream_ordering) from events"); got != 3010 {
		t.Errorf("after a second fill: %d events", got)
	}
}

func TestPgbench(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Conf: []string{"fsync = off"}})
	c.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	if n := c.Int64(t, "postgres", "select count(*) from pgbench_accounts"); n != 100000 {
		t.Errorf("pgbench_accounts has %d rows", n)
	}
	out := c.Pgbench(t, "postgres", "-t", "100", "-n")
	if !strings.Contains(out, "processed: 100/100") {
		t.Errorf("pgbench output:\n%s", out)
	}
	if n := c.Int64(t, "postgres", "select count(*) from pgbench_history"); n != 100 {
		t.Errorf("pgbench_history has %d rows", n)
	}
}

func TestKillStartAgain(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{})
	c.Exec(t, "postgres", "create table marker (v int)")
	c.Exec(t, "postgres", "insert into marker values ($1)", 42)
	keep := c.Conn(t, "postgres") // a backend that must die with the postmaster
	pid := c.PID()
	c.Kill(t)
	if c.Running() || procAlive(pid) {
		t.Fatal("postmaster still running after Kill")
	}
	if groupAlive(pid) {
		t.Fatal("backends still running after Kill")
	}
	if id, ok := c.shmID(); !ok {
		t.Error("no shared memory id in postmaster.pid after Kill")
	} else if shmAttached(id) {
		t.Errorf("shared memory %d still attached after Kill", id)
	}
	// The backend is gone (groupAlive above); its socket's end reaches
	// the client asynchronously, so poll for the failed ping.
	pingFails := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := keep.Ping(ctx)
		cancel()
		if err != nil {
			pingFails = true
			break
		}
	}
	if !pingFails {
		t.Error("connection still works 10 s after Kill")
	}
	c.StartAgain(t)
	if c.PID() == pid {
		t.Error("same postmaster PID after StartAgain")
	}
	if v := c.Int64(t, "postgres", "select v from marker"); v != 42 {
		t.Errorf("marker = %d after crash recovery", v)
	}
	if !strings.Contains(c.LogTail(100), "not properly shut down") {
		t.Errorf("no crash recovery in the log:\n%s", c.LogTail(30))
	}

	c.Stop(t)
	if c.Running() {
		t.Fatal("running after Stop")
	}
	c.StartAgain(t)
	c.Restart(t)
	if v := c.Int64(t, "postgres", "select v from marker"); v != 42 {
		t.Errorf("marker = %d after restart", v)
	}
}

func TestStandbyPromote(t *testing.T) {
	t.Parallel()
	p := Start(t, Options{Conf: []string{"fsync = off"}})
	p.Exec(t, "postgres", "create table marker (v int); insert into marker values (1)")
	s := StartStandby(t, p, Options{})
	if s.Port == p.Port || s.DataDir == p.DataDir {
		t.Fatalf("standby shares port or data dir with the primary")
	}
	if !s.Bool(t, "postgres", "select pg_is_in_recovery()") {
		t.Fatal("standby is not in recovery")
	}
	p.Exec(t, "postgres", "insert into marker values (2)")
	err := s.poll(30*time.Second, func(ctx context.Context, conn *pgx.Conn) (bool, error) {
		var n int
		err := conn.QueryRow(ctx, "select count(*) from marker").Scan(&n)
		return n == 2, err
	})
	if err != nil {
		t.Fatalf("standby did not replay: %v", err)
	}
	if got := s.IdentifySystem(t).SystemID; got != p.IdentifySystem(t).SystemID {
		t.Errorf("standby system id %s differs from the primary's", got)
	}

	s.Promote(t)
	if s.Bool(t, "postgres", "select pg_is_in_recovery()") {
		t.Fatal("still in recovery after Promote")
	}
	s.Exec(t, "postgres", "insert into marker values (3)")
	s.Exec(t, "postgres", "checkpoint")
	if tli := s.Int64(t, "postgres", "select timeline_id from pg_control_checkpoint()"); tli != 2 {
		t.Errorf("checkpoint timeline %d after promote, want 2", tli)
	}
	if tli := s.IdentifySystem(t).Timeline; tli != 2 {
		t.Errorf("IDENTIFY_SYSTEM timeline %d after promote, want 2", tli)
	}
	if _, err := os.Stat(filepath.Join(s.PgWalDir(), "00000002.history")); err != nil {
		t.Errorf("no timeline history file: %v", err)
	}
}

func TestStartDataDir(t *testing.T) {
	t.Parallel()
	src := Start(t, Options{Conf: []string{"fsync = off"}})
	src.Exec(t, "postgres", "create table marker (v int); insert into marker values (7)")
	dir := filepath.Join(ServerDir(t), "restored")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := src.RunAsServerUser(ctx, "pg_basebackup", "-D", dir, "-h", "127.0.0.1",
		"-p", strconv.Itoa(src.Port), "-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync").CombinedOutput()
	if err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	c := StartDataDir(t, dir, Options{})
	if c.Port == src.Port {
		t.Fatal("same port as the source")
	}
	if v := c.Int64(t, "postgres", "select v from marker"); v != 7 {
		t.Errorf("marker = %d", v)
	}
	c.Stop(t)
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("data dir should remain until its owner's cleanup: %v", err)
	}
}

func TestStartDataDirUnreachable(t *testing.T) {
	c := &Cluster{user: mustServerUser(t)}
	closed := t.TempDir() // 0700, owned by us
	err := c.checkTraversable(filepath.Join(closed, "data"))
	switch {
	case os.Geteuid() != 0 && err != nil:
		t.Errorf("not root, so the server runs as us and can enter %s: %v", closed, err)
	case os.Geteuid() == 0 && (err == nil || !strings.Contains(err.Error(), "ServerDir")):
		t.Errorf("checkTraversable(%s) = %v, want an error naming ServerDir", closed, err)
	}
	if err := c.checkTraversable(filepath.Join(ServerDir(t), "data")); err != nil {
		t.Errorf("ServerDir not traversable: %v", err)
	}
}

func mustServerUser(t *testing.T) serverUser {
	u, err := lookupServerUser()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestBinDir(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "13", "15", "16"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		if v != "16" { // 16 has no initdb
			if err := os.WriteFile(filepath.Join(bin, "initdb"), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := newestDebianBinDir(root), filepath.Join(root, "15", "bin"); got != want {
		t.Errorf("newestDebianBinDir = %s, want %s", got, want)
	}
	if got := newestDebianBinDir(filepath.Join(root, "none")); got != "" {
		t.Errorf("newestDebianBinDir of an empty tree = %q", got)
	}

	t.Setenv(BinDirEnv, filepath.Join(root, "15", "bin"))
	if got, err := BinDir(); err != nil || got != filepath.Join(root, "15", "bin") {
		t.Errorf("BinDir with %s set = %q, %v", BinDirEnv, got, err)
	}
	t.Setenv(BinDirEnv, filepath.Join(root, "16", "bin"))
	if _, err := BinDir(); err == nil || !strings.Contains(err.Error(), BinDirEnv) {
		t.Errorf("BinDir with a directory lacking initdb: %v", err)
	}
}

func TestQuoteConnValue(t *testing.T) {
	for in, want := range map[string]string{"synapse": "synapse", "my db": "'my db'", "it's": `'it\'s'`, "": "''"} {
		if got := quoteConnValue(in); got != want {
			t.Errorf("quoteConnValue(%q) = %s, want %s", in, got, want)
		}
	}
}

// helperEnv makes the test binary, run by TestOrphanedServerDies, start a
// cluster, print its postmaster's PID and cluster directory, and wait to be
// killed.
const helperEnv = "PGTEST_ORPHAN_HELPER"

func TestOrphanHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return // only meaningful as TestOrphanedServerDies' subprocess
	}
	c := Start(t, Options{Conf: []string{"fsync = off"}})
	os.Stdout.WriteString("PID " + strconv.Itoa(c.PID()) + " " + c.root + "\n")
	time.Sleep(time.Minute)
}

// A test process killed without cleanup must not leave its server behind.
func TestOrphanedServerDies(t *testing.T) {
	t.Parallel()
	if _, err := BinDir(); err != nil && testing.Short() {
		t.Skipf("skipped with -short: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOrphanHelper$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var pid int
	var root string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "PID" {
			pid, _ = strconv.Atoi(f[1])
			root = f[2]
			break
		}
	}
	if pid <= 0 || !strings.HasPrefix(root, "/tmp/pgt") {
		t.Fatalf("helper printed no postmaster PID (scan error %v)", sc.Err())
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if !procAlive(pid) {
		t.Fatalf("postmaster %d not running", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for procAlive(pid) || groupAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(-pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d of a killed test process still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTryStartDataDirFails(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(ServerDir(t), "broken")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Not a data directory: postgres exits at once.
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := TryStartDataDir(t, dir, Options{})
	if err == nil {
		t.Fatal("TryStartDataDir succeeded on a broken data directory")
	}
	if c.Running() {
		t.Error("Running after a failed start")
	}
	if !strings.Contains(c.LogTail(20), "could not find the database system") {
		t.Errorf("log tail lacks the reason (error %v):\n%s", err, c.LogTail(20))
	}
}

// TestInstalls finds the default server among the installations, one per
// major, and names the fix for a major that is missing.
func TestInstalls(t *testing.T) {
	def, err := BinDir()
	if err != nil {
		if testing.Short() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	defMajor, err := ServerMajor(def)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	found := false
	for _, in := range Installs() {
		if seen[in.Major] {
			t.Errorf("major %d listed twice", in.Major)
		}
		seen[in.Major] = true
		if m, err := ServerMajor(in.BinDir); err != nil || m != in.Major {
			t.Errorf("%s: major %d, %v; listed as %d", in.BinDir, m, err, in.Major)
		}
		found = found || in.Major == defMajor
		t.Logf("PostgreSQL %d: %s", in.Major, in.BinDir)
	}
	if !found {
		t.Errorf("the default server (%s, PostgreSQL %d) is not among the installations", def, defMajor)
	}
	if dir, err := BinDirFor(defMajor); err != nil || dir == "" {
		t.Errorf("BinDirFor(%d) = %q, %v", defMajor, dir, err)
	}
	if _, err := BinDirFor(9); err == nil || !strings.Contains(err.Error(), BinDirsEnv) {
		t.Errorf("BinDirFor(9) = %v, want an error naming %s", err, BinDirsEnv)
	}
}
