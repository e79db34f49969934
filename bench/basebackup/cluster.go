package main

import (
	"context"
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

// cluster is a throwaway PostgreSQL cluster whose postmaster is a child of
// this process (not daemonized by pg_ctl: PID 1 here does not reap zombies).
type cluster struct {
	bin     string
	dir     string // base directory, owned by the server user
	data    string
	port    int
	logPath string
	cred    *syscall.Credential // set when we are root
	home    string

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

// cleanEnv is our environment without libpq's PG* and synbak's SYNBAK_*
// variables, so that nothing connects elsewhere or reads other settings.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "SYNBAK_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// startCluster runs initdb in dir/data and starts the postmaster.
func startCluster(ctx context.Context, bin, dir string) (*cluster, error) {
	cred, home, err := serverCred()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	c := &cluster{bin: bin, dir: dir, data: filepath.Join(dir, "data"), port: port,
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
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", c.data, "-U", "postgres",
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
wal_keep_size = 0
max_wal_size = 4GB
min_wal_size = 256MB
checkpoint_timeout = 1h
shared_buffers = 512MB
synchronous_commit = off
log_min_messages = warning
log_checkpoints = off
`, port, sock)
	if err := appendFile(filepath.Join(c.data, "postgresql.conf"), conf); err != nil {
		return nil, err
	}
	hba := "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(c.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(c.data, "pg_hba.conf"), int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", c.data)
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
		conn, err := pgx.Connect(ctx, c.dsn())
		if err == nil {
			conn.Close(ctx)
			return c, nil
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("postgres exited during start-up; see %s", c.logPath)
		case <-ctx.Done():
			c.stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("postgres did not accept connections within 90s: %w (see %s)", err, c.logPath)
		}
	}
}

// asServer makes cmd run as the server user in its own process group.
func (c *cluster) asServer(cmd *exec.Cmd) {
	cmd.Dir = c.dir
	env := cleanEnv()
	if c.home != "" {
		env = append(env, "HOME="+c.home)
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
}

func (c *cluster) dsn() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.port)
}

// stop shuts the postmaster down by PID: SIGINT (fast shutdown), then
// SIGKILL after 60 s.
func (c *cluster) stop() {
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
