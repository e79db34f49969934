package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

// TestMajors runs the real synbak binary against each supported PostgreSQL
// major (pgtest.MatrixMajors: 16, 17 and 18 in CI; 15 runs the whole
// suite), one parallel subtest per major sharing its clusters between the
// checks: WAL streamed from a standby byte-identical to the server's own
// segments and resumed after kill -9 of the receiver; a base backup from the
// primary and one from the standby; a timeline switch by promoting the
// standby; a restore to a time between two commits (exactly the first) and
// one with --latest (every table as on the promoted server, amcheck clean),
// both with --pg-bindir; the drill; the one-time keys emptied.
//
// Referees: the npm packages of 16+ hold no pg_waldump or pg_verifybackup,
// and Debian's 15 refuses their WAL, so WAL is checked against the
// server's own pg_wal files byte for byte, and restores against the rows
// (md5 of every table's rows) and amcheck (bt_index_check through SQL).
func TestMajors(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	majors := pgtest.MatrixMajors(t)
	bin := pgtest.SynbakBinary(t)
	for _, m := range majors {
		t.Run(fmt.Sprintf("pg%d", m), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			majorMatrix(t, bin, m)
			t.Logf("PostgreSQL %d: matrix took %s", m, time.Since(start).Round(100*time.Millisecond))
		})
	}
}

const matrixSegSize = 1 << 20

func majorMatrix(t *testing.T, bin string, major int) {
	ctx := context.Background()
	binDir, err := pgtest.BinDirFor(major)
	if err != nil {
		t.Fatal(err)
	}
	// wal_keep_size: every segment stays in pg_wal, to compare with.
	conf := []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'", "wal_keep_size = '1GB'", "fsync = off"}
	p := pgtest.Start(t, pgtest.Options{Major: major, InitdbArgs: []string{"--wal-segsize=1"}, Conf: conf})
	if got := p.Int64(t, "postgres", "select current_setting('server_version_num')::int / 10000"); got != int64(major) {
		t.Fatalf("the server of %s is PostgreSQL %d, want %d", binDir, got, major)
	}
	checksums := p.Text(t, "postgres", "show data_checksums")
	t.Logf("PostgreSQL %s in %s, data_checksums %s", p.Text(t, "postgres", "show server_version"), binDir, checksums)
	p.CreateDB(t, "synapse")
	p.CreateSynapseSchema(t, "synapse")
	p.FillSynapse(t, "synapse", 30)
	p.Exec(t, "synapse", "CREATE TABLE marks (n int PRIMARY KEY)")
	s := pgtest.StartStandby(t, p, pgtest.Options{Conf: conf})

	dir := pgtest.ServerDir(t) // the postgres user can traverse it (restore_command)
	repoDir := filepath.Join(dir, "repo")
	rp := newLocalRepo(t, repoDir)
	hsFile := filepath.Join(dir, "synapse", "homeserver.yaml")
	if err := os.MkdirAll(filepath.Join(dir, "synapse", "media_store"), 0o755); err != nil {
		t.Fatal(err)
	}
	hs := fmt.Sprintf("server_name: test.example\ndatabase:\n  name: psycopg2\n  args: {user: postgres, dbname: synapse, host: 127.0.0.1, port: %d}\nmedia_store_path: %s\n",
		p.Port, filepath.Join(dir, "synapse", "media_store"))
	if err := os.WriteFile(hsFile, []byte(hs), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "SYNBAK_REPOSITORY_PATH="+repoDir, "SYNBAK_STATE_DIR="+filepath.Join(dir, "state"),
		"SYNBAK_SYNAPSE_CONFIG="+hsFile, "SYNBAK_SYNAPSE_WORKDIR="+filepath.Dir(hsFile),
		"SYNBAK_WAL_STATUS_INTERVAL=200ms", "SYNBAK_WAL_PARTIAL_INTERVAL=500ms", "SYNBAK_BASEBACKUP_PART_SIZE_MB=4")
	synbak := func(t *testing.T, dsn string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-c", "/dev/null"}, args...)...)
		cmd.Env = append(env, "SYNBAK_POSTGRES_DSN="+dsn)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil {
			return out.String() + errb.String(), fmt.Errorf("synbak %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
		}
		return out.String(), nil
	}

	// The WAL receiver streams from the standby (a cascading slot there),
	// so that the promotion below switches its timeline.
	rcv := startWALStream(t, bin, append(env, "SYNBAK_POSTGRES_DSN="+s.DSN("postgres")), dir)
	waitFor(t, time.Minute, "the receiver's slot on the standby active", func() bool {
		return s.Bool(t, "postgres", "select coalesce(bool_or(active), false) from pg_replication_slots where slot_name = 'synbak'")
	})

	// Base backup from the primary.
	out, err := synbak(t, p.DSN("postgres"), "backup")
	if err != nil {
		t.Fatal(err)
	}
	fromPrimary := strings.TrimSpace(out)
	checkManifest(t, rp, fromPrimary)

	// kill -9 of the receiver while WAL is written, then a new one resumes.
	p.FillSynapse(t, "synapse", 20)
	end := switchWALTo(t, p)
	waitArchived(t, rp, 1, end)
	p.FillSynapse(t, "synapse", 10)
	rcv.kill(t)
	p.FillSynapse(t, "synapse", 10)
	rcv = startWALStream(t, bin, append(env, "SYNBAK_POSTGRES_DSN="+s.DSN("postgres")), dir)

	// Two commits with a time between them.
	if p.Int64(t, "synapse", "select count(*) from e2e_one_time_keys_json") == 0 {
		t.Fatal("the Synapse-shaped fill wrote no one-time keys")
	}
	p.Exec(t, "synapse", "INSERT INTO marks VALUES (1)")
	between := p.Now(t) // after the first commit, before the second
	p.Exec(t, "synapse", "INSERT INTO marks VALUES (2)")
	waitArchived(t, rp, 1, switchWALTo(t, p))

	// Base backup from the standby, once it has replayed the commits.
	lsn := p.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	waitFor(t, time.Minute, "standby replay", func() bool {
		return s.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
	})
	out, err = synbak(t, s.DSN("postgres"), "backup")
	if err != nil {
		t.Fatal(err)
	}
	fromStandby := strings.TrimSpace(out)
	checkManifest(t, rp, fromStandby)

	// Timeline switch: promote the standby, write on timeline 2.
	s.Promote(t)
	if tli := s.Int64(t, "postgres", "select timeline_id from pg_control_checkpoint()"); tli < 1 {
		t.Fatalf("timeline %d", tli)
	}
	s.Exec(t, "synapse", "INSERT INTO marks VALUES (3)")
	s.FillSynapse(t, "synapse", 10)
	end2 := switchWALTo(t, s)
	waitArchived(t, rp, 2, end2)
	if _, err := rp.Stat(ctx, wal.HistoryObjectName(2)); err != nil {
		t.Fatalf("history file of timeline 2 not archived: %v", err)
	}
	rcv.stop(t)

	// Every archived segment is byte-identical to the servers' own copy.
	compared := compareWithPgWal(t, rp, 1, []*pgtest.Cluster{s, p}) + compareWithPgWal(t, rp, 2, []*pgtest.Cluster{s})
	t.Logf("%d archived segments (timelines 1 and 2) byte-identical to the servers' pg_wal copies", compared)

	pgtest.GiveToServerUser(t, repoDir)
	restoreTo := func(t *testing.T, args ...string) (*pgtest.Cluster, string) {
		t.Helper()
		pgdata := filepath.Join(pgtest.ServerDir(t), "data")
		out, err := synbak(t, "", append([]string{"restore", "--pgdata", pgdata, "--pg-bindir", binDir}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return pgtest.StartDataDir(t, pgdata, pgtest.Options{BinDir: binDir}), out
	}
	marks := func(c *pgtest.Cluster) string {
		return c.Text(t, "synapse", "select coalesce(string_agg(n::text, ',' order by n), '') from marks")
	}

	// To a time between the two commits: exactly the first, restored from
	// the primary's backup (the standby's ended after the target).
	r1, out := restoreTo(t, "--target-time", between.Format(time.RFC3339Nano))
	if got := marks(r1); got != "1" {
		t.Errorf("restore to %s (between the commits of 1 and 2): marks %q, want \"1\"\n%s", between.Format(time.RFC3339Nano), got, out)
	}
	if !strings.Contains(out, fromPrimary) {
		t.Errorf("the restore to a time did not use the primary's backup %s:\n%s", fromPrimary, out)
	}
	if n := r1.Int64(t, "synapse", "select count(*) from e2e_one_time_keys_json"); n != 0 {
		t.Errorf("restore to a time: %d one-time keys left, want none", n)
	}
	if got := r1.Text(t, "postgres", "show data_checksums"); got != checksums {
		t.Errorf("restored data_checksums %s, the source's %s", got, checksums)
	}
	r1.Stop(t)

	// --latest: timeline 2, from the standby's backup; every table as on
	// the promoted server but the one-time keys, emptied.
	r2, out := restoreTo(t, "--latest")
	if got := marks(r2); got != "1,2,3" {
		t.Errorf("restore --latest: marks %q, want \"1,2,3\"\n%s", got, out)
	}
	if !strings.Contains(out, fromStandby) {
		t.Errorf("restore --latest did not use the standby's backup %s:\n%s", fromStandby, out)
	}
	want, got := tableSums(t, s), tableSums(t, r2)
	if len(want) < 5 {
		t.Fatalf("only %d tables summed", len(want))
	}
	for name, sum := range want {
		if name == "e2e_one_time_keys_json" {
			continue
		}
		if got[name] != sum {
			t.Errorf("restore --latest: table %s differs from the promoted server's", name)
		}
	}
	if n := r2.Int64(t, "synapse", "select count(*) from e2e_one_time_keys_json"); n != 0 {
		t.Errorf("restore --latest: %d one-time keys left, want none", n)
	}
	r2.Exec(t, "synapse", "CREATE EXTENSION IF NOT EXISTS amcheck")
	if n := r2.Int64(t, "synapse", `select count(bt_index_check(c.oid, true)::text) from pg_index i join pg_class c on c.oid = i.indexrelid
		join pg_am a on a.oid = c.relam where a.amname = 'btree' and c.relpersistence != 't'`); n < 10 {
		t.Errorf("amcheck checked only %d btree indexes", n)
	}
	r2.Stop(t)

	// The drill restores the newest backup into a scratch directory.
	scratch := filepath.Join(dir, "scratch")
	if err := os.MkdirAll(scratch, 0o711); err != nil {
		t.Fatal(err)
	}
	out, err = synbak(t, "", "drill", "--scratch-dir", scratch, "--pg-bindir", binDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Drill: restored backup " + fromStandby, "ok   database synapse opens", "ok   one-time keys emptied", "OK: "} {
		if !strings.Contains(out, w) {
			t.Errorf("drill output lacks %q:\n%s", w, out)
		}
	}

	// A logical dump needs a pg_dump of the server's major or newer: with
	// none installed, a refusal naming the client package; with one, a dump.
	out, err = synbak(t, p.DSN("postgres"), "dump")
	if newerPgDump(major) {
		if err != nil {
			t.Errorf("dump of PostgreSQL %d with a new enough pg_dump installed: %v", major, err)
		}
	} else if err == nil || !strings.Contains(out, fmt.Sprintf("postgresql-client-%d", major)) {
		t.Errorf("dump of PostgreSQL %d without a pg_dump of %d or newer: %v, want a refusal naming postgresql-client-%d:\n%s", major, major, err, major, out)
	}
}

// newerPgDump reports whether Debian's layout holds a pg_dump of major or
// newer.
func newerPgDump(major int) bool {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	for _, p := range m {
		var v int
		if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(p))), "%d", &v); err == nil && v >= major {
			return true
		}
	}
	return false
}

// walStream is a `synbak wal stream` process.
type walStream struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

func startWALStream(t *testing.T, bin string, env []string, dir string) *walStream {
	t.Helper()
	logf, err := os.CreateTemp(dir, "walstream-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", "/dev/null", "wal", "stream")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &walStream{cmd: cmd, done: make(chan struct{}), log: logf.Name()}
	go func() {
		w.err = cmd.Wait()
		logf.Close()
		close(w.done)
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = cmd.Process.Kill()
			<-w.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(w.log)
			t.Logf("wal stream log %s (tail):\n%s", w.log, tail(string(b), 30))
		}
	})
	return w
}

// kill is kill -9.
func (w *walStream) kill(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

// stop sends SIGTERM and requires a clean exit.
func (w *walStream) stop(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(time.Minute):
		t.Fatal("wal stream did not exit within a minute of SIGTERM")
	}
	if w.err != nil {
		b, _ := os.ReadFile(w.log)
		t.Fatalf("wal stream: %v\n%s", w.err, tail(string(b), 30))
	}
}

// switchWALTo closes c's current segment and returns the end of the
// segment that held the WAL written so far.
func switchWALTo(t *testing.T, c *pgtest.Cluster) pglogrepl.LSN {
	t.Helper()
	lsn, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	return pglogrepl.LSN((uint64(lsn) + matrixSegSize - 1) / matrixSegSize * matrixSegSize)
}

// waitArchived waits until the segment of tli ending at end is stored.
func waitArchived(t *testing.T, rp *repo.Repo, tli uint32, end pglogrepl.LSN) {
	t.Helper()
	seg := wal.SegmentAt(tli, end-1, matrixSegSize)
	waitFor(t, 2*time.Minute, "segment "+seg.Name()+" archived", func() bool {
		_, err := rp.Stat(context.Background(), seg.ObjectName())
		return err == nil
	})
}

// compareWithPgWal requires tli's archived segments to be contiguous and
// each one to be byte-identical to the first copy found in the servers'
// pg_wal; it returns how many it compared.
func compareWithPgWal(t *testing.T, rp *repo.Repo, tli uint32, servers []*pgtest.Cluster) int {
	t.Helper()
	ctx := context.Background()
	var names []string
	err := rp.List(ctx, fmt.Sprintf("wal/%08X/", tli), func(oi storage.ObjectInfo) error {
		if base := filepath.Base(oi.Name); len(base) == 24 {
			names = append(names, base)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	if len(names) == 0 {
		t.Fatalf("no segment of timeline %d archived", tli)
	}
	f, err := wal.NewFetcher(ctx, rp, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	compared := 0
	var prev *wal.Segment
	for _, n := range names {
		seg, err := wal.ParseSegmentName(n, matrixSegSize)
		if err != nil {
			t.Fatal(err)
		}
		if prev != nil && seg.No != prev.No+1 {
			t.Fatalf("gap in the archive of timeline %d: %s follows %s", tli, n, prev.Name())
		}
		prev = &seg
		dest := filepath.Join(dir, n)
		if err := f.Fetch(ctx, n, dest); err != nil {
			t.Fatalf("fetch %s: %v", n, err)
		}
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, c := range servers {
			want, err := os.ReadFile(filepath.Join(c.PgWalDir(), n))
			if err != nil {
				continue // a standby's pg_wal starts at its base backup
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("archived segment %s differs from the copy in %s", n, c.PgWalDir())
			}
			found = true
			break
		}
		if !found {
			t.Fatalf("archived segment %s is in no server's pg_wal (wal_keep_size keeps them)", n)
		}
		compared++
	}
	return compared
}

// checkManifest extracts backup id and checks every file the server's
// backup_manifest lists against its size and CRC32C, the manifest's
// default checksum (PostgreSQL's pg_verifybackup does this; Debian's 15
// refuses the manifests of 17+ (version 2) and the WAL of 16+, and the npm packages of
// 16+ hold none).
func checkManifest(t *testing.T, rp *repo.Repo, id string) {
	t.Helper()
	ctx := context.Background()
	b, err := basebackup.Load(ctx, rp, id)
	if err != nil {
		t.Fatal(err)
	}
	pgdata := filepath.Join(t.TempDir(), "data")
	if err := restore.Extract(ctx, rp, b, pgdata, restore.ExtractOptions{}, nil); err != nil {
		t.Fatalf("extract backup %s: %v", id, err)
	}
	raw, err := os.ReadFile(filepath.Join(pgdata, "backup_manifest"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Version any `json:"PostgreSQL-Backup-Manifest-Version"`
		Files   []struct {
			Path      string `json:"Path"`
			Size      int64  `json:"Size"`
			Algorithm string `json:"Checksum-Algorithm"`
			Checksum  string `json:"Checksum"`
		} `json:"Files"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("backup %s: backup_manifest: %v", id, err)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	checked := 0
	for _, f := range m.Files {
		if f.Path == "tablespace_map" {
			continue // Extract rewrites it for the new locations
		}
		data, err := os.ReadFile(filepath.Join(pgdata, f.Path))
		if err != nil {
			t.Fatalf("backup %s: %s listed in backup_manifest: %v", id, f.Path, err)
		}
		if int64(len(data)) != f.Size {
			t.Fatalf("backup %s: %s is %d bytes, the manifest says %d", id, f.Path, len(data), f.Size)
		}
		if f.Algorithm != "CRC32C" {
			t.Fatalf("backup %s: %s has a %s checksum; the test checks CRC32C", id, f.Path, f.Algorithm)
		}
		// PostgreSQL writes the CRC's bytes in memory order (little-endian).
		var sum [4]byte
		binary.LittleEndian.PutUint32(sum[:], crc32.Checksum(data, table))
		if got := hex.EncodeToString(sum[:]); got != f.Checksum {
			t.Fatalf("backup %s: %s has CRC32C %s, the manifest says %s", id, f.Path, got, f.Checksum)
		}
		checked++
	}
	if checked < 500 {
		t.Fatalf("backup %s: only %d files checked against backup_manifest", id, checked)
	}
	t.Logf("backup %s: %d files match backup_manifest (version %v)", id, checked, m.Version)
}

// tableSums returns the md5 of every row of every table of the synapse
// database's public schema, by table.
func tableSums(t *testing.T, c *pgtest.Cluster) map[string]string {
	t.Helper()
	names := strings.Split(c.Text(t, "synapse", "select string_agg(tablename, ' ' order by tablename) from pg_tables where schemaname = 'public'"), " ")
	sums := map[string]string{}
	for _, n := range names {
		sums[n] = c.Text(t, "synapse", fmt.Sprintf(`select md5(coalesce(string_agg(x::text, E'\n' order by x::text), '')) from public.%q x`, n))
	}
	return sums
}

// TestPostgres14Refused runs `synbak backup` and `synbak wal stream`
// against PostgreSQL 14 (the npm package .ci/install-pg.sh installs for
// this test): both exit at once with a message naming the version needed,
// instead of a protocol error or retrying forever.
func TestPostgres14Refused(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	if _, err := pgtest.BinDirFor(14); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("%v", err)
		}
		t.Fatal(err)
	}
	bin := pgtest.SynbakBinary(t)
	c := pgtest.Start(t, pgtest.Options{Major: 14})
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	newLocalRepo(t, repoDir)
	for _, args := range [][]string{{"backup"}, {"wal", "stream"}} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, append([]string{"-c", "/dev/null"}, args...)...)
		cmd.Env = append(os.Environ(), "SYNBAK_REPOSITORY_PATH="+repoDir, "SYNBAK_STATE_DIR="+filepath.Join(dir, "state"),
			"SYNBAK_POSTGRES_DSN="+c.DSN("postgres"))
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if timedOut {
			t.Fatalf("synbak %s against PostgreSQL 14 still running after a minute:\n%s", strings.Join(args, " "), out)
		}
		if err == nil || !strings.Contains(string(out), "PostgreSQL 15 or later") {
			t.Errorf("synbak %s against PostgreSQL 14: %v, want a refusal naming PostgreSQL 15 or later:\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("synbak %s against PostgreSQL 14: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
}
