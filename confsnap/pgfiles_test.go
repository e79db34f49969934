package confsnap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/synbak/synbak/internal/synapse"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, body := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A Debian layout: the settings under etc/, includes in every form
// PostgreSQL accepts (relative, absolute, nested, include_dir with files it
// skips, a cycle, a missing include_if_exists), files inside the data
// directory left to the base backup.
func TestPostgresFileList(t *testing.T) {
	root := t.TempDir()
	etc := filepath.Join(root, "etc/postgresql/15/main")
	data := filepath.Join(root, "var/lib/postgresql/15/main")
	writeFiles(t, root, map[string]string{
		"etc/postgresql/15/main/postgresql.conf": "# Debian\n" +
			"data_directory = '" + data + "'\t# use data in another directory\n" +
			"hba_file = '" + etc + "/pg_hba.conf'\n" +
			"include_dir = 'conf.d'   # include files ending in '.conf'\n" +
			"#include = 'commented.conf'\n" +
			"include_if_exists 'missing.conf'\n" +
			"include '" + root + "/shared/tuning.conf'\n" +
			"INCLUDE = 'it''s.conf'\n" +
			"include = '" + data + "/in-pgdata.conf'\n",
		"etc/postgresql/15/main/pg_hba.conf":               "local all postgres peer\n",
		"etc/postgresql/15/main/pg_ident.conf":             "",
		"etc/postgresql/15/main/start.conf":                "auto\n",
		"etc/postgresql/15/main/pg_ctl.conf":               "pg_ctl_options = ''\n",
		"etc/postgresql/15/main/environment":               "",
		"etc/postgresql/15/main/conf.d/20-b.conf":          "include 'nested/deeper.conf'\n",
		"etc/postgresql/15/main/conf.d/10-a.conf":          "work_mem = '8MB'\ninclude '20-b.conf'\n",
		"etc/postgresql/15/main/conf.d/.hidden.conf":       "x = 1\n",
		"etc/postgresql/15/main/conf.d/readme.txt":         "not a conf file\n",
		"etc/postgresql/15/main/conf.d/nested/deeper.conf": "include '../../postgresql.conf'\n", // a cycle
		"etc/postgresql/15/main/it's.conf":                 "",
		"shared/tuning.conf":                               "shared_buffers = 1GB\n",
		"var/lib/postgresql/15/main/in-pgdata.conf":        "",
	})
	got, problems := PostgresFileList(ServerSettings{
		ConfigFile: etc + "/postgresql.conf", HbaFile: etc + "/pg_hba.conf", IdentFile: etc + "/pg_ident.conf", DataDirectory: data,
	})
	if len(problems) > 0 {
		t.Errorf("problems: %v", problems)
	}
	want := []synapse.File{
		{Path: etc + "/postgresql.conf", Role: RolePGConfig},
		{Path: etc + "/pg_hba.conf", Role: RolePGHba},
		{Path: etc + "/pg_ident.conf", Role: RolePGIdent},
		{Path: etc + "/conf.d/10-a.conf", Role: RolePGInclude},
		{Path: etc + "/conf.d/20-b.conf", Role: RolePGInclude},
		{Path: etc + "/conf.d/nested/deeper.conf", Role: RolePGInclude},
		{Path: etc + "/missing.conf", Role: RolePGInclude},
		{Path: root + "/shared/tuning.conf", Role: RolePGInclude},
		{Path: etc + "/it's.conf", Role: RolePGInclude},
		{Path: etc + "/start.conf", Role: RolePGCluster},
		{Path: etc + "/pg_ctl.conf", Role: RolePGCluster},
		{Path: etc + "/environment", Role: RolePGCluster},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}

	// The default layout: everything inside the data directory, nothing
	// to hold.
	got, _ = PostgresFileList(ServerSettings{ConfigFile: data + "/postgresql.conf", HbaFile: data + "/pg_hba.conf", IdentFile: data + "/pg_ident.conf", DataDirectory: data})
	if len(got) != 0 {
		t.Errorf("files inside the data directory listed: %v", got)
	}
}

func TestParseConfLine(t *testing.T) {
	for _, c := range []struct {
		line, key, val string
		ok             bool
	}{
		{"include 'a.conf'", "include", "a.conf", true},
		{"  include_dir='conf.d' # comment", "include_dir", "conf.d", true},
		{"include = bare.conf#c", "include", "bare.conf", true},
		{`include 'it\'s.conf'`, "include", "it's.conf", true},
		{"# include 'x'", "", "", false},
		{"", "", "", false},
		{"include 'unterminated", "include", "", false},
	} {
		k, v, ok := parseConfLine(c.line)
		if k != c.key || v != c.val || ok != c.ok {
			t.Errorf("parseConfLine(%q) = %q %q %v, want %q %q %v", c.line, k, v, ok, c.key, c.val, c.ok)
		}
	}
}

// A server that cannot be asked (no privilege, unreachable) keeps the
// PostgreSQL files of the repository's last snapshot in the list, and the
// last answer once it had one.
func TestPostgresFilesKeepsTheLastList(t *testing.T) {
	ctx := context.Background()
	r := newTestRepo(t)
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"etc/pg/postgresql.conf": "", "etc/pg/pg_hba.conf": "", "data/PG_VERSION": "15\n"})
	s := ServerSettings{ConfigFile: root + "/etc/pg/postgresql.conf", HbaFile: root + "/etc/pg/pg_hba.conf", DataDirectory: root + "/data"}
	fail := errors.New("permission denied to examine config_file")
	var answer func() (ServerSettings, error)
	settings := func(context.Context) (ServerSettings, error) { return answer() }

	answer = func() (ServerSettings, error) { return s, nil }
	first := NewPostgresFiles(settings, r, nil, 0).Files(ctx)
	if len(first) != 2 {
		t.Fatalf("files %v, want postgresql.conf and pg_hba.conf", first)
	}
	if _, err := Snapshot(ctx, r, first, nil, nil); err != nil {
		t.Fatal(err)
	}

	answer = func() (ServerSettings, error) { return ServerSettings{}, fail }
	p := NewPostgresFiles(settings, r, nil, 0)
	if got := p.Files(ctx); !cmp.Equal(got, first) {
		t.Errorf("without the server at start: %v, want the last snapshot's %v", got, first)
	}
	if got := NewPostgresFiles(settings, nil, nil, 0).Files(ctx); len(got) != 0 {
		t.Errorf("without the server or a repository: %v", got)
	}
	answer = func() (ServerSettings, error) { return s, nil }
	p2 := NewPostgresFiles(settings, r, nil, -1)
	p2.maxAge = 0 // ask every time
	p2.Files(ctx)
	answer = func() (ServerSettings, error) { return ServerSettings{}, fail }
	if got := p2.Files(ctx); !cmp.Equal(got, first) {
		t.Errorf("after the server stopped answering: %v, want %v", got, first)
	}
	// A server elsewhere: its paths are not here.
	answer = func() (ServerSettings, error) {
		return ServerSettings{ConfigFile: "/nonexistent/pg/postgresql.conf", DataDirectory: "/nonexistent/data"}, nil
	}
	if got := NewPostgresFiles(settings, nil, nil, 0).Files(ctx); len(got) != 0 {
		t.Errorf("a remote server's files: %v", got)
	}
}

func TestServerFiles(t *testing.T) {
	m := Manifest{Files: []ManifestFile{
		{Path: "/etc/matrix-synapse/homeserver.yaml", Role: "config"},
		{Path: "/etc/postgresql/15/main/postgresql.conf", Role: RolePGConfig},
		{Path: "/etc/postgresql/15/main/pg_hba.conf", Role: RolePGHba},
	}}
	c, h := ServerFiles(m)
	if c != "/etc/postgresql/15/main/postgresql.conf" || h != "/etc/postgresql/15/main/pg_hba.conf" {
		t.Errorf("ServerFiles = %q %q", c, h)
	}
	if c, h := ServerFiles(Manifest{}); c != "" || h != "" {
		t.Errorf("ServerFiles of nothing = %q %q", c, h)
	}
}
