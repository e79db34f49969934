// Package benchs3 starts versitygw (a real S3 server, as in the tests'
// internal/storage/s3/s3test; both use internal/storage/s3/versitygw) on a
// free loopback port for the benchmarks, which are main programs and have no
// testing.TB.
package benchs3

import (
	"context"
	"fmt"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/synbak/synbak/internal/storage/s3/versitygw"
)

// Server is a running versitygw serving a directory (posix backend: each
// bucket a subdirectory, each object a file).
type Server struct {
	Endpoint string // host:port, plain HTTP
	Dir      string // served directory

	proc *versitygw.Process
}

// Binary finds versitygw like the tests do ($SYNBAK_VERSITYGW, $PATH,
// ~/go/bin...), with the install command in the error.
func Binary() (string, error) {
	p, err := versitygw.Binary()
	if err != nil {
		return "", fmt.Errorf("%w; install it with: %s", err, versitygw.InstallCommand)
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
	p, err := versitygw.Start(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	return &Server{Endpoint: p.Endpoint(), Dir: p.Dir(), proc: p}, nil
}

// PID is the server's process id (for its CPU and memory from /proc).
func (s *Server) PID() int { return s.proc.PID() }

// Stop ends the server by its process id: SIGTERM, then SIGKILL after 5 s.
func (s *Server) Stop() {
	if s == nil {
		return
	}
	s.proc.Stop()
}

// Client is a minio-go client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(versitygw.AccessKey, versitygw.SecretKey, ""),
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
		"SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID=" + versitygw.AccessKey,
		"SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY=" + versitygw.SecretKey,
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
