package config

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"0", 0, false},
		{"90s", 90 * time.Second, false},
		{"24h", 24 * time.Hour, false},
		{"7d", 7 * 24 * time.Hour, false},
		{"1d12h", 36 * time.Hour, false},
		{"soon", 0, true},
		{"d", 0, true},
		{"3x", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err != nil) != tt.err || got.D() != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, error %v", tt.in, got.D(), err, tt.want, tt.err)
		}
	}
	if s := Duration(14 * 24 * time.Hour).String(); s != "14d" {
		t.Errorf("String() = %q, want 14d", s)
	}
	if s := Duration(90 * time.Second).String(); s != "1m30s" {
		t.Errorf("String() = %q, want 1m30s", s)
	}
}

func valid() Config {
	return Config{
		Repository:      Repository{Path: "/r", Compression: "zstd", ZstdLevel: 2},
		ShutdownTimeout: Duration(90 * time.Second),
		Postgres:        Postgres{Slot: "synbak"},
		WAL:             WAL{StatusInterval: Duration(10 * time.Second), PartialInterval: Duration(10 * time.Second), PrefetchSegments: 4},
		Retention:       Retention{Backups: 7},
		Basebackup:      Basebackup{Checkpoint: "fast", ServerCompression: "none", WALTimeout: Duration(10 * time.Minute), PartSizeMB: 1024},
		Dump:            Dump{PartSizeMB: 1024},
		Log:             Log{Level: "info", Format: "text"},
		Media:           Media{Thumbnails: "auto"},
		Health:          Health{ProbeInterval: Duration(10 * time.Second), Disconnected: Duration(time.Minute), SlotLagMB: 1024, MediaBacklog: Duration(10 * time.Minute), WALBacklog: Duration(2 * time.Minute)},
	}
}

func TestValidate(t *testing.T) {
	c := valid()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Repository.URL = "s3://b" }, "repository.path and repository.url are both set"},
		{func(c *Config) { c.Repository.Compression = "lz4" }, "repository.compression \"lz4\""},
		{func(c *Config) { c.Repository.ZstdLevel = 0 }, "repository.zstd_level 0"},
		{func(c *Config) { c.Postgres.Slot = "" }, "postgres.slot"},
		{func(c *Config) { c.Postgres.DSN, c.Postgres.DSNFile = "x", "y" }, "postgres.dsn and postgres.dsn_file"},
		{func(c *Config) { c.WAL.StatusInterval = Duration(time.Millisecond) }, "wal.status_interval"},
		{func(c *Config) { c.Basebackup.FullInterval = Duration(-time.Hour) }, "basebackup.full_interval"},
		{func(c *Config) { c.Retention.Backups = 0 }, "retention.backups 0"},
		{func(c *Config) { c.Log.Format = "xml" }, "log.format"},
		{func(c *Config) { c.ShutdownTimeout = Duration(100 * time.Millisecond) }, "shutdown_timeout 100ms"},
	}
	for _, tt := range tests {
		c := valid()
		tt.mutate(&c)
		err := c.Validate()
		if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate() = %v, want an invalid-configuration error containing %q", err, tt.want)
		}
	}
	// Every default is a valid configuration once a repository is set.
	if _, ok := Defaults()["repository.path"]; !ok {
		t.Fatal("defaults lack repository.path")
	}
}

func TestResolveDSNFromFileNeverEchoesContent(t *testing.T) {
	c := valid()
	c.Postgres.DSNFile = t.TempDir() + "/missing"
	_, err := c.ResolveDSN()
	if err == nil || !IsInvalid(err) {
		t.Fatalf("missing dsn_file: %v", err)
	}
}

func validS3() Config {
	c := valid()
	c.Repository.Path = ""
	c.Repository.URL = "s3://synbak-backups/matrix/prod"
	c.Repository.S3 = S3{Endpoint: "minio.example.org:9000", AccessKeyID: "id", SecretAccessKey: "s3cr3t-value", PathStyle: true}
	return c
}

func TestValidateS3(t *testing.T) {
	c := validS3()
	if err := repositoryErr(c.Validate()); err != "" {
		t.Fatalf("valid S3 config: %s", err)
	}
	bucket, prefix, err := c.Repository.S3Location()
	if err != nil || bucket != "synbak-backups" || prefix != "matrix/prod" {
		t.Fatalf("S3Location = %q, %q, %v", bucket, prefix, err)
	}
	for _, u := range []string{"s3://bkt", "s3://bkt/", "s3://my.bucket-1/a/b/"} {
		c := validS3()
		c.Repository.URL = u
		if err := repositoryErr(c.Validate()); err != "" {
			t.Errorf("%s: %s", u, err)
		}
	}
	tests := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Repository.URL = "https://bkt/x" }, "want s3://bucket[/prefix]"},
		{func(c *Config) { c.Repository.URL = "s3://Bucket_Upper" }, `bucket "Bucket_Upper"`},
		{func(c *Config) { c.Repository.URL = "s3://ab" }, `bucket "ab"`},
		{func(c *Config) { c.Repository.URL = "s3://bkt/a//b" }, "empty, . or .. element"},
		{func(c *Config) { c.Repository.URL = "s3://bkt/a/../b" }, "empty, . or .. element"},
		{func(c *Config) { c.Repository.URL = "s3://bkt?x=1" }, "without ? or #"},
		{func(c *Config) { c.Repository.URL = "s3://id:hunter2@bkt/p" }, "credentials do not belong in the URL"},
		{func(c *Config) { c.Repository.S3.Endpoint = "" }, "set repository.s3.endpoint"},
		{func(c *Config) { c.Repository.S3.Endpoint, c.Repository.S3.Insecure = "https://x", true }, "insecure"},
		{func(c *Config) { c.Repository.S3.Endpoint = "ftp://x" }, "repository.s3.endpoint: want host[:port]"},
		{func(c *Config) { c.Repository.S3.Endpoint = "http://id:hunter2@x" }, "credentials do not belong in the endpoint"},
		{func(c *Config) { c.Repository.S3.AccessKeyIDFile = "/f" }, "access_key_id and repository.s3.access_key_id_file are both set"},
		{func(c *Config) { c.Repository.S3.SecretAccessKeyFile = "/f" }, "secret_access_key and repository.s3.secret_access_key_file are both set"},
		{func(c *Config) { c.Repository.Path = "/r" }, "repository.path and repository.url are both set"},
	}
	for _, tt := range tests {
		c := validS3()
		tt.mutate(&c)
		err := c.Validate()
		if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate() = %v, want an invalid-configuration error containing %q", err, tt.want)
		}
		if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cr3t")) {
			t.Errorf("error shows a secret: %v", err)
		}
	}
}

// repositoryErr returns the lines of err about the repository: the S3 tests
// need not change with the validation of other sections.
func repositoryErr(err error) string {
	if err == nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.Contains(l, "repository") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

func TestS3Credentials(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	awsEnv := func(k string) (string, bool) {
		v, ok := map[string]string{"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret"}[k]
		return v, ok
	}
	c := validS3()
	if id, secret, err := c.Repository.S3Credentials(awsEnv); err != nil || id != "id" || secret != "s3cr3t-value" {
		t.Errorf("configured keys: %q, %q, %v", id, secret, err)
	}
	c.Repository.S3.AccessKeyID, c.Repository.S3.SecretAccessKey = "", ""
	if id, secret, err := c.Repository.S3Credentials(awsEnv); err != nil || id != "env-id" || secret != "env-secret" {
		t.Errorf("AWS_* environment: %q, %q, %v", id, secret, err)
	}
	_, _, err := c.Repository.S3Credentials(noEnv)
	if !IsInvalid(err) || !strings.Contains(err.Error(), "no S3 credentials") || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("no credentials: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/id", []byte("file-id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/secret", []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Repository.S3.AccessKeyIDFile, c.Repository.S3.SecretAccessKeyFile = dir+"/id", dir+"/secret"
	if id, secret, err := c.Repository.S3Credentials(awsEnv); err != nil || id != "file-id" || secret != "file-secret-value" {
		t.Errorf("*_file: %q, %q, %v", id, secret, err)
	}
	c.Repository.S3.SecretAccessKeyFile = dir + "/missing"
	if _, _, err := c.Repository.S3Credentials(awsEnv); !IsInvalid(err) || !strings.Contains(err.Error(), "secret_access_key_file") {
		t.Errorf("missing secret file: %v", err)
	}
	// Printing the configuration never shows the secret.
	c = validS3()
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, c); strings.Contains(out, "s3cr3t") {
			t.Errorf("Sprintf(%s, config) shows the secret: %s", f, out)
		}
	}
}

func TestS3DefaultsAreKeys(t *testing.T) {
	d := Defaults()
	for _, k := range []string{"endpoint", "region", "access_key_id", "access_key_id_file", "secret_access_key", "secret_access_key_file", "insecure", "path_style"} {
		if _, ok := d["repository.s3."+k]; !ok {
			t.Errorf("Defaults() lacks repository.s3.%s", k)
		}
	}
}
