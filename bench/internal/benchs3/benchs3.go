// Package benchs3 starts versitygw (a real S3 server, as in the tests'
// internal/storage/s3/s3test) on a free loopback port for the benchmarks,
// which are main programs and have no testing.TB.
package benchs3

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

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/synbak/synbak/internal/storage/s3/s3test"
)

// Server is a running versitygw serving a directory (posix backend: each
// bucket a subdirectory, each object a file).
type Server struct {
	Endpoint string // host:port, plain HTTP
	Dir      string // served directory

	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Binary finds versitygw like the tests do ($SYNBAK_VERSITYGW, $PATH,
// ~/go/bin...), with the install command in the error.
func Binary() (string, error) {
	p, err := s3test.Binary()
	if err != nil {
		return "", fmt.Errorf("%w; install it with: %s", err, s3test.InstallCommand)
	}
	return p, nil
}

// Start runs versitygw serving dir/data (logging to dir/versitygw.log) and
// waits until it answers HTTP. It runs in its own process group (a Ctrl-C
// reaches only the benchmark, which stops it) and gets SIGKILL if the
// benchmark dies first.
func Start(ctx context.Context, dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the free port may be taken between the probe and the start
		s, err := start(ctx, bin, dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(ctx context.Context, bin, dir string) (*Server, error) {
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Endpoint: fmt.Sprintf("127.0.0.1:%d", port), Dir: data, done: make(chan struct{}),
		log: filepath.Join(dir, "versitygw.log")}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--port", s.Endpoint, "posix", data)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s3test.AccessKey, "ROOT_SECRET_KEY="+s3test.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := s.waitReady(ctx, 10*time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("versitygw on %s: %w\n%s", s.Endpoint, err, s.logTail())
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context, limit time.Duration) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-s.done:
			return errors.New("exited during start-up")
		case <-ctx.Done():
			return ctx.Err()
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

// PID is the server's process id (for its CPU and memory from /proc).
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Stop ends the server by its process id: SIGTERM, then SIGKILL after 5 s.
func (s *Server) Stop() {
	if s == nil || s.cmd == nil || s.cmd.Process == nil {
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

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return strings.TrimSpace(string(b))
}

// Client is a minio-go client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(s3test.AccessKey, s3test.SecretKey, ""),
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
}

// MakeBucket creates bucket.
func (s *Server) MakeBucket(ctx context.Context, bucket string) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	return c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"})
}

// SynbakEnv is the environment that points synbak at s3://bucket/prefix on
// this server (no repository.path must be set besides).
func (s *Server) SynbakEnv(bucket, prefix string) []string {
	return []string{
		"SYNBAK_REPOSITORY_URL=s3://" + bucket + "/" + prefix,
		"SYNBAK_REPOSITORY_S3_ENDPOINT=" + s.Endpoint,
		"SYNBAK_REPOSITORY_S3_INSECURE=true",
		"SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID=" + s3test.AccessKey,
		"SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY=" + s3test.SecretKey,
	}
}

// Size sums the sizes of the objects under prefix in bucket.
func (s *Server) Size(ctx context.Context, bucket, prefix string) (int64, error) {
	c, err := s.Client()
	if err != nil {
		return 0, err
	}
	var n int64
	for oi := range c.ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			return 0, oi.Err
		}
		n += oi.Size
	}
	return n, nil
}
