package dump_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/synbak/synbak/dump"
)

// fakeInstall makes root/<major>/bin/<tool> scripts that print a version,
// as Debian's postgresql-client-N packages lay them out.
func fakeInstall(t *testing.T, root, tool string, versions ...string) {
	t.Helper()
	for _, v := range versions {
		major, _, _ := strings.Cut(v, ".")
		dir := filepath.Join(root, major, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		script := "#!/bin/sh\necho '" + tool + " (PostgreSQL) " + v + " (Debian " + v + "-1)'\n"
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindToolPicksTheServersMajorElseANewerOne(t *testing.T) {
	root := t.TempDir()
	fakeInstall(t, root, "pg_dump", "14.9", "15.4", "17.2")
	ctx := context.Background()
	for _, tc := range []struct {
		major int
		want  int
		err   string
	}{
		{15, 15, ""},
		{14, 14, ""},
		{16, 17, ""}, // no 16: a newer pg_dump reads older servers
		{17, 17, ""},
		{18, 0, "postgresql-client-18"},
	} {
		got, err := dump.FindTool(ctx, "pg_dump", tc.major, "", root)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !dump.IsTool(err) {
				t.Errorf("major %d: err = %v, want one naming %s", tc.major, err, tc.err)
			}
			continue
		}
		if err != nil || got.Major != tc.want || got.Path != filepath.Join(root, itoa(tc.want), "bin", "pg_dump") {
			t.Errorf("major %d: got %+v, %v; want version %d", tc.major, got, err, tc.want)
		}
	}
	// An explicit directory with an older tool is refused.
	if _, err := dump.FindTool(ctx, "pg_dump", 16, filepath.Join(root, "15", "bin"), root); err == nil || !strings.Contains(err.Error(), "older than the server") {
		t.Errorf("older tool in --pg-bindir: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
