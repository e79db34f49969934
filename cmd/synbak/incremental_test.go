package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/synbak/synbak/internal/pgtest"
)

// TestBackupIncrementalFlags on the newest PostgreSQL of the matrix (17
// or later, summarize_wal on): `backup` without a flag takes a full backup
// into an empty repository and an incremental on top of it while the full
// is younger than basebackup.full_interval; `--full` a full one;
// `--incremental` builds on the newest whatever full_interval says (0
// here); both flags together are a usage error. `list` shows kind and
// parent, as a table and as JSON.
func TestBackupIncrementalFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	major := slices.Max(pgtest.MatrixMajorsFrom(t, 17))
	c := pgtest.Start(t, pgtest.Options{Major: major, InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"summarize_wal = on", "fsync = off"}})
	c.Exec(t, "postgres", "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g")
	// Frozen now, so that autovacuum does not rewrite every page between
	// the backups.
	c.Exec(t, "postgres", "VACUUM (FREEZE, ANALYZE) filler")
	dir := t.TempDir()
	env := map[string]string{
		"SYNBAK_POSTGRES_DSN": c.DSN("postgres"), "SYNBAK_REPOSITORY_PATH": filepath.Join(dir, "repo"),
		"SYNBAK_STATE_DIR": filepath.Join(dir, "state"), "SYNBAK_WAL_STATUS_INTERVAL": "200ms", "SYNBAK_HTTP_LISTEN": unusedAddr(t),
	}
	backup := func(extraEnv map[string]string, args ...string) string {
		t.Helper()
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range extraEnv {
			e[k] = v
		}
		code, stdout, stderr := runCLI(t, e, append([]string{"-c", "/dev/null", "backup"}, args...)...)
		if code != 0 {
			t.Fatalf("backup %v: exit %d\n%s", args, code, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	full := backup(nil)
	c.Exec(t, "postgres", "UPDATE filler SET h = 'x' WHERE g % 1000 = 0")
	inc := backup(nil)
	full2 := backup(nil, "--full")
	inc2 := backup(map[string]string{"SYNBAK_BASEBACKUP_FULL_INTERVAL": "0"}, "--incremental")
	if code, _, stderr := runCLI(t, env, "-c", "/dev/null", "backup", "--full", "--incremental"); code != 2 || !strings.Contains(stderr, "full") {
		t.Errorf("backup --full --incremental: exit %d, %s; want 2", code, stderr)
	}

	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "list", "--json")
	var l listing
	if code != 0 || json.Unmarshal([]byte(stdout), &l) != nil {
		t.Fatalf("list --json: exit %d\n%s%s", code, stdout, stderr)
	}
	type row struct{ id, kind, parent string }
	want := []row{{full, "full", ""}, {inc, "incremental", full}, {full2, "full", ""}, {inc2, "incremental", full2}}
	if len(l.Backups) != len(want) {
		t.Fatalf("list --json: %d backups, want %d", len(l.Backups), len(want))
	}
	for i, w := range want {
		b := l.Backups[i]
		if (row{b.ID, b.Kind, b.Parent}) != w {
			t.Errorf("backup %d: %s %s on %q, want %s %s on %q", i, b.ID, b.Kind, b.Parent, w.id, w.kind, w.parent)
		}
	}
	if l.Backups[1].StoredSize*3 > l.Backups[0].StoredSize {
		t.Errorf("the incremental stores %d bytes, the full %d", l.Backups[1].StoredSize, l.Backups[0].StoredSize)
	}
	code, stdout, _ = runCLI(t, env, "-c", "/dev/null", "list")
	if code != 0 || !strings.Contains(stdout, "KIND") || !strings.Contains(stdout, inc+"  incremental  "+full) {
		t.Errorf("list: exit %d, want the incremental row with its parent:\n%s", code, stdout)
	}
}
