package basebackup_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/wait"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

// 1 MB segments: a backup spans several, so the WAL wait is exercised.
var (
	initdbArgs  = []string{"--wal-segsize=1"}
	clusterConf = []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}
)

func newRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	return repotest.New(t, dir, repotest.Zstd)
}

// serverOwner is the owner restored files need: postgres when we are root.
func serverOwner(t *testing.T) *restore.Owner {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &restore.Owner{UID: uid, GID: gid}
}

func chownTree(t *testing.T, dir string, o *restore.Owner) {
	t.Helper()
	if o == nil {
		return
	}
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, o.UID, o.GID)
	})
	if err != nil {
		t.Fatal(err)
	}
}

type receiver struct {
	cancel context.CancelFunc
	done   chan error
}

func startReceiver(t *testing.T, c *pgtest.Cluster, r *repo.Repo) *receiver {
	t.Helper()
	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}
	rcv := wal.NewReceiver(src, r, wal.Options{
		Slot: "synbak", SpoolDir: t.TempDir(), StatusInterval: 200 * time.Millisecond, PartialInterval: 300 * time.Millisecond,
	}, pgtest.Logger(t).With("component", "wal"))
	ctx, cancel := context.WithCancel(context.Background())
	rc := &receiver{cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- rcv.Run(ctx) }()
	deadline := time.Now().Add(time.Minute)
	for !rcv.Status().Streaming {
		if time.Now().After(deadline) {
			t.Fatalf("receiver not streaming: %s", rcv.Status().LastError)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { rc.stop(t) })
	return rc
}

func (rc *receiver) stop(t *testing.T) {
	if rc.cancel == nil {
		return
	}
	rc.cancel()
	rc.cancel = nil
	if err := <-rc.done; err != nil {
		t.Errorf("receiver: %v", err)
	}
}

// TestBackupRestore takes a backup of a cluster with an extra tablespace
// while pgbench writes, extracts it (tablespace relocated beside the data
// directory), checks it with pg_verifybackup, and recovers it with WAL from
// the repository only (restore_command = synbak wal-fetch).
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	bin := pgtest.SynbakBinary(t)
	// Empty and owned by postgres, as CREATE TABLESPACE wants; created
	// before the cluster so that it is removed after the cluster stops.
	tsLoc := pgtest.ServerDir(t)
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: initdbArgs, Conf: clusterConf})
	c.Exec(t, "postgres", fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", tsLoc))
	c.Exec(t, "postgres", "CREATE TABLE in_ts (id int primary key, v text) TABLESPACE ts")
	c.Exec(t, "postgres", "INSERT INTO in_ts SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
	c.Pgbench(t, "postgres", "-i", "-s", "2", "-q")

	work := pgtest.ServerDir(t) // repository and fetch state, read by restore_command as postgres
	repoDir := filepath.Join(work, "repo")
	r := newRepo(t, repoDir)
	rcv := startReceiver(t, c, r)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bench := c.RunAsServerUser(ctx, "pgbench", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "-c", "2", "-T", "600", "postgres")
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchDone := false
	stopBench := func() {
		if !benchDone {
			cancel()
			_ = bench.Wait()
			benchDone = true
		}
	}
	defer stopBench()
	// Let pgbench get going so that the backup copies changing files.
	waitFor(t, time.Minute, "pgbench transactions", func() bool {
		return c.Int64(t, "postgres", "select count(*) from pgbench_history") > 50
	})

	var progress []basebackup.Progress
	started := time.Now()
	b, err := basebackup.Take(context.Background(), c.ReplicationConn(t), r, basebackup.Options{
		Label: "test", PartSize: 1 << 20, WALTimeout: 2 * time.Minute,
		Facts:    map[string]string{"server_name": "example.org"},
		Progress: func(p basebackup.Progress) { progress = append(progress, p) },
	}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup %s took %s: %d bytes, %d stored", b.ID, time.Since(started), b.Size(), b.StoredSize())
	histAfterBackup := c.Int64(t, "postgres", "select count(*) from pgbench_history")
	stopBench()
	c.Exec(t, "postgres", "CREATE TABLE after_backup AS SELECT 42 AS answer")
	endLSN := c.Text(t, "postgres", "select pg_switch_wal()::text") // the end of the completed segment

	// Metadata.
	if len(b.Archives) != 2 {
		t.Fatalf("archives = %+v, want base.tar and one tablespace", b.Archives)
	}
	var tsOID uint32
	for _, a := range b.Archives {
		if a.Name != "base.tar" {
			tsOID = a.TablespaceOID
			if a.Name != fmt.Sprintf("%d.tar", a.TablespaceOID) || a.Path != tsLoc {
				t.Errorf("tablespace archive %+v, want %d.tar at %s", a, a.TablespaceOID, tsLoc)
			}
		}
		if len(a.Parts) < 1 || a.Size == 0 || a.StoredSize >= a.Size {
			t.Errorf("archive %s: want parts, size and compression: %+v", a.Name, a)
		}
		var sum int64
		for i, p := range a.Parts {
			sum += p.Size
			// Parts are version 3 objects: an XXH3-128, not a sha256.
			if !p.Valid() || p.XXH3 == "" || p.Size == 0 || (i < len(a.Parts)-1 && p.Size != 1<<20) {
				t.Errorf("archive %s part %d: %+v, want an xxh3 checksum and 1 MiB except the last", a.Name, i, p)
			}
		}
		if sum != a.Size {
			t.Errorf("archive %s: parts hold %d bytes, size says %d", a.Name, sum, a.Size)
		}
	}
	var base basebackup.Archive
	for _, a := range b.Archives {
		if a.Name == "base.tar" {
			base = a
		}
	}
	if len(base.Parts) < 10 {
		t.Errorf("base.tar stored in %d parts of 1 MiB for %d bytes", len(base.Parts), base.Size)
	}
	// Archives are compressed as parallel zstd frames (repo.WithWorkers):
	// each frame is preceded by a skippable frame with its size.
	raw, err := os.ReadFile(filepath.Join(repoDir, basebackup.PartName(b.ID, "base.tar", 0)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0}) {
		t.Errorf("base.tar part 0 holds no zstd frame marker: not compressed as parallel frames")
	}
	if len(b.Tablespaces) != 2 || b.EndLSN <= b.StartLSN || b.PGVersion < 150000 || b.SystemID == "" || b.SegmentSize != 1<<20 {
		t.Errorf("backup metadata %+v", b)
	}
	for _, ts := range b.Tablespaces {
		if ts.Size <= 0 {
			t.Errorf("tablespace %+v without a size estimate", ts)
		}
	}
	if len(progress) == 0 || progress[len(progress)-1].Phase != "done" {
		t.Errorf("progress reports %+v, want some ending with done", progress)
	}
	if len(b.Segments()) < 2 {
		t.Errorf("backup spans %d segments, want several (pgbench wrote during it)", len(b.Segments()))
	}
	list, err := basebackup.List(context.Background(), r)
	if err != nil || len(list) != 1 || list[0].ID != b.ID || list[0].Facts["server_name"] != "example.org" {
		t.Fatalf("List = %+v, %v; want backup %s", list, err, b.ID)
	}
	if inc, err := basebackup.ListIncomplete(context.Background(), r); err != nil || len(inc) != 0 {
		t.Errorf("ListIncomplete = %+v, %v", inc, err)
	}

	// Wait until the WAL up to after_backup is archived, then stop the
	// receiver so that the repository can be handed to postgres.
	waitFor(t, time.Minute, "WAL archived to "+endLSN, func() bool {
		return walArchivedTo(t, r, b.EndTimeline, endLSN)
	})
	rcv.stop(t)

	// Extract.
	owner := serverOwner(t)
	restoreRoot := pgtest.ServerDir(t)

	// A part that is not the one the backup recorded is refused.
	bad := *b
	bad.Archives = slices.Clone(b.Archives)
	for i := range bad.Archives {
		if bad.Archives[i].Name == "base.tar" {
			bad.Archives[i].Parts = slices.Clone(bad.Archives[i].Parts)
			bad.Archives[i].Parts[3].SHA256 = strings.Repeat("0", 64)
		}
	}
	err = restore.Extract(context.Background(), r, bad, filepath.Join(restoreRoot, "bad"),
		restore.ExtractOptions{TablespaceDirs: map[uint32]string{tsOID: filepath.Join(restoreRoot, "bad_ts")}}, nil)
	if !repo.IsCorrupt(err) || !strings.Contains(err.Error(), "base.tar.0003") {
		t.Errorf("Extract with a wrong part checksum: %v, want IsCorrupt naming base.tar.0003", err)
	}
	pgdata := filepath.Join(restoreRoot, "data")
	if err := restore.Extract(context.Background(), r, *b, pgdata, restore.ExtractOptions{Owner: owner}, pgtest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	tsDir := restore.TablespaceDir(pgdata, tsOID)
	if target, err := os.Readlink(filepath.Join(pgdata, "pg_tblspc", strconv.Itoa(int(tsOID)))); err != nil || target != tsDir {
		t.Errorf("pg_tblspc link = %q, %v; want %s", target, err, tsDir)
	}
	if m, err := os.ReadFile(filepath.Join(pgdata, "tablespace_map")); err != nil || string(m) != fmt.Sprintf("%d %s\n", tsOID, tsDir) {
		t.Errorf("tablespace_map = %q, %v", m, err)
	}
	if err := restore.Extract(context.Background(), r, *b, pgdata, restore.ExtractOptions{}, nil); !restore.IsNotEmpty(err) {
		t.Errorf("Extract into a non-empty directory: %v, want IsNotEmpty", err)
	}

	// pg_verifybackup against the stored manifest, with the backup's WAL
	// fetched from the repository. tablespace_map is ignored because
	// Extract rewrote it for the new tablespace location on purpose.
	walDir := filepath.Join(t.TempDir(), "wal")
	if err := os.Mkdir(walDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, s := range b.Segments() {
		copyObject(t, r, s.ObjectName(), filepath.Join(walDir, s.Name()))
	}
	binDir, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(binDir, "pg_verifybackup"), "-w", walDir, "-i", "tablespace_map", pgdata).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_verifybackup: %v\n%s", err, out)
	}
	t.Logf("pg_verifybackup: %s", out)

	// Recover with WAL from the repository only.
	cfgFile := filepath.Join(work, "restore.yaml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, "repository:\n  path: %s\nstate_dir: %s\n", repoDir, filepath.Join(work, "state")), 0o600); err != nil {
		t.Fatal(err)
	}
	chownTree(t, work, owner)
	cmd := fmt.Sprintf("%s -c %s wal-fetch %%f %%p", bin, cfgFile)
	if err := restore.WriteRecoveryConfig(pgdata, cmd, restore.Target{}, owner); err != nil {
		t.Fatal(err)
	}
	rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
	rc.WaitPromoted(t)
	if n := rc.Int64(t, "postgres", "select count(*) from in_ts"); n != 5000 {
		t.Errorf("in_ts has %d rows, want 5000", n)
	}
	if loc := rc.Text(t, "postgres", "select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'"); loc != tsDir {
		t.Errorf("restored tablespace at %s, want %s", loc, tsDir)
	}
	if n := rc.Int64(t, "postgres", "select count(*) from pgbench_history"); n < histAfterBackup {
		t.Errorf("pgbench_history has %d rows, want at least the %d written by the end of the backup", n, histAfterBackup)
	}
	if n := rc.Int64(t, "postgres", "select count(*) from pgbench_accounts"); n != 200000 {
		t.Errorf("pgbench_accounts has %d rows, want 200000", n)
	}
	if n := rc.Int64(t, "postgres", "select answer from after_backup"); n != 42 {
		t.Errorf("after_backup.answer = %d, want 42 (WAL after the backup replayed)", n)
	}
}

func copyObject(t *testing.T, r *repo.Repo, name, path string) {
	t.Helper()
	rd, err := r.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rd); err != nil {
		t.Fatal(err)
	}
}

// walArchivedTo reports whether the complete segment holding lsn-1 is in
// the repository.
func walArchivedTo(t *testing.T, r *repo.Repo, tli uint32, lsn string) bool {
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Stat(context.Background(), wal.SegmentAt(tli, l-1, 1<<20).ObjectName())
	return err == nil
}

var waitFor = wait.For

// TestWALTimeout: without a WAL receiver the backup fails after
// WALTimeout, says why, and leaves nothing behind.
func TestWALTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: initdbArgs, Conf: clusterConf})
	r := newRepo(t, t.TempDir())
	_, err := basebackup.Take(context.Background(), c.ReplicationConn(t), r, basebackup.Options{WALTimeout: time.Second}, pgtest.Logger(t))
	if !basebackup.IsWALTimeout(err) || !strings.Contains(err.Error(), "is the agent or `synbak wal stream` running") {
		t.Fatalf("Take without a receiver: %v, want a WAL timeout naming the fix", err)
	}
	list, err := basebackup.List(context.Background(), r)
	if err != nil || len(list) != 0 {
		t.Errorf("List = %+v, %v; want none", list, err)
	}
	inc, err := basebackup.ListIncomplete(context.Background(), r)
	if err != nil || len(inc) != 0 {
		t.Errorf("ListIncomplete = %+v, %v; want the failed backup's objects removed", inc, err)
	}
}

// TestServerCompressedBackupsExtract takes backups compressed by the server
// (for slow links) and checks that they extract into data directories that
// pg_verifybackup accepts.
func TestServerCompressedBackupsExtract(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: initdbArgs, Conf: clusterConf})
	c.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	r := newRepo(t, filepath.Join(t.TempDir(), "repo"))
	startReceiver(t, c, r)
	binDir, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, comp := range []string{"lz4", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			b, err := basebackup.Take(context.Background(), c.ReplicationConn(t), r, basebackup.Options{
				Label: comp, ServerCompression: comp, PartSize: 1 << 20, WALTimeout: time.Minute,
			}, pgtest.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			if want := "base.tar." + map[string]string{"lz4": "lz4", "zstd": "zst"}[comp]; b.Archives[0].Name != want {
				t.Fatalf("archive %s, want %s", b.Archives[0].Name, want)
			}
			pgdata := filepath.Join(t.TempDir(), "data")
			if err := restore.Extract(context.Background(), r, *b, pgdata, restore.ExtractOptions{}, pgtest.Logger(t)); err != nil {
				t.Fatal(err)
			}
			walDir := filepath.Join(t.TempDir(), "wal")
			if err := os.Mkdir(walDir, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, s := range b.Segments() {
				copyObject(t, r, s.ObjectName(), filepath.Join(walDir, s.Name()))
			}
			out, err := exec.Command(filepath.Join(binDir, "pg_verifybackup"), "-w", walDir, pgdata).CombinedOutput()
			if err != nil {
				t.Fatalf("pg_verifybackup: %v\n%s", err, out)
			}
		})
	}
}
