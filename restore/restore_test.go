package restore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/synbak/synbak/basebackup"
)

func TestWriteRecoveryConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "postgresql.auto.conf"), []byte("work_mem = '8MB'\nprimary_conninfo = 'host=old-primary'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A backup of a standby carries standby.signal.
	if err := os.WriteFile(filepath.Join(dir, "standby.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteRecoveryConfig(dir, `/usr/bin/synbak -c '/etc/it's.yaml' wal-fetch %f %p`, Target{Time: "2026-11-24 10:15:00+00"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"work_mem = '8MB'\n",
		`restore_command = '/usr/bin/synbak -c ''/etc/it''s.yaml'' wal-fetch %f %p'` + "\n",
		"recovery_target_time = '2026-11-24 10:15:00+00'\n",
		"recovery_target_action = 'promote'\n",
		"recovery_target_timeline = 'latest'\n",
		"primary_conninfo = ''\n",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("postgresql.auto.conf lacks %q:\n%s", want, got)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "recovery.signal")); err != nil || fi.Size() != 0 {
		t.Errorf("recovery.signal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "standby.signal")); !os.IsNotExist(err) {
		t.Errorf("standby.signal left in place (%v): recovery would never end", err)
	}
	if strings.LastIndex(string(got), "primary_conninfo = ''") < strings.Index(string(got), "host=old-primary") {
		t.Error("the standby's primary_conninfo is not overridden")
	}
	if err := WriteRecoveryConfig(dir, "x", Target{Time: "t", LSN: "0/1"}, nil); err == nil {
		t.Error("two targets accepted")
	}
}

func TestTablespaceMap(t *testing.T) {
	got := tablespaceMap(map[uint32]string{16385: `/srv/a\b`})
	if want := "16385 /srv/a\\\\b\n"; got != want {
		t.Errorf("tablespaceMap = %q, want %q", got, want)
	}
}

func TestExtractRefusesBadTargets(t *testing.T) {
	dir := t.TempDir()
	pgdata := filepath.Join(dir, "data")
	b := basebackup.Backup{ID: "x", Archives: []basebackup.Archive{{Name: "base.tar"}, {Name: "16385.tar", TablespaceOID: 16385}}}
	err := Extract(context.Background(), nil, b, pgdata, ExtractOptions{TablespaceDirs: map[uint32]string{16385: filepath.Join(pgdata, "ts")}}, nil)
	if err == nil || !strings.Contains(err.Error(), "inside the data directory") {
		t.Errorf("tablespace inside pgdata: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(pgdata, "PG_VERSION"), 0o700); err != nil {
		t.Fatal(err)
	}
	err = Extract(context.Background(), nil, b, pgdata, ExtractOptions{}, nil)
	if !IsNotEmpty(err) || !strings.Contains(err.Error(), pgdata) {
		t.Errorf("non-empty pgdata: %v, want IsNotEmpty naming %s", err, pgdata)
	}
	if _, err := os.Stat(TablespaceDir(pgdata, 16385)); err == nil {
		t.Error("a refused extract created the tablespace directory")
	}
}
