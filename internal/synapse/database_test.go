package synapse

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgconn"
)

// clearPGEnv keeps libpq environment variables out of pgconn.ParseConfig.
func clearPGEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGAPPNAME", "PGOPTIONS", "PGCONNECT_TIMEOUT"} {
		t.Setenv(v, "")
	}
}

func TestConnStringRoundTrip(t *testing.T) {
	clearPGEnv(t)
	tests := []struct {
		name     string
		password string
		user     string
		dbname   string
	}{
		{"plain", "hunter2", "synapse", "synapse"},
		{"space", "two words", "synapse", "synapse"},
		{"single quote", "it's", "o'brien", "synapse"},
		{"backslash", `back\slash\`, "synapse", `db\name`},
		{"quote and backslash", `\'x\'`, "synapse", "synapse"},
		{"equals and hash", "a=b#c", "synapse", "synapse"},
		{"tab and newline", "a\tb\nc", "synapse", "my db"},
		{"empty", "", "synapse", "synapse"},
		{"unicode", "pässwörd ✓", "synapse", "synapse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Database{Name: "master", Params: map[string]string{
				"host": "db.internal", "port": "6432", "user": tt.user, "password": tt.password,
				"dbname": tt.dbname, "sslmode": "disable", "application_name": "syn bak",
			}}
			cs := d.ConnString()
			cfg, err := pgconn.ParseConfig(cs)
			if err != nil {
				t.Fatalf("ParseConfig(ConnString()): %v", err)
			}
			got := map[string]string{
				"host": cfg.Host, "user": cfg.User, "password": cfg.Password,
				"dbname": cfg.Database, "application_name": cfg.RuntimeParams["application_name"],
			}
			want := map[string]string{
				"host": "db.internal", "user": tt.user, "password": tt.password,
				"dbname": tt.dbname, "application_name": "syn bak",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip of %q (-want +got):\n%s", cs, diff)
			}
			if cfg.Port != 6432 {
				t.Errorf("Port = %d, want 6432", cfg.Port)
			}
			if cfg.TLSConfig != nil {
				t.Error("sslmode=disable lost: TLSConfig set")
			}

			red := d.Redacted()
			if tt.password != "" && strings.Contains(red, tt.password) {
				t.Errorf("Redacted() = %q shows the password", red)
			}
			rcfg, err := pgconn.ParseConfig(red)
			if err != nil {
				t.Fatalf("ParseConfig(Redacted()): %v", err)
			}
			if rcfg.Password != "REDACTED" || rcfg.User != tt.user || rcfg.Database != tt.dbname {
				t.Errorf("Redacted() parses to password %q user %q dbname %q", rcfg.Password, rcfg.User, rcfg.Database)
			}
		})
	}
}

func TestConnStringFromFixture(t *testing.T) {
	clearPGEnv(t)
	h, err := Load([]string{"testdata/full.yaml"}, "/srv")
	if err != nil {
		t.Fatal(err)
	}
	d := h.MainDatabase()
	want := `host=db.internal port=5432 dbname=synapse user=synapse_user password='s3cr3t pass\'word\\x' keepalives_idle=10 sslmode=verify-full`
	if got := d.ConnString(); got != want {
		t.Errorf("ConnString() =\n %s\nwant\n %s", got, want)
	}
	wantRed := `host=db.internal port=5432 dbname=synapse user=synapse_user password=REDACTED keepalives_idle=10 sslmode=verify-full`
	if got := d.Redacted(); got != wantRed {
		t.Errorf("Redacted() =\n %s\nwant\n %s", got, wantRed)
	}
	cfg, err := pgconn.ParseConfig(d.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != `s3cr3t pass'word\x` || cfg.User != "synapse_user" || cfg.Database != "synapse" || cfg.Host != "db.internal" || cfg.Port != 5432 {
		t.Errorf("parsed: host %q port %d user %q dbname %q", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	}
	for _, d := range h.Databases {
		if strings.Contains(d.Redacted(), "s3cr3t") {
			t.Errorf("Redacted() shows the password: %s", d.Redacted())
		}
	}
}

func TestRedactedSSLPassword(t *testing.T) {
	d := Database{Params: map[string]string{"sslpassword": "keypass", "password": "pw", "dbname": "x"}}
	if r := d.Redacted(); strings.Contains(r, "keypass") || strings.Contains(r, "=pw") {
		t.Errorf("Redacted() = %q", r)
	}
}

func TestParseConnInfo(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"host=h port=1 dbname=d", map[string]string{"host": "h", "port": "1", "dbname": "d"}},
		{`  password='a \'b\' c' user = u database=x `, map[string]string{"password": "a 'b' c", "user": "u", "dbname": "x"}},
		{`password=a\ b`, map[string]string{"password": "a b"}},
		{"postgresql://u:p%40ss@h1:5433,h2/db%20name?sslmode=require",
			map[string]string{"user": "u", "password": "p@ss", "host": "h1,h2", "port": "5433,", "dbname": "db name", "sslmode": "require"}},
		{"postgres://[::1]:5432/synapse", map[string]string{"host": "::1", "port": "5432", "dbname": "synapse"}},
		{"postgres:///synapse?host=/var/run/postgresql", map[string]string{"host": "/var/run/postgresql", "dbname": "synapse"}},
	}
	for _, tt := range tests {
		got, err := parseConnInfo(tt.in)
		if err != nil {
			t.Errorf("parseConnInfo(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("parseConnInfo(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
	for _, bad := range []string{"password='unterminated", "novalue", "bad key=1"} {
		_, err := parseConnInfo(bad)
		if err == nil {
			t.Errorf("parseConnInfo(%q) succeeded, want an error", bad)
			continue
		}
		if strings.Contains(err.Error(), "unterminated'") || strings.Contains(err.Error(), bad) {
			t.Errorf("error %q quotes the input", err)
		}
	}
}
