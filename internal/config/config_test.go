package config

import (
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
		Repository: Repository{Path: "/r", Compression: "zstd", ZstdLevel: 2},
		Postgres:   Postgres{Slot: "synbak"},
		WAL:        WAL{StatusInterval: Duration(10 * time.Second), PartialInterval: Duration(10 * time.Second), PrefetchSegments: 4},
		Retention:  Retention{Backups: 7},
		Basebackup: Basebackup{Checkpoint: "fast", ServerCompression: "none", WALTimeout: Duration(10 * time.Minute), PartSizeMB: 1024},
		Log:        Log{Level: "info", Format: "text"},
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
		{func(c *Config) { c.Retention.Backups = 0 }, "retention.backups 0"},
		{func(c *Config) { c.Log.Format = "xml" }, "log.format"},
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
