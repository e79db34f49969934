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
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/synbak/synbak/internal/storage/s3"
	"github.com/synbak/synbak/internal/storage/s3/versitygw"
)

// InstallCommand installs the server the tests use.
const InstallCommand = versitygw.InstallCommand

// BinaryEnv names an environment variable that may point at the versitygw
// binary.
const BinaryEnv = versitygw.BinaryEnv

// Test credentials of the server's root account.
const (
	AccessKey = versitygw.AccessKey
	SecretKey = versitygw.SecretKey
)

// Server is a running versitygw.
type Server struct {
	// Endpoint is host:port (plain HTTP).
	Endpoint string
	// Dir is the directory it serves; each bucket is a subdirectory.
	Dir string

	proc    *versitygw.Process
	buckets atomic.Int64
}

// Binary finds versitygw: $SYNBAK_VERSITYGW, $PATH, $GOBIN, $GOPATH/bin,
// ~/go/bin.
func Binary() (string, error) { return versitygw.Binary() }

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
	p, err := versitygw.Start(context.Background(), bin, t.TempDir())
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Server{Endpoint: p.Endpoint(), Dir: p.Dir(), proc: p}
}

// Stop stops the server now (to test an unreachable endpoint).
func (s *Server) Stop() { s.proc.Stop() }

// Pause stops the server's process (SIGSTOP) without closing its socket:
// connections are accepted by the kernel and requests hang, as with a
// stalled storage server, until Resume. Cleanup resumes it.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.proc.PID(), syscall.SIGSTOP); err != nil {
		t.Fatalf("s3test: pause: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(s.proc.PID(), syscall.SIGCONT) })
}

// Resume continues a paused server.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.proc.PID(), syscall.SIGCONT); err != nil {
		t.Fatalf("s3test: resume: %v", err)
	}
}

// Restart starts the stopped server again on the same endpoint with the
// same data (the end of an outage). It may run on any goroutine.
func (s *Server) Restart() error {
	if err := s.proc.Restart(context.Background()); err != nil {
		return fmt.Errorf("s3test: restart: %w", err)
	}
	return nil
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
