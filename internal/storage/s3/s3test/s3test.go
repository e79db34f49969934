// Package s3test starts a real S3 server for tests: versitygw
// (github.com/versity/versitygw) serving a temporary directory on a free
// loopback port. Tests only.
//
// When the versitygw binary is missing the test is skipped with the install
// command, unless the environment variable CI or SYNBAK_REQUIRE_S3=1 is set:
// then it fails, so that CI cannot pass without the S3 tests.
package s3test

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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/synbak/synbak/internal/storage/s3"
)

// InstallCommand installs the server the tests use.
const InstallCommand = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// BinaryEnv names an environment variable that may point at the versitygw
// binary.
const BinaryEnv = "SYNBAK_VERSITYGW"

// Test credentials of the server's root account.
const (
	AccessKey = "synbaktestaccess"
	SecretKey = "synbak-test-secret-do-not-log-0123456789"
)

// Server is a running versitygw.
type Server struct {
	// Endpoint is host:port (plain HTTP).
	Endpoint string
	// Dir is the directory it serves; each bucket is a subdirectory.
	Dir string

	cmd     *exec.Cmd
	done    chan struct{}
	log     string
	buckets atomic.Int64
}

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

// Required reports whether a missing server fails the test instead of
// skipping it.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("SYNBAK_REQUIRE_S3") == "1"
}

// Start starts versitygw for the test and stops it at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if Required() {
			t.Fatalf("s3test: %v; install it with: %s", err, InstallCommand)
		}
		t.Skipf("s3test: %v; install it with: %s (skipped; set CI or SYNBAK_REQUIRE_S3=1 to fail instead)", err, InstallCommand)
	}
	var lastErr error
	for range 3 { // the free port may be taken between the probe and the start
		s, err := start(t, bin)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("s3test: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string) (*Server, error) {
	root := t.TempDir()
	dir := filepath.Join(root, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint: fmt.Sprintf("127.0.0.1:%d", port),
		Dir:      dir,
		done:     make(chan struct{}),
		log:      filepath.Join(root, "versitygw.log"),
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--port", s.Endpoint, "posix", dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(10 * time.Second); err != nil {
		s.stop()
		return nil, fmt.Errorf("versitygw on %s: %w\n%s", s.Endpoint, err, s.logTail())
	}
	t.Cleanup(s.stop)
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls until the server answers HTTP.
func (s *Server) waitReady(limit time.Duration) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-s.done:
			return errors.New("exited during start-up")
		default:
		}
		resp, err := client.Get("http://" + s.Endpoint + "/")
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

// stop ends the server by its process id: SIGTERM, then SIGKILL.
func (s *Server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Stop stops the server now (to test an unreachable endpoint).
func (s *Server) Stop() { s.stop() }

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return strings.TrimSpace(string(b))
}

// Client returns a minio-go client with the root credentials, for setting
// up buckets.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(AccessKey, SecretKey, ""),
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewBucket creates an empty bucket with a fresh name and returns the name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("synbak-test-%03d", s.buckets.Add(1))
	if err := s.Client(t).MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", name, err)
	}
	return name
}

// Options returns backend options for bucket on this server.
func (s *Server) Options(bucket, prefix string) s3.Options {
	return s3.Options{
		Endpoint:        s.Endpoint,
		Region:          "us-east-1",
		Bucket:          bucket,
		Prefix:          prefix,
		AccessKeyID:     AccessKey,
		SecretAccessKey: SecretKey,
		Insecure:        true,
		PathStyle:       true,
	}
}

// Backend returns an s3 backend on a new, empty bucket.
func (s *Server) Backend(t testing.TB, prefix string) *s3.Backend {
	t.Helper()
	b, err := s3.New(s.Options(s.NewBucket(t), prefix))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
