package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/s3/s3test"
)

// s3Env is the environment of a synbak run against srv: the endpoint and
// credentials as SYNBAK_* variables, and no PostgreSQL.
func s3Env(t *testing.T, srv *s3test.Server) map[string]string {
	return map[string]string{
		"SYNBAK_REPOSITORY_S3_ENDPOINT":          srv.Endpoint,
		"SYNBAK_REPOSITORY_S3_INSECURE":          "true",
		"SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID":     s3test.AccessKey,
		"SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY": s3test.SecretKey,
		"SYNBAK_SYNAPSE_CONFIG":                  filepath.Join(t.TempDir(), "absent.yaml"),
		"SYNBAK_STATE_DIR":                       t.TempDir(),
	}
}

func noSecretIn(t *testing.T, outs ...string) {
	t.Helper()
	for _, o := range outs {
		if strings.Contains(o, s3test.SecretKey) {
			t.Errorf("output contains the secret key:\n%s", o)
		}
	}
}

func TestS3InitAndList(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	env := s3Env(t, srv)
	url := "s3://" + bucket + "/synapse/prod"

	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", url, "init")
	if code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "created repository s3://"+bucket+"/synapse/prod at http://"+srv.Endpoint) {
		t.Errorf("init output:\n%s", stdout)
	}
	noSecretIn(t, stdout, stderr)
	// The metadata object is in the bucket under the prefix.
	n := 0
	for oi := range srv.Client(t).ListObjectsIter(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "synapse/prod/meta/", Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		n++
	}
	if n == 0 {
		t.Errorf("no repository metadata under synapse/prod/meta/ in bucket %s", bucket)
	}

	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", url, "init")
	if code != 0 || !strings.Contains(stdout, "already exists") {
		t.Fatalf("second init: exit %d: %s%s", code, stdout, stderr)
	}

	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", url, "list", "--json")
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, `"backups": []`) {
		t.Errorf("list --json of an empty repository:\n%s", stdout)
	}
	noSecretIn(t, stdout, stderr)

	// The credentials may also come from files.
	dir := t.TempDir()
	writeSecretFile(t, filepath.Join(dir, "id"), s3test.AccessKey+"\n")
	writeSecretFile(t, filepath.Join(dir, "secret"), s3test.SecretKey+"\n")
	fenv := s3Env(t, srv)
	delete(fenv, "SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID")
	delete(fenv, "SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY")
	fenv["SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID_FILE"] = filepath.Join(dir, "id")
	fenv["SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY_FILE"] = filepath.Join(dir, "secret")
	if code, _, stderr := runCLI(t, fenv, "-c", "/dev/null", "--repo", url, "list"); code != 0 {
		t.Fatalf("list with *_file credentials: exit %d: %s", code, stderr)
	}
}

func TestS3Errors(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	tests := []struct {
		name   string
		url    string
		env    map[string]string
		code   int
		wants  []string
		before func()
	}{
		{
			name:  "missing bucket",
			url:   "s3://no-such-bucket/p",
			code:  1,
			wants: []string{`bucket "no-such-bucket" does not exist at http://` + srv.Endpoint},
		},
		{
			name:  "wrong secret",
			url:   "s3://" + bucket + "/p",
			env:   map[string]string{"SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY": "wrong-secret-value"},
			code:  1,
			wants: []string{"s3://" + bucket + "/p at http://" + srv.Endpoint, "access denied", "check repository.s3.access_key_id"},
		},
		{
			name:  "no credentials",
			url:   "s3://" + bucket + "/p",
			env:   map[string]string{"SYNBAK_REPOSITORY_S3_ACCESS_KEY_ID": "", "SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY": ""},
			code:  2,
			wants: []string{"no S3 credentials", "AWS_ACCESS_KEY_ID"},
		},
		{
			name:  "no endpoint",
			url:   "s3://" + bucket + "/p",
			env:   map[string]string{"SYNBAK_REPOSITORY_S3_ENDPOINT": ""},
			code:  2,
			wants: []string{"set repository.s3.endpoint"},
		},
		{
			name:  "unreachable endpoint",
			url:   "s3://" + bucket + "/p",
			env:   map[string]string{"SYNBAK_REPOSITORY_S3_ENDPOINT": closedPort(t)},
			code:  1,
			wants: []string{"cannot reach the S3 server", "storage unreachable"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := s3Env(t, srv)
			for k, v := range tt.env {
				env[k] = v
			}
			for _, cmd := range []string{"list", "init"} {
				code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", tt.url, cmd)
				if code != tt.code {
					t.Errorf("%s: exit %d, want %d: %s", cmd, code, tt.code, stderr)
				}
				for _, w := range tt.wants {
					if !strings.Contains(stderr, w) {
						t.Errorf("%s: error lacks %q:\n%s", cmd, w, stderr)
					}
				}
				noSecretIn(t, stdout, stderr)
			}
			// Nothing was written.
			for oi := range srv.Client(t).ListObjectsIter(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
				t.Errorf("object %q written (%v)", oi.Key, oi.Err)
			}
		})
	}
}

func TestS3ConfigCheckRedacts(t *testing.T) {
	srv := s3test.Start(t)
	env := s3Env(t, srv)
	env["SYNBAK_SYNAPSE_WORKDIR"] = t.TempDir()
	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--homeserver", "../../examples/homeserver.yaml",
		"--repo", "s3://"+srv.NewBucket(t)+"/p", "config", "check")
	if code != 0 {
		t.Fatalf("config check: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "s3://") {
		t.Errorf("config check does not show the repository URL:\n%s", stdout)
	}
	noSecretIn(t, stdout, stderr)
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	srv := s3test.Start(t)
	srv.Stop()
	return srv.Endpoint
}

func writeSecretFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestS3WALFetchExitCodes: against S3, a missing segment is exit 1 (the end
// of the archive), while a missing bucket, refused credentials or an
// unreachable server are 255, which stops recovery instead of promoting.
func TestS3WALFetchExitCodes(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	b := srv.Backend(t, "wal-repo")
	r, _, err := repo.Init(ctx, b, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const seg = "000000010000000000000003"
	content := fakeSegment(t, seg)
	if _, err := r.Put(ctx, "wal/settings.json", strings.NewReader(`{"system_id":"1","segment_size":1048576}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "wal/00000001/"+seg, bytes.NewReader(content), nil); err != nil {
		t.Fatal(err)
	}
	url := strings.TrimSuffix(b.String(), " at http://"+srv.Endpoint)
	dir := t.TempDir()
	fetch := func(env map[string]string, url, file string) (int, string) {
		code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", url, "wal-fetch", file, filepath.Join(dir, "out"))
		noSecretIn(t, stdout, stderr)
		return code, stderr
	}
	env := s3Env(t, srv)
	if code, stderr := fetch(env, url, seg); code != 0 {
		t.Fatalf("archived segment: exit %d: %s", code, stderr)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "out")); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("fetched content differs (%v)", err)
	}
	if code, stderr := fetch(env, url, "000000010000000000000004"); code != 1 {
		t.Errorf("missing segment: exit %d, want 1: %s", code, stderr)
	}
	if code, stderr := fetch(env, "s3://no-such-bucket/wal-repo", seg); code != 255 {
		t.Errorf("missing bucket: exit %d, want 255: %s", code, stderr)
	}
	bad := s3Env(t, srv)
	bad["SYNBAK_REPOSITORY_S3_SECRET_ACCESS_KEY"] = "wrong-secret-value"
	if code, stderr := fetch(bad, url, seg); code != 255 {
		t.Errorf("wrong secret: exit %d, want 255: %s", code, stderr)
	}
	srv.Stop()
	if code, stderr := fetch(env, url, "000000010000000000000004"); code != 255 {
		t.Errorf("server down: exit %d, want 255: %s", code, stderr)
	}
}
