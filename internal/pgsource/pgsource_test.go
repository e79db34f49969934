package pgsource_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
)

func TestRedact(t *testing.T) {
	tests := map[string]string{
		"host=h password=hunter2 user=u":             "host=h password=REDACTED user=u",
		"host=h password='hun ter2' user=u":          "host=h password=REDACTED user=u",
		"host=h PASSWORD = hunter2":                  "host=h PASSWORD = REDACTED",
		"postgres://u:hunter2@h:5432/db?sslmode=off": "postgres://u:REDACTED@h:5432/db?sslmode=off",
		"postgresql://u@h/db?password=hunter2":       "postgresql://u@h/db?password=REDACTED",
		"host=h user=u":                              "host=h user=u",
	}
	for in, want := range tests {
		if got := pgsource.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReplicationWithoutPrivilegeSaysWhatToRun(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "postgres", "create role synapse_user login password 'pw-not-shown'")
	dsn := strings.Replace(c.DSN("postgres"), "user=postgres", "user=synapse_user password=pw-not-shown", 1)
	src := pgsource.Source{ConnString: dsn, Origin: "homeserver.yaml database master"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := src.ConnectReplication(ctx, "synbak")
	if err == nil {
		conn.Close(ctx)
		t.Fatal("a role without REPLICATION connected for replication")
	}
	if !pgsource.IsPrivilege(err) || !strings.Contains(err.Error(), `ALTER ROLE "synapse_user" REPLICATION`) {
		t.Fatalf("error does not say what to run: %v", err)
	}
	if strings.Contains(err.Error(), "pw-not-shown") {
		t.Fatalf("password in the error: %v", err)
	}
	// An ordinary connection works with the same settings.
	conn, err = src.Connect(ctx, "")
	if err != nil {
		t.Fatalf("ordinary connection: %v", err)
	}
	conn.Close(ctx)
}

func TestCheckVersion(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want bool // refused
	}{
		{"14.23", true},
		{"13.16 (Debian 13.16-1)", true},
		{"9.6.24", true},
		{"15.14", false},
		{"16.4 (Debian 16.4-1.pgdg120+1)", false},
		{"18beta1", false},
		{"", false},
		{"EnterpriseDB", false},
	} {
		err := pgsource.CheckVersion(tc.v)
		if got := pgsource.IsUnsupportedVersion(err); got != tc.want {
			t.Errorf("CheckVersion(%q) = %v, refused %v, want %v", tc.v, err, got, tc.want)
		}
		if tc.want && !strings.Contains(err.Error(), "PostgreSQL 15 or later") {
			t.Errorf("CheckVersion(%q): %v does not name the version needed", tc.v, err)
		}
	}
}
