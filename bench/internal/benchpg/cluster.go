// Package benchpg starts the throwaway PostgreSQL clusters the benchmarks
// run against, and reads CPU use from /proc.
package benchpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a throwaway PostgreSQL cluster whose postmaster is a child of
// this process (not daemonized by pg_ctl: PID 1 here does not reap zombies).
type Cluster struct {
	Bin string // server binaries
	// ClientBin, when set, holds the client tools (pgbench) instead of Bin:
	// the npm server packages of 16+ have none, and Debian's 15 talk to
	// newer servers.
	ClientBin string
	dir       string // base directory, owned by the server user
	Data      string // data directory
	Port      int
	logPath   string
	cred      *syscall.Credential // set when we are root
	home      string

	cmd  *exec.Cmd
	done chan struct{}
}

// serverCred returns the credentials to run initdb and postgres with: the
// postgres OS user when we are root (both refuse to run as root).
func serverCred() (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		return nil, "", nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, "", fmt.Errorf("running as root, PostgreSQL must run as the postgres OS user, which does not exist: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, u.HomeDir, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// CleanEnv is our environment without libpq's PG* and synbak's SYNBAK_*
// variables, so that nothing connects elsewhere or reads other settings.
func CleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "SYNBAK_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// Start runs initdb in dir/data and starts the postmaster; settings are
// extra postgresql.conf lines (each benchmark's WAL sizing).
func Start(ctx context.Context, bin, dir, settings string) (*Cluster, error) {
	cred, home, err := serverCred()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	c := &Cluster{Bin: bin, dir: dir, Data: filepath.Join(dir, "data"), Port: port,
		logPath: filepath.Join(dir, "postgres.log"), cred: cred, home: home}
	sock := filepath.Join(dir, "s")
	if err := os.Mkdir(sock, 0o755); err != nil {
		return nil, err
	}
	if cred != nil {
		for _, p := range []string{dir, sock} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", c.Data, "-U", "postgres",
		"-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	c.asServer(initdb)
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
wal_level = replica
max_wal_senders = 64
max_replication_slots = 64
checkpoint_timeout = 1h
shared_buffers = 512MB
log_min_messages = warning
log_checkpoints = off
`, port, sock) + settings
	if err := appendFile(filepath.Join(c.Data, "postgresql.conf"), conf); err != nil {
		return nil, err
	}
	hba := "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(c.Data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(c.Data, "pg_hba.conf"), int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", c.Data)
	c.asServer(c.cmd)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// SIGQUIT (immediate shutdown) if this process dies without cleaning up.
	c.cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(c.done) }()

	deadline := time.Now().Add(90 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.DSN())
		if err == nil {
			conn.Close(ctx)
			return c, nil
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("postgres exited during start-up; see %s", c.logPath)
		case <-ctx.Done():
			c.Stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("postgres did not accept connections within 90s: %w (see %s)", err, c.logPath)
		}
	}
}

// asServer makes cmd run as the server user in its own process group.
func (c *Cluster) asServer(cmd *exec.Cmd) {
	cmd.Dir = c.dir
	env := CleanEnv()
	if c.home != "" {
		env = append(env, "HOME="+c.home)
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
}

// DSN is a libpq connection string for the superuser.
func (c *Cluster) DSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port)
}

// Stop shuts the postmaster down by PID: SIGINT (fast shutdown), then
// SIGKILL after 60 s.
func (c *Cluster) Stop() {
	if c == nil || c.cmd == nil || c.cmd.Process == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func appendFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ProcCPU returns the user+system CPU seconds a live process has used
// (from /proc/PID/stat; clock ticks of 1/100 s as on every Linux build).
func ProcCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc stat format")
	}
	return (ut + st) / 100, nil
}

// BusyCPU returns the CPU seconds all CPUs have spent busy since boot (from
// /proc/stat: user, nice, system, irq, softirq, steal).
func BusyCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var sum float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseFloat(f[i], 64)
		sum += v
	}
	return sum / 100
}

// BuildSynbak builds ./cmd/synbak (relative to the current directory, the
// module root) into workDir/synbak and returns the binary's path.
func BuildSynbak(ctx context.Context, workDir string) (string, error) {
	exe := filepath.Join(workDir, "synbak")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", exe, "./cmd/synbak").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build synbak: %v\n%s", err, out)
	}
	return exe, nil
}

// Bench is what a benchmark runs against: a temporary work directory, a
// synbak binary and a throwaway cluster in work/pg with a superuser
// connection.
type Bench struct {
	Work    string // the work directory
	Synbak  string // the synbak binary
	Cluster *Cluster
	Conn    *pgx.Conn
}

// Setup creates a work directory /tmp/pattern* (os.MkdirTemp) with mode 0755
// (the server user must reach pg/ in it), builds synbak into it unless
// synbak names a binary (BuildSynbak), and starts a cluster in work/pg with
// settings and connects to it (StartConnected). On an error it undoes what
// it did, but keeps the work directory when keep is set.
func Setup(ctx context.Context, pattern, synbak, pgBin, settings string, keep bool) (*Bench, error) {
	work, err := os.MkdirTemp("/tmp", pattern)
	if err != nil {
		return nil, err
	}
	b := &Bench{Work: work, Synbak: synbak}
	if err := b.setup(ctx, pgBin, settings); err != nil {
		b.Close(keep)
		if keep {
			err = fmt.Errorf("%w (work directory %s kept)", err, work)
		}
		return nil, err
	}
	return b, nil
}

func (b *Bench) setup(ctx context.Context, pgBin, settings string) error {
	if err := os.Chmod(b.Work, 0o755); err != nil {
		return err
	}
	if b.Synbak == "" {
		exe, err := BuildSynbak(ctx, b.Work)
		if err != nil {
			return err
		}
		b.Synbak = exe
	}
	c, conn, err := StartConnected(ctx, pgBin, filepath.Join(b.Work, "pg"), settings)
	if err != nil {
		return err
	}
	b.Cluster, b.Conn = c, conn
	return nil
}

// Close closes the connection, stops the cluster and removes the work
// directory unless keep is set.
func (b *Bench) Close(keep bool) {
	if b.Conn != nil {
		b.Conn.Close(context.Background())
	}
	b.Cluster.Stop()
	if !keep {
		os.RemoveAll(b.Work)
	}
}

// StartConnected creates dir (mode 0755: the server user must reach it),
// starts a cluster in it as Start does and connects to it as the
// superuser. The caller stops the cluster and closes the connection; on an
// error nothing is left running.
func StartConnected(ctx context.Context, bin, dir, settings string) (*Cluster, *pgx.Conn, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, nil, err
	}
	c, err := Start(ctx, bin, dir, settings)
	if err != nil {
		return nil, nil, err
	}
	conn, err := pgx.Connect(ctx, c.DSN())
	if err != nil {
		c.Stop()
		return nil, nil, err
	}
	return c, conn, nil
}

// SwitchWAL ends the current WAL segment (pg_switch_wal) and returns the
// position pg_switch_wal reports, in bytes from 0/0 (the end of the WAL in
// the completed segment, plus one), and the name of that segment: the last
// one a WAL receiver must store to have everything written so far.
func SwitchWAL(ctx context.Context, conn *pgx.Conn) (endLSN int64, segment string, err error) {
	if err := conn.QueryRow(ctx, "select pg_wal_lsn_diff(pg_switch_wal(), '0/0')::bigint").Scan(&endLSN); err != nil {
		return 0, "", err
	}
	if err := conn.QueryRow(ctx, "select pg_walfile_name(pg_lsn '0/0' + $1::numeric)", endLSN-1).Scan(&segment); err != nil {
		return 0, "", err
	}
	return endLSN, segment, nil
}

// AsServer makes cmd run as the server's OS user (the postgres user when we
// are root), e.g. a backup tool that reads the data directory.
func (c *Cluster) AsServer(cmd *exec.Cmd) { c.asServer(cmd) }

// Chown gives p to the server's OS user (nothing when we are not root).
func (c *Cluster) Chown(p string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(p, int(c.cred.Uid), int(c.cred.Gid))
}
