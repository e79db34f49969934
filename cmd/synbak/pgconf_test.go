package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
)

// TestDebianClusterSettings: a cluster whose postgresql.conf, pg_hba.conf,
// pg_ident.conf and conf.d/ live in an /etc-like directory outside its data
// directory, as on Debian. The agent's config snapshots hold them (and
// follow a changed and a new conf.d file); `restore --latest --config-dir`
// gives them back with their content, mode and owner, and the manifest
// says which were the server's config_file and hba_file. A role without
// pg_read_all_settings gets an error that says what to grant.
func TestDebianClusterSettings(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PostgreSQL and the agent")
	}
	ctx := context.Background()
	d := pgtest.StartDebian(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	d.CreateDB(t, "synapse")
	d.CreateSynapseSchema(t, "synapse")
	d.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")

	// Privileges: SHOW config_file needs pg_read_all_settings.
	d.CreatePasswordRole(t, "synapse_user", "pw")
	plain := pgsource.Source{ConnString: fmt.Sprintf("host=127.0.0.1 port=%d user=synapse_user password=pw dbname=postgres sslmode=disable", d.Port), Origin: "test"}
	_, err := serverSettings(plain)(ctx)
	if !pgsource.IsPrivilege(err) || !strings.Contains(err.Error(), `GRANT pg_read_all_settings TO "synapse_user"`) {
		t.Errorf("settings as a role without pg_read_all_settings: %v; want a privilege error saying what to grant", err)
	}
	d.Exec(t, "postgres", "GRANT pg_read_all_settings TO synapse_user")
	if s, err := serverSettings(plain)(ctx); err != nil || s.ConfigFile != filepath.Join(d.ConfigDir, "postgresql.conf") || s.DataDirectory != d.PGData {
		t.Errorf("settings with pg_read_all_settings: %+v, %v", s, err)
	}

	dir := pgtest.ServerDir(t)
	s := &agentSite{
		c: d.Cluster, bin: pgtest.SynbakBinary(t), dir: dir,
		hsFile: filepath.Join(dir, "synapse", "homeserver.yaml"), media: filepath.Join(dir, "synapse", "media_store"),
		repoDir: filepath.Join(dir, "repo"), stateDir: filepath.Join(dir, "state"),
	}
	if err := os.MkdirAll(s.media, 0o755); err != nil {
		t.Fatal(err)
	}
	s.writeHomeserver(t, "# debian\n")
	seed := make([]byte, 32)
	rand.Read(seed)
	if err := os.WriteFile(filepath.Join(dir, "synapse", "test.example.signing.key"), fmt.Appendf(nil, "ed25519 a_test %s\n", base64.RawStdEncoding.EncodeToString(seed)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.env = []string{
		"SYNBAK_SYNAPSE_CONFIG=" + s.hsFile, "SYNBAK_SYNAPSE_WORKDIR=" + filepath.Dir(s.hsFile),
		"SYNBAK_STATE_DIR=" + s.stateDir,
		"SYNBAK_HTTP_LISTEN=127.0.0.1:0", "SYNBAK_WAL_STATUS_INTERVAL=200ms", "SYNBAK_WAL_PARTIAL_INTERVAL=500ms",
		"SYNBAK_BASEBACKUP_INTERVAL=0", "SYNBAK_BASEBACKUP_PART_SIZE_MB=4",
		"SYNBAK_HEALTH_PROBE_INTERVAL=200ms", "SYNBAK_MEDIA_QUIET_PERIOD=200ms",
	}
	s.repoEnv = []string{"SYNBAK_REPOSITORY_PATH=" + s.repoDir}

	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup, WAL streaming and a config snapshot", func() bool {
		st := s.status(t)
		return st.Backups != nil && st.Backups.Count == 1 && st.WAL.Streaming && st.Config != nil && st.Config.Files > 2
	})
	first := s.status(t).Config.Files

	// Change the conf.d file (as editors do: a new file renamed over it)
	// and add one: the watcher follows both.
	confd := filepath.Join(d.ConfigDir, pgtest.DebianConfD)
	tmp := confd + ".new"
	if err := os.WriteFile(tmp, []byte("# local settings for Synapse, tuned\nwork_mem = '16MB'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		t.Fatal(err)
	}
	pgtest.GiveToServerUser(t, tmp)
	if err := os.Rename(tmp, confd); err != nil {
		t.Fatal(err)
	}
	late := filepath.Join(d.ConfigDir, "conf.d", "60-late.conf")
	if err := os.WriteFile(late, []byte("maintenance_work_mem = '128MB'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.GiveToServerUser(t, late)
	waitFor(t, time.Minute, "the new conf.d file snapshotted", func() bool {
		st := s.status(t)
		return st.Config.Files == first+1
	})
	d.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	after, err := pglogrepl.ParseLSN(d.Text(t, "postgres", "SELECT pg_current_wal_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the marker's commit flushed by the agent", func() bool {
		got, err := pglogrepl.ParseLSN(s.status(t).WAL.Flushed)
		return err == nil && got >= after
	})
	if _, err := p.stop(t, syscall.SIGTERM, time.Minute); err != nil {
		t.Fatalf("agent stopped with %v", err)
	}

	// What the snapshot holds, from the repository.
	be, err := local.New(s.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := confsnap.StateAt(ctx, r, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{}
	for _, f := range st.Files {
		roles[f.Path] = f.Role
	}
	// The originals, read now (after the changes) to compare with.
	want := map[string]os.FileMode{
		"postgresql.conf": 0o644, "pg_hba.conf": 0o640, "pg_ident.conf": 0o640, pgtest.DebianConfD: 0o644,
		"conf.d/60-late.conf": 0o600, "start.conf": 0o644, "pg_ctl.conf": 0o644, "environment": 0o644,
	}
	for rel := range want {
		if roles[filepath.Join(d.ConfigDir, rel)] == "" {
			t.Errorf("%s is not in the config snapshot (files: %v)", rel, roles)
		}
	}

	cfgDir := filepath.Join(dir, "config")
	rc, out := s.restoreCLI(t, "--latest", "--config-dir", cfgDir)
	if got := rc.Text(t, "synapse", "select string_agg(n::text, ',') from markers"); got != "1" {
		t.Errorf("restored markers %q, want 1\n%s", got, out)
	}
	for rel, mode := range want {
		orig := filepath.Join(d.ConfigDir, rel)
		restored := filepath.Join(cfgDir, orig)
		wb, err := os.ReadFile(orig)
		if err != nil {
			t.Fatal(err)
		}
		gb, err := os.ReadFile(restored)
		if err != nil {
			t.Errorf("%s not restored: %v", rel, err)
			continue
		}
		if string(gb) != string(wb) {
			t.Errorf("%s restored as %q, want %q", rel, gb, wb)
		}
		fi, err := os.Stat(restored)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s restored with mode %v, want %v", rel, fi.Mode().Perm(), mode)
		}
		ofi, err := os.Stat(orig)
		if err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			o, g := ofi.Sys().(*syscall.Stat_t), fi.Sys().(*syscall.Stat_t)
			if o.Uid != g.Uid || o.Gid != g.Gid {
				t.Errorf("%s restored owned by %d:%d, want %d:%d", rel, g.Uid, g.Gid, o.Uid, o.Gid)
			}
		}
	}
	m, err := confsnap.ReadManifest(cfgDir)
	if err != nil {
		t.Fatal(err)
	}
	conf, hba := confsnap.ServerFiles(m)
	if conf != filepath.Join(d.ConfigDir, "postgresql.conf") || hba != filepath.Join(d.ConfigDir, "pg_hba.conf") {
		t.Errorf("ServerFiles(manifest) = %q, %q", conf, hba)
	}
}
