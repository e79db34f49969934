package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Debian is a cluster laid out the way Debian's postgresql-common lays one
// out: the data directory holds no settings; postgresql.conf, pg_hba.conf,
// pg_ident.conf, conf.d/ and pg_ctlcluster's start.conf, pg_ctl.conf and
// environment live in a separate configuration directory, and
// postgresql.conf names the data directory (data_directory), hba_file and
// ident_file, and includes conf.d (include_dir). The server is started as
// `postgres -D ConfigDir`, so Cluster.DataDir is ConfigDir: the harness's
// settings (pgtest.conf) and its pg_hba.conf go there too.
type Debian struct {
	*Cluster
	// ConfigDir stands for /etc/postgresql/<version>/main.
	ConfigDir string
	// PGData stands for /var/lib/postgresql/<version>/main: the data
	// directory (SHOW data_directory).
	PGData string
}

// DebianConfD is the file StartDebian writes into ConfigDir/conf.d.
const DebianConfD = "conf.d/50-synapse.conf"

// StartDebian initdb's a cluster in the Debian layout (see Debian) under
// the cluster's directory (<root>/etc/postgresql/15/main and
// <root>/var/lib/postgresql/15/main) and starts it. Modes are Debian's:
// postgresql.conf, the conf.d file, start.conf, pg_ctl.conf and
// environment 0644, pg_hba.conf and pg_ident.conf 0640, all owned by the
// server's user. opts as for Start.
func StartDebian(t testing.TB, opts Options) *Debian {
	t.Helper()
	c := newCluster(t, opts)
	etc := filepath.Join(c.root, "etc", "postgresql", "15", "main")
	pgdata := filepath.Join(c.root, "var", "lib", "postgresql", "15", "main")
	for _, d := range []string{filepath.Dir(pgdata), filepath.Join(etc, "conf.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	for _, d := range []string{"etc", "var"} {
		if err := c.user.chownTree(filepath.Join(c.root, d)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	args := append([]string{"-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"}, opts.InitdbArgs...)
	if out, err := c.run(context.Background(), "initdb", args...); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	for _, name := range []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf"} {
		if err := os.Rename(filepath.Join(pgdata, name), filepath.Join(etc, name)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	conf, err := os.ReadFile(filepath.Join(etc, "postgresql.conf"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	conf = fmt.Appendf(conf, `
# Debian's file locations
data_directory = %s		# use data in another directory
hba_file = %s	# host-based authentication file
ident_file = %s	# ident configuration file
include_dir = 'conf.d'			# include files ending in '.conf' from
`, quote(pgdata), quote(filepath.Join(etc, "pg_hba.conf")), quote(filepath.Join(etc, "pg_ident.conf")))
	files := map[string]string{
		"postgresql.conf": string(conf),
		DebianConfD:       "# local settings for Synapse\nwork_mem = '8MB'\n",
		"start.conf":      "# Automatic startup configuration\nauto\n",
		"pg_ctl.conf":     "# Automatic pg_ctl configuration\npg_ctl_options = ''\n",
		"environment":     "# environment variables for the postgres process\n",
	}
	for name, body := range files {
		if err := c.writeFile(filepath.Join(etc, name), []byte(body)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	c.DataDir = etc
	c.configure(t, opts)
	for name, mode := range map[string]os.FileMode{
		"postgresql.conf": 0o644, DebianConfD: 0o644, "start.conf": 0o644, "pg_ctl.conf": 0o644, "environment": 0o644,
		"pg_hba.conf": 0o640, "pg_ident.conf": 0o640,
	} {
		if err := os.Chmod(filepath.Join(etc, name), mode); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	if err := c.start(true); err != nil {
		t.Fatalf("pgtest: start cluster: %v\n%s", err, c.logSection())
	}
	return &Debian{Cluster: c, ConfigDir: etc, PGData: pgdata}
}
