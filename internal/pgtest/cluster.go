package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/proc"
)

// Timeouts for cluster operations. Generous: the machine has 2 cores shared
// with parallel test packages.
const (
	startTimeout = 120 * time.Second
	stopTimeout  = 60 * time.Second
	sqlTimeout   = 2 * time.Minute
)

// Options adjust a new cluster.
type Options struct {
	// Conf holds extra postgresql.conf lines, written after the harness's
	// own settings so that they override them, e.g. "fsync = off" for
	// speed (safe: tests crash the server, never the OS) or
	// "archive_mode = on".
	Conf []string
	// InitdbArgs are extra initdb arguments, e.g. "--wal-segsize=1" or
	// "--data-checksums". Ignored by StartStandby and StartDataDir.
	InitdbArgs []string
	// Major picks the server's major version among the installations
	// Installs finds (e.g. 17); 0 means the default, BinDir(). BinDir, when
	// set, names the server bin directory itself and wins over Major.
	// StartStandby uses the primary's binaries whatever these say.
	Major  int
	BinDir string
}

// binDir resolves the server bin directory the options ask for.
func (o Options) binDir() (string, error) {
	switch {
	case o.BinDir != "":
		if !isFile(filepath.Join(o.BinDir, "initdb")) {
			return "", fmt.Errorf("Options.BinDir %s holds no initdb", o.BinDir)
		}
		return o.BinDir, nil
	case o.Major != 0:
		return BinDirFor(o.Major)
	default:
		return BinDir()
	}
}

// Cluster is a running (or stopped) throwaway PostgreSQL cluster. Its
// superuser is postgres, reachable without a password over TCP on
// 127.0.0.1:Port and over the Unix socket in SocketDir, for ordinary and
// replication connections alike.
//
// Stop, Kill, StartAgain, Restart and Promote must not be called
// concurrently; the query helpers may.
type Cluster struct {
	// DataDir is the data directory (PGDATA).
	DataDir string
	// SocketDir holds the Unix socket; its path is short enough for
	// sun_path.
	SocketDir string
	// BinDir holds the server binaries (see BinDir).
	BinDir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// LogFile is the server log. It is outside DataDir, so base backups do
	// not copy it.
	LogFile string

	root string // the cluster's own directory under /tmp, removed on cleanup
	user serverUser
	pm   *postmaster // the server process, nil before the first start
}

// Start initdb's a new cluster and starts it. A t.Cleanup stops it (fast
// mode; SIGKILL if that fails) and removes its files. Missing binaries fail
// the test with an install hint, or skip it under testing.Short().
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := newCluster(t, opts)
	c.DataDir = filepath.Join(c.root, "data")
	args := []string{"-D", c.DataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync"}
	args = append(args, opts.InitdbArgs...)
	if out, err := c.run(context.Background(), "initdb", args...); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	c.configure(t, opts)
	if err := c.start(true); err != nil {
		t.Fatalf("pgtest: start cluster: %v\n%s", err, c.logSection())
	}
	return c
}

// StartDataDir starts a server on an existing data directory, for example
// one restored from a backup into ServerDir(t). Ownership is handed to the
// server's OS user and the harness's settings (port, socket, pg_hba.conf)
// are written over it. A t.Cleanup stops the server; the directory itself
// is left to whoever created it. Like pg_ctl -w, it returns as soon as the
// server accepts connections, which may be before recovery has ended:
// WaitPromoted waits for that.
func StartDataDir(t testing.TB, dataDir string, opts Options) *Cluster {
	t.Helper()
	c, err := TryStartDataDir(t, dataDir, opts)
	if err != nil {
		t.Fatalf("pgtest: %v\n%s", err, c.logSection())
	}
	return c
}

// TryStartDataDir is StartDataDir for tests that expect the server may not
// come up (a recovery that must fail, say): it returns the error, with the
// cluster for its LogTail, instead of failing the test. Setup problems
// still fail the test.
func TryStartDataDir(t testing.TB, dataDir string, opts Options) (*Cluster, error) {
	t.Helper()
	c := newCluster(t, opts)
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.DataDir = abs
	if err := c.user.chownTree(c.DataDir); err != nil {
		t.Fatalf("pgtest: give %s to the server user: %v", c.DataDir, err)
	}
	if err := os.Chmod(c.DataDir, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := c.checkTraversable(c.DataDir); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.configure(t, opts)
	if err := c.start(true); err != nil {
		return c, fmt.Errorf("start cluster on %s: %w", c.DataDir, err)
	}
	return c, nil
}

// ServerDir returns a new empty directory under /tmp owned by the server's
// OS user (mode 0700, every parent traversable), removed when the test
// ends. Use it for data directories to restore into and for files the
// server itself must read, such as a WAL archive for restore_command.
func ServerDir(t testing.TB) string {
	t.Helper()
	u, err := lookupServerUser()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	dir, err := makeRoot(u)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("pgtest: remove %s: %v", dir, err)
		}
	})
	return dir
}

// makeRoot creates a directory under /tmp (short, so socket paths fit)
// owned by u.
func makeRoot(u serverUser) (string, error) {
	dir, err := os.MkdirTemp("/tmp", "pgt")
	if err != nil {
		return "", fmt.Errorf("create cluster directory: %w", err)
	}
	if err := os.Chown(dir, u.uid, u.gid); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("give %s to the server user: %w", dir, err)
	}
	return dir, nil
}

// newCluster finds the binaries opts ask for and the server user, creates
// the cluster's directory and socket directory, and registers the cleanup.
func newCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	bin, err := opts.binDir()
	if err != nil {
		if testing.Short() {
			t.Skipf("pgtest: %v", err)
		}
		t.Fatalf("pgtest: %v", err)
	}
	u, err := lookupServerUser()
	if err != nil {
		if testing.Short() {
			t.Skipf("pgtest: %v", err)
		}
		t.Fatalf("pgtest: %v", err)
	}
	root, err := makeRoot(u)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c := &Cluster{
		BinDir:    bin,
		SocketDir: filepath.Join(root, "s"),
		LogFile:   filepath.Join(root, "server.log"),
		root:      root,
		user:      u,
	}
	t.Cleanup(func() { c.cleanup(t) })
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := os.Chown(c.SocketDir, u.uid, u.gid); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return c
}

func (c *Cluster) cleanup(t testing.TB) {
	if c.Running() {
		forced, err := c.stop()
		if err != nil {
			t.Errorf("pgtest: stop cluster at cleanup: %v", err)
		} else if forced {
			t.Logf("pgtest: cluster did not stop in fast mode and was killed")
		}
	}
	if t.Failed() {
		t.Logf("pgtest: server log of the cluster on port %d:\n%s", c.Port, c.LogTail(40))
	}
	if err := os.RemoveAll(c.root); err != nil {
		t.Errorf("pgtest: remove %s: %v", c.root, err)
	}
}

// includeName is the file in the data directory holding the harness's
// settings; postgresql.conf includes it.
const includeName = "pgtest.conf"

// configure writes the harness's settings, opts.Conf and pg_hba.conf into
// the data directory and picks a port.
func (c *Cluster) configure(t testing.TB, opts Options) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c.Port = port
	if err := c.writeInclude(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	confPath := filepath.Join(c.DataDir, "postgresql.conf")
	conf, err := os.ReadFile(confPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pgtest: %v", err)
	}
	var add strings.Builder
	includeLine := "include '" + includeName + "'"
	if !bytes.Contains(conf, []byte(includeLine)) {
		add.WriteString("\n# added by synbak's pgtest harness\n" + includeLine + "\n")
	}
	for _, l := range opts.Conf {
		add.WriteString(l + "\n")
	}
	if err := c.writeFile(confPath, append(conf, add.String()...)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	hba := "# written by synbak's pgtest harness: throwaway test cluster, trust on loopback only\n" +
		"local all all trust\n" +
		"host all all 127.0.0.1/32 trust\n" +
		"local replication all trust\n" +
		"host replication all 127.0.0.1/32 trust\n"
	if err := c.writeFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hba)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// writeInclude writes the harness's settings for the current port.
func (c *Cluster) writeInclude() error {
	conf := fmt.Sprintf(`# written by synbak's pgtest harness
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 32MB
logging_collector = off
log_line_prefix = '%%m [%%p] '
`, c.Port, c.SocketDir)
	return c.writeFile(filepath.Join(c.DataDir, includeName), []byte(conf))
}

// writeFile writes a file owned by the server user.
func (c *Cluster) writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	if err := os.Chown(path, c.user.uid, c.user.gid); err != nil {
		return fmt.Errorf("give %s to the server user: %w", path, err)
	}
	return nil
}

// checkTraversable fails when the server user could not reach dir because
// a parent is closed to it (root ignores modes, so test the bits).
func (c *Cluster) checkTraversable(dir string) error {
	if c.user.cred == nil {
		return nil
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && fi.Mode().Perm()&0o001 == 0 && int(st.Uid) != c.user.uid &&
			!(int(st.Gid) == c.user.gid && fi.Mode().Perm()&0o010 != 0) {
			return fmt.Errorf("the server user %s cannot enter %s (mode %v), so it cannot reach %s: create data directories with pgtest.ServerDir", c.user.name, p, fi.Mode().Perm(), dir)
		}
		if p == "/" {
			return nil
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	return port, nil
}

// postmaster is a server process started by this harness. It is our child,
// so that we reap it: on this kind of machine PID 1 may not reap orphans,
// and a zombie postmaster's PID keeps postmaster.pid "in use".
type postmaster struct {
	cmd  *exec.Cmd
	done <-chan struct{} // closed once the process has exited and been reaped
}

// start starts the postmaster and waits until it accepts connections. With
// retryPort, a port taken meanwhile by someone else is replaced.
func (c *Cluster) start(retryPort bool) error {
	for attempt := 1; ; attempt++ {
		off := c.logSize()
		err := c.spawn()
		if err == nil {
			err = c.waitReady()
		}
		if err == nil {
			return nil
		}
		if retryPort && attempt < 5 && !c.Running() && portTaken(c.logSince(off)) {
			if c.Port, err = freePort(); err != nil {
				return err
			}
			if err := c.writeInclude(); err != nil {
				return err
			}
			continue
		}
		return err
	}
}

// spawn starts postgres -D DataDir as the server user, in its own process
// group, logging to LogFile.
func (c *Cluster) spawn() error {
	log, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer log.Close()
	if err := os.Chown(c.LogFile, c.user.uid, c.user.gid); err != nil {
		return fmt.Errorf("give %s to the server user: %w", c.LogFile, err)
	}
	cmd := c.RunAsServerUser(context.Background(), "postgres", "-D", c.DataDir)
	cmd.Stdout, cmd.Stderr = log, log
	// Own process group: Kill can take the backends down with the
	// postmaster, and terminal signals meant for go test do not reach it.
	cmd.SysProcAttr.Setpgid = true
	// If the test process dies without cleanup (a timeout panic, a
	// SIGKILL), the postmaster gets SIGQUIT (immediate shutdown) instead of
	// living on (proc.Start keeps the forking thread alive, which it needs).
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	done, err := proc.Start(cmd)
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	pm := &postmaster{cmd: cmd, done: done}
	c.pm = pm
	return nil
}

func portTaken(log string) bool {
	return strings.Contains(log, "Address already in use") ||
		strings.Contains(log, "could not create any TCP/IP sockets")
}

// waitReady polls until a connection succeeds, failing early if the
// postmaster exits.
func (c *Cluster) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var last error
	for {
		if c.pmExited() {
			return fmt.Errorf("postmaster exited while starting: %v (last connection error: %v)", c.pm.cmd.ProcessState, last)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, c.DSN("postgres"))
		ccancel()
		if err == nil {
			return conn.Close(ctx)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not accepting connections after %v: %w", startTimeout, last)
		case <-c.pm.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pmExited reports whether the postmaster this harness started has exited.
func (c *Cluster) pmExited() bool {
	if c.pm == nil {
		return true
	}
	select {
	case <-c.pm.done:
		return true
	default:
		return false
	}
}

// StartAgain starts the cluster after Stop or Kill (Kill leads to crash
// recovery). The port stays the same.
func (c *Cluster) StartAgain(t testing.TB) {
	t.Helper()
	if c.Running() {
		t.Fatalf("pgtest: StartAgain: the cluster on port %d is already running", c.Port)
	}
	if err := c.start(false); err != nil {
		t.Fatalf("pgtest: start cluster again: %v\n%s", err, c.logSection())
	}
}

// Stop shuts the cluster down in fast mode (SIGINT), and kills it
// (SIGKILL) if it has not stopped within a minute.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	forced, err := c.stop()
	if err != nil {
		t.Fatalf("pgtest: stop cluster: %v\n%s", err, c.LogTail(20))
	}
	if forced {
		t.Logf("pgtest: cluster on port %d did not stop in fast mode and was killed", c.Port)
	}
}

// Restart stops the cluster and starts it again.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t)
	c.StartAgain(t)
}

func (c *Cluster) stop() (forced bool, err error) {
	if c.pmExited() {
		return false, nil
	}
	if err := c.pm.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false, fmt.Errorf("signal postmaster: %w", err)
	}
	select {
	case <-c.pm.done:
		return false, nil
	case <-time.After(stopTimeout):
	}
	return true, c.kill()
}

// Kill crashes the cluster: SIGKILL to the postmaster and its backends
// (its process group), then waits until all of them are gone.
func (c *Cluster) Kill(t testing.TB) {
	t.Helper()
	if c.pmExited() {
		t.Fatalf("pgtest: Kill: the cluster on port %d is not running", c.Port)
	}
	if err := c.kill(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

func (c *Cluster) kill() error {
	if c.pmExited() {
		return nil
	}
	pid := c.pm.cmd.Process.Pid // leader of its own process group (Setpgid)
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill postmaster %d: %w", pid, err)
	}
	timeout := time.After(stopTimeout)
	select {
	case <-c.pm.done:
	case <-timeout:
		return fmt.Errorf("postmaster %d still alive %v after SIGKILL", pid, stopTimeout)
	}
	// Backends forked before the kill are orphans now; wait until they
	// are gone too, or a restart finds the shared memory still in use.
	for groupAlive(pid) {
		select {
		case <-timeout:
			return fmt.Errorf("backends of postmaster %d still alive %v after SIGKILL", pid, stopTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// A backend can outlive the group's SIGKILL for a moment (CI saw one
	// log "unexpected postmaster exit" after the kill) and keep the
	// shared memory attached: a restart then refuses with "pre-existing
	// shared memory block is still in use". Wait until nothing is
	// attached to the segment postmaster.pid names.
	if id, ok := c.shmID(); ok {
		for shmAttached(id) {
			select {
			case <-timeout:
				return fmt.Errorf("shared memory %d of postmaster %d still attached %v after SIGKILL", id, pid, stopTimeout)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// shmID returns the System V shared memory id in postmaster.pid (its
// seventh line: key and id).
func (c *Cluster) shmID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return 0, false
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return 0, false
	}
	id, err := strconv.Atoi(f[1])
	return id, err == nil
}

// shmAttached reports whether a process is attached to the segment id
// (/proc/sysvipc/shm: its nattch column).
func shmAttached(id int) bool {
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		if sid, err := strconv.Atoi(f[1]); err == nil && sid == id {
			n, err := strconv.Atoi(f[6])
			return err == nil && n > 0
		}
	}
	return false
}

// PID returns the postmaster's PID while it runs, else 0.
func (c *Cluster) PID() int {
	if c.pmExited() {
		return 0
	}
	return c.pm.cmd.Process.Pid
}

// Running reports whether the postmaster is alive. It turns false when the
// server exits on its own, e.g. of a FATAL at the end of recovery.
func (c *Cluster) Running() bool { return !c.pmExited() }

// procStat returns the state and process group of pid from /proc.
func procStat(pid int) (state byte, pgrp int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], pgrp, true
}

// procAlive reports whether pid exists and is not a zombie (the reaper of
// orphans may be slow or absent).
func procAlive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// groupAlive reports whether any live process belongs to process group pgrp.
func groupAlive(pgrp int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, g, ok := procStat(pid); ok && g == pgrp && state != 'Z' && state != 'X' {
			return true
		}
	}
	return false
}

// PgWalDir returns the cluster's pg_wal directory.
func (c *Cluster) PgWalDir() string { return filepath.Join(c.DataDir, "pg_wal") }

// Tool returns the path of a PostgreSQL program for this cluster: BinDir's
// when it has one, else the default installation's (BinDir()), else the
// newest Debian one's (the client tools: the npm server packages of other
// majors hold only initdb, pg_ctl and postgres), else the bare name for a
// PATH lookup. A client
// tool of an older major may refuse a newer server (pg_basebackup,
// pg_dump, pg_waldump do); Major tells which server this is.
func (c *Cluster) Tool(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	if p := filepath.Join(c.BinDir, name); isFile(p) {
		return p
	}
	def, _ := BinDir()
	for _, dir := range []string{def, newestDebianBinDir("/usr/lib/postgresql")} {
		if p := filepath.Join(dir, name); dir != "" && isFile(p) {
			return p
		}
	}
	return name
}

// Major returns the major version of the cluster's server binaries.
func (c *Cluster) Major(t testing.TB) int {
	t.Helper()
	m, err := serverMajor(c.BinDir)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return m
}

// RunAsServerUser returns a command run as the OS user that owns the
// cluster (postgres when we are root), in the cluster's directory, with an
// environment free of PG* variables. A bare name runs from where Tool
// finds it (BinDir, then the default installation, then PATH).
func (c *Cluster) RunAsServerUser(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Tool(name), args...)
	cmd.Dir = c.root
	cmd.Env = c.user.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.user.cred}
	return cmd
}

// run runs a server binary as the server user and returns its output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := c.RunAsServerUser(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), err
}

// Pgbench runs pgbench against dbname over TCP, e.g. Pgbench(t, "postgres",
// "-i", "-s", "1") or Pgbench(t, "postgres", "-t", "100"), and returns its
// output. A failure fails the test.
func (c *Cluster) Pgbench(t testing.TB, dbname string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	all := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}, args...)
	all = append(all, dbname)
	out, err := c.run(ctx, "pgbench", all...)
	if err != nil {
		t.Fatalf("pgtest: %v\n%s", err, out)
	}
	return out
}

func (c *Cluster) logSize() int64 {
	fi, err := os.Stat(c.LogFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns the log written after offset off.
func (c *Cluster) logSince(off int64) string {
	f, err := os.Open(c.LogFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	const window = 64 << 10
	off := c.logSize() - window
	if off < 0 {
		off = 0
	}
	lines := strings.Split(strings.TrimRight(c.logSince(off), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSection is the log tail formatted for a failure message.
func (c *Cluster) logSection() string {
	return "--- server log " + c.LogFile + " (last 40 lines) ---\n" + c.LogTail(40)
}
