package pgtest

import (
	"path/filepath"
	"testing"
)

func TestStartDebian(t *testing.T) {
	d := StartDebian(t, Options{})
	for setting, want := range map[string]string{
		"config_file":    filepath.Join(d.ConfigDir, "postgresql.conf"),
		"hba_file":       filepath.Join(d.ConfigDir, "pg_hba.conf"),
		"ident_file":     filepath.Join(d.ConfigDir, "pg_ident.conf"),
		"data_directory": d.PGData,
		"work_mem":       "8MB", // from conf.d
	} {
		if got := d.Text(t, "postgres", "SHOW "+setting); got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(d.PGData, "*.conf")); len(m) != 1 || filepath.Base(m[0]) != "postgresql.auto.conf" {
		t.Errorf("settings files in the data directory: %v, want postgresql.auto.conf only", m)
	}
}
