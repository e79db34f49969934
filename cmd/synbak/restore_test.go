package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
)

func TestParseTargetTime(t *testing.T) {
	want := time.Date(2026, 11, 24, 10, 15, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
		err  string // a substring of the error; "" for success
	}{
		{in: "2026-11-24T10:15:00Z", want: want},
		{in: "2026-11-24T11:15:00+01:00", want: want},
		{in: "2026-11-24T11:15:00.123456+01:00", want: want.Add(123456 * time.Microsecond)},
		{in: "2026-11-24 10:15:00+00", want: want},
		{in: "2026-11-24 10:15:00+00:00", want: want},
		{in: "2026-11-24 12:15:00.5+02", want: want.Add(500 * time.Millisecond)},
		{in: "2026-11-24 10:15:00 UTC", want: want},
		{in: "2026-11-24 10:15:00.25 UTC", want: want.Add(250 * time.Millisecond)},
		{in: "2026-11-24 10:15:00", err: "no time zone"},
		{in: "2026-11-24T10:15:00", err: "no time zone"},
		{in: "2026-11-24T10:15:00.123", err: "no time zone"},
		{in: "yesterday", err: "RFC 3339"},
		{in: "2026-11-24 10:15:00 CET", err: "RFC 3339"},
		{in: "", err: "RFC 3339"},
	} {
		got, err := parseTargetTime(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("parseTargetTime(%q): %v", tc.in, err)
		case tc.err == "" && !got.Equal(tc.want):
			t.Errorf("parseTargetTime(%q) = %s, want %s", tc.in, got, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseTargetTime(%q) = %s, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

func TestRestoreCommandLine(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	b, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := repo.Init(context.Background(), b, repo.Options{Compression: "zstd", ZstdLevel: 1}); err != nil {
		t.Fatal(err)
	}
	pgdata := filepath.Join(dir, "data")
	env := map[string]string{"SYNBAK_REPOSITORY_PATH": repoDir}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"restore", "--pgdata", pgdata, "--target-time", "2026-11-24 10:15:00"}, 2, "no time zone"},
		{[]string{"restore", "--pgdata", pgdata}, 2, "exactly one of"},
		{[]string{"restore", "--pgdata", pgdata, "--latest", "--target-lsn", "0/1"}, 2, "exactly one of"},
		{[]string{"restore", "--latest"}, 2, "--pgdata"},
		{[]string{"restore", "--pgdata", pgdata, "--target-lsn", "zz"}, 2, "X/X"},
		{[]string{"restore", "--pgdata", pgdata, "--latest", "--port", "70000"}, 2, "--port 70000"},
		{[]string{"restore", "--pgdata", pgdata, "--latest", "--port", "-1", "--dry-run"}, 2, "--port -1"},
		// An empty repository: the dry run refuses, exit 1, writes nothing.
		{[]string{"restore", "--pgdata", pgdata, "--latest", "--dry-run"}, 1, "no complete base backup"},
	} {
		code, _, stderr := runCLI(t, env, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d, %q; want %d with %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
	if _, err := os.Stat(pgdata); err == nil {
		t.Error("a refused restore created --pgdata")
	}
}
