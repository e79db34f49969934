// Package versitygw runs versitygw (github.com/versity/versitygw), a real S3
// server, serving a directory on a free loopback port. It is the launcher
// behind the tests' internal/storage/s3/s3test and the benchmarks'
// bench/internal/benchs3; nothing in synbak itself uses it.
package versitygw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/synbak/synbak/internal/proc"
)

// InstallCommand installs the server.
const InstallCommand = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// BinaryEnv names an environment variable that may point at the versitygw
// binary.
const BinaryEnv = "SYNBAK_VERSITYGW"

// Test credentials of the server's root account.
const (
	AccessKey = "synbaktestaccess"
	SecretKey = "synbak-test-secret-do-not-log-0123456789"
)

// Binary finds versitygw: $SYNBAK_VERSITYGW, $PATH, $GOBIN, $GOPATH/bin,
// ~/go/bin.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if isExec(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", BinaryEnv, p)
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if gp := os.Getenv("GOPATH"); gp != "" {
		for _, d := range filepath.SplitList(gp) {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "versitygw"); isExec(p) {
			return p, nil
		}
	}
	return "", errors.New("versitygw not found in $PATH, $GOBIN, $GOPATH/bin or ~/go/bin")
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Process is a running versitygw serving a directory (posix backend: each
// bucket a subdirectory, each object a file).
type Process struct {
	endpoint string
	dir      string
	log      string
	bin      string

	cmd  *exec.Cmd
	done <-chan struct{}
}

// Start runs bin serving dir/data (created if missing) with the root
// credentials AccessKey and SecretKey, logging to dir/versitygw.log, and
// waits until it answers HTTP (10 s at most, or until ctx ends). It tries up
// to three free loopback ports, since a port may be taken between the probe
// and the start. The server runs in its own process group (a Ctrl-C reaches
// only this process, which stops it) and gets SIGKILL if this process dies
// first.
func Start(ctx context.Context, bin, dir string) (*Process, error) {
	var lastErr error
	for range 3 {
		p, err := start(ctx, bin, dir, "")
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// start runs the server on endpoint ("" picks a free loopback port).
func start(ctx context.Context, bin, dir, endpoint string) (*Process, error) {
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	if endpoint == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0") // a free port
		if err != nil {
			return nil, err
		}
		endpoint = l.Addr().String()
		l.Close()
	}
	p := &Process{
		endpoint: endpoint,
		dir:      data,
		log:      filepath.Join(dir, "versitygw.log"),
		bin:      bin,
	}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--port", p.endpoint, "posix", data)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig kills the server if we die without stopping it (proc.Start
	// keeps the forking thread alive, which it needs).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done, err := proc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.done = done
	p.cmd = cmd
	if err := p.waitReady(ctx, 10*time.Second); err != nil {
		p.Stop()
		return nil, fmt.Errorf("versitygw on %s: %w\n%s", p.endpoint, err, p.LogTail())
	}
	return p, nil
}

// waitReady polls until the server answers HTTP.
func (p *Process) waitReady(ctx context.Context, limit time.Duration) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for {
		if p.exited() {
			return errors.New("exited during start-up")
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		resp, err := client.Get("http://" + p.endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering after %s: %w", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts the stopped server again on the same port, serving the
// same data (to end a simulated outage). The port may have been taken
// meanwhile: then it fails.
func (p *Process) Restart(ctx context.Context) error {
	if !p.exited() {
		return errors.New("versitygw: Restart of a running server")
	}
	np, err := start(ctx, p.bin, filepath.Dir(p.dir), p.endpoint)
	if err != nil {
		return err
	}
	p.cmd, p.done = np.cmd, np.done
	return nil
}

// Endpoint is the server's host:port (plain HTTP).
func (p *Process) Endpoint() string { return p.endpoint }

// Dir is the directory the server serves (dir/data of Start).
func (p *Process) Dir() string { return p.dir }

// PID is the server's process id (for its CPU and memory from /proc).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop ends the server by its process id: SIGTERM, then SIGKILL after 5 s.
// It returns at once if the server has already exited; a nil Process is
// allowed.
func (p *Process) Stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	kill := time.AfterFunc(5*time.Second, func() { _ = p.cmd.Process.Kill() })
	<-p.done
	kill.Stop()
}

// exited reports whether the server has exited.
func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LogTail returns the last 4000 bytes of the server's output.
func (p *Process) LogTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return strings.TrimSpace(string(b))
}
