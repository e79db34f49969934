package restore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/wait"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

func startReceiver(t *testing.T, c *pgtest.Cluster, r *repo.Repo) (stop func()) {
	t.Helper()
	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}
	rcv := wal.NewReceiver(src, r, wal.Options{
		Slot: "synbak", SpoolDir: t.TempDir(), StatusInterval: 200 * time.Millisecond, PartialInterval: 300 * time.Millisecond,
	}, pgtest.Logger(t).With("component", "wal"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()
	waitFor(t, time.Minute, "receiver streaming", func() bool { return rcv.Status().Streaming })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("receiver: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

var waitFor = wait.For

// timeAfter polls until the server's clock is past t, and returns it.
func timeAfter(t *testing.T, c *pgtest.Cluster, after time.Time) time.Time {
	t.Helper()
	var now time.Time
	waitFor(t, 10*time.Second, "server clock to advance", func() bool {
		now = serverNow(t, c)
		return now.After(after)
	})
	return now
}

func serverNow(t *testing.T, c *pgtest.Cluster) time.Time { t.Helper(); return c.Now(t) }

// TestRestore backs up a Synapse-shaped cluster, writes markers at known
// times, and restores to a time between two of them with Run; the
// refusals and the dry run are checked against the same repository.
func TestRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	bin := pgtest.SynbakBinary(t)
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	for i := range 3 {
		c.Exec(t, "synapse", "INSERT INTO e2e_one_time_keys_json VALUES ('@u:example.org', 'DEV', 'signed_curve25519', $1, 1, '{}')", fmt.Sprintf("AAAA%d", i))
	}
	c.Exec(t, "synapse", "INSERT INTO e2e_fallback_keys_json VALUES ('@u:example.org', 'DEV', 'signed_curve25519', 'FB', '{}', false)")
	c.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")

	repoDir, r, b, stopReceiver := backedUp(t, c)
	// Markers at distinct commit times: 1 and 2 before mid, 3 after.
	t0 := timeAfter(t, c, b.EndTime)
	c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	c.Exec(t, "synapse", "INSERT INTO markers VALUES (2)")
	mid := serverNow(t, c)
	timeAfter(t, c, mid)
	c.Exec(t, "synapse", "INSERT INTO markers VALUES (3)")
	t.Logf("backup ended %s; markers 1, 2 after %s; target %s; marker 3 later", b.EndTime, t0, mid)
	endLSN, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text")) // the end of the completed segment
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "WAL archived", func() bool {
		_, err := r.Stat(context.Background(), wal.SegmentAt(b.EndTimeline, endLSN-1, 1<<20).ObjectName())
		return err == nil
	})
	stopReceiver()
	// Media: one file dated before the target, one after.
	store := t.TempDir()
	for name, mtime := range map[string]time.Time{"before": mid.Add(-time.Second), "after": mid.Add(time.Millisecond)} {
		p := filepath.Join(store, "local_content", "ab", "cd", "ef"+name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mediawatch.Sync(context.Background(), r, store, mediawatch.Options{QuietPeriod: time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	root := pgtest.ServerDir(t)
	opts := func(pgdata string, target restore.Point) restore.Options {
		return restore.Options{
			Repo: r, Prefetch: 4, Target: target, PGData: pgdata,
			Executable: bin, BinDir: c.BinDir, Log: pgtest.Logger(t),
		}
	}
	ctx := context.Background()

	t.Run("refusals", func(t *testing.T) {
		// A non-empty data directory: nothing written.
		full := filepath.Join(root, "full")
		if err := os.MkdirAll(full, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(full, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := restore.Run(ctx, opts(full, restore.Point{Time: mid}))
		if !restore.IsNotEmpty(err) || !strings.Contains(err.Error(), full) {
			t.Errorf("Run into a non-empty pgdata: %v, want IsNotEmpty naming it", err)
		}
		if ents, _ := os.ReadDir(full); len(ents) != 1 {
			t.Errorf("refused restore changed %s: %d entries", full, len(ents))
		}
		if _, err := os.Stat(full + ".synbak-restore"); err == nil {
			t.Error("refused restore created its work directory")
		}
		// A target before the first backup and one after the archive.
		missing := filepath.Join(root, "never")
		for name, target := range map[string]time.Time{
			"before the first backup": b.StartTime.Add(-time.Hour),
			"after the archive":       time.Now().Add(time.Hour),
		} {
			_, err := restore.Run(ctx, opts(missing, restore.Point{Time: target}))
			if !restore.IsRefused(err) || !strings.Contains(err.Error(), "restores are possible from ") {
				t.Errorf("target %s: %v, want a refusal naming the window", name, err)
			}
		}
		if _, err := os.Stat(missing); err == nil {
			t.Error("a refused restore created the data directory")
		}
		// The dry run plans and writes nothing.
		p, err := restore.Prepare(ctx, opts(missing, restore.Point{Time: mid}))
		if err != nil {
			t.Fatal(err)
		}
		if p.BackupID != b.ID || p.Segments < 2 || !strings.Contains(p.String(), b.ID) || p.Window == nil || p.Window.To.Before(mid) || !p.Window.From.Equal(b.EndTime) {
			t.Errorf("plan %+v", p)
		}
		t.Log(p.String())
		if _, err := os.Stat(missing); err == nil {
			t.Error("Prepare created the data directory")
		}
	})

	// Every check that fails a restore fails the dry run the same way,
	// and neither writes anything.
	t.Run("dry run agrees", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		full := filepath.Join(root, "full2")
		if err := os.MkdirAll(full, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		cases := map[string]func(o *restore.Options){
			"data directory not empty": func(o *restore.Options) { o.PGData = full },
			"port in use":              func(o *restore.Options) { o.Port = busy.Addr().(*net.TCPAddr).Port },
			"port out of range":        func(o *restore.Options) { o.Port = 70000 },
			"no server binaries":       func(o *restore.Options) { o.BinDir = filepath.Join(root, "no-such-bindir") },
			"no synbak binary":         func(o *restore.Options) { o.Executable = filepath.Join(root, "no-such-synbak") },
		}
		if os.Geteuid() == 0 {
			// Root-only directories: the postgres OS user cannot reach them.
			private := t.TempDir()
			cases["data directory the server's user cannot reach"] = func(o *restore.Options) { o.PGData = filepath.Join(private, "sub", "data") }
			privBin := filepath.Join(private, "synbak")
			data, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(privBin, data, 0o700); err != nil {
				t.Fatal(err)
			}
			cases["synbak binary the server's user cannot run"] = func(o *restore.Options) { o.Executable = privBin }
		}
		for name, change := range cases {
			o := opts(filepath.Join(root, "never"), restore.Point{Time: mid})
			change(&o)
			_, perr := restore.Prepare(ctx, o)
			_, rerr := restore.Run(ctx, o)
			if perr == nil || rerr == nil {
				t.Errorf("%s: dry run %v, restore %v: want both to fail", name, perr, rerr)
				continue
			}
			if p, r := strings.SplitN(perr.Error(), ":", 2)[0], strings.SplitN(rerr.Error(), ":", 2)[0]; p != r {
				t.Errorf("%s: dry run says %q, restore %q", name, perr, rerr)
			}
			t.Logf("%s: %v", name, perr)
			if o.PGData != full {
				if _, err := os.Stat(o.PGData); err == nil {
					t.Errorf("%s: the failed restore created %s", name, o.PGData)
				}
			}
		}
		if _, err := os.Stat(filepath.Join(root, "never.synbak-restore")); err == nil {
			t.Error("a failed check left the work directory")
		}
	})

	t.Run("to a time", func(t *testing.T) {
		pgdata := filepath.Join(root, "data")
		o := opts(pgdata, restore.Point{Time: mid})
		o.MediaDir = filepath.Join(root, "media")
		rep, err := restore.Run(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if rep.MediaSkipped || rep.MediaFiles != 1 {
			t.Errorf("media: %d files restored, want 1", rep.MediaFiles)
		}
		if got, err := os.ReadFile(filepath.Join(o.MediaDir, "local_content", "ab", "cd", "efbefore")); err != nil || string(got) != "before" {
			t.Errorf("media file dated before the target: %q, %v", got, err)
		}
		if _, err := os.Stat(filepath.Join(o.MediaDir, "local_content", "ab", "cd", "efafter")); err == nil {
			t.Error("media file dated after the target was restored")
		}
		t.Log(rep.String())
		if rep.Plan.BackupID != b.ID || rep.OneTimeKeysRemoved != 3 || rep.Database != "synapse" || rep.Running || rep.EndOfArchive {
			t.Errorf("report %+v", rep)
		}
		if rep.RecoveryTime == nil || rep.RecoveryTime.After(mid) || rep.RecoveryTime.Before(t0) {
			t.Errorf("recovery time %v, want between %s and %s", rep.RecoveryTime, t0, mid)
		}
		// Start the restored cluster again and look at it.
		auto, err := os.ReadFile(filepath.Join(pgdata, "postgresql.auto.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(auto), "synbak") {
			t.Errorf("postgresql.auto.conf keeps the restore's settings:\n%s", auto)
		}
		rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
		if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2" {
			t.Errorf("markers %q, want 1,2", got)
		}
		if n := rc.Int64(t, "synapse", "select count(*) from e2e_one_time_keys_json"); n != 0 {
			t.Errorf("e2e_one_time_keys_json has %d rows, want 0", n)
		}
		if n := rc.Int64(t, "synapse", "select count(*) from e2e_fallback_keys_json"); n != 1 {
			t.Errorf("e2e_fallback_keys_json has %d rows, want 1 (untouched)", n)
		}
		if rc.Bool(t, "postgres", "select pg_is_in_recovery()") {
			t.Error("restored server still in recovery")
		}
		if tli := rc.Int64(t, "postgres", "select timeline_id from pg_control_checkpoint()"); tli < 2 {
			t.Errorf("timeline %d: the restored server was not promoted", tli)
		}
	})

	// A target after the newest commit but inside the time the archive is
	// known complete: PostgreSQL would stop with "recovery ended before
	// configured recovery target was reached"; the restore recovers to the
	// end of the archive and says so.
	t.Run("after the newest commit", func(t *testing.T) {
		latest, err := restore.NewPlan(ctx, r, restore.Point{Latest: true})
		if err != nil {
			t.Fatal(err)
		}
		pgdata := filepath.Join(root, "end")
		rep, err := restore.Run(ctx, opts(pgdata, restore.Point{Time: latest.ArchiveCompleteTo}))
		if err != nil {
			t.Fatal(err)
		}
		if !rep.EndOfArchive || !strings.Contains(rep.String(), "end of the archive") {
			t.Errorf("report %+v, want EndOfArchive", rep)
		}
		rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
		if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2,3" {
			t.Errorf("markers %q, want 1,2,3", got)
		}
	})

	t.Run("latest and LSN", func(t *testing.T) {
		rep, err := restore.Run(ctx, opts(filepath.Join(root, "latest"), restore.Point{Latest: true}))
		if err != nil {
			t.Fatal(err)
		}
		if lsn := rep.RecoveryLSN; lsn < endLSN-1 {
			t.Errorf("latest reached %s, want at least %s", rep.RecoveryLSN, endLSN)
		}
		// The backup's own end: markers none.
		pgdata := filepath.Join(root, "lsn")
		if _, err := restore.Run(ctx, opts(pgdata, restore.Point{LSN: b.EndLSN})); err != nil {
			t.Fatal(err)
		}
		rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
		if n := rc.Int64(t, "synapse", "select count(*) from markers"); n != 0 {
			t.Errorf("restored to the backup's end LSN: %d markers, want 0", n)
		}
		if _, err := restore.NewPlan(ctx, r, restore.Point{LSN: endLSN + 1<<24}); !restore.IsRefused(err) {
			t.Errorf("LSN after the archive: %v, want refused", err)
		}
	})

	t.Run("command line", func(t *testing.T) {
		pgdata := filepath.Join(root, "cli")
		target := mid.Format("2006-01-02 15:04:05.999999") + " UTC"
		out, err := exec.Command(bin, "--repo", repoDir, "restore", "--pgdata", pgdata, "--target-time", target, "--pg-bindir", c.BinDir, "--dry-run").CombinedOutput()
		if err != nil || !strings.Contains(string(out), b.ID) || !strings.Contains(string(out), "nothing was written") {
			t.Errorf("dry run: %v\n%s", err, out)
		}
		if _, err := os.Stat(pgdata); err == nil {
			t.Error("the dry run created --pgdata")
		}
		cmd := exec.Command(bin, "--repo", repoDir, "restore", "--pgdata", pgdata, "--target-time", target, "--pg-bindir", c.BinDir, "--json")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err != nil {
			t.Fatalf("synbak restore: %v\n%s", err, stderr.String())
		}
		var rep restore.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("report %s: %v", out, err)
		}
		if rep.OneTimeKeysRemoved != 3 || rep.Plan.BackupID != b.ID || rep.RecoveryTime == nil || rep.RecoveryTime.After(mid) {
			t.Errorf("report %s", out)
		}
		rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
		if got := rc.Text(t, "synapse", "select string_agg(n::text, ',' order by n) from markers"); got != "1,2" {
			t.Errorf("markers %q, want 1,2", got)
		}
	})

	// Last, as it damages the repository: a corrupt WAL object stops the
	// recovery (wal-fetch exits 255) and the error names the object.
	t.Run("corrupt WAL", func(t *testing.T) {
		seg := wal.SegmentAt(b.EndTimeline, endLSN-1, 1<<20)
		path := filepath.Join(repoDir, filepath.FromSlash(seg.ObjectName()))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = restore.Run(ctx, opts(filepath.Join(root, "corrupt"), restore.Point{Latest: true}))
		t.Logf("error: %v", err)
		if err == nil || !strings.Contains(err.Error(), "serving WAL file "+seg.Name()+" to the restored server failed") || !strings.Contains(err.Error(), "exited during recovery") {
			t.Errorf("restore over a corrupt segment: %v, want an error naming %s", err, seg.ObjectName())
		}
		for _, d := range []string{"corrupt", "corrupt.synbak-restore"} {
			if _, err := os.Stat(filepath.Join(root, d)); err == nil {
				t.Errorf("the failed restore left %s behind", d)
			}
		}
	})

	// A segment that vanishes after planning: PostgreSQL finds no more WAL
	// there and promotes as if the archive ended; the restore compares
	// where replay stopped with its plan, fails naming the segment, and
	// leaves nothing behind.
	t.Run("replay stops early", func(t *testing.T) {
		seg := wal.SegmentAt(b.EndTimeline, endLSN-1, 1<<20)
		pgdata := filepath.Join(root, "early")
		o := opts(pgdata, restore.Point{Latest: true})
		restore.SetAfterPlan(&o, func() {
			if err := os.Remove(filepath.Join(repoDir, filepath.FromSlash(seg.ObjectName()))); err != nil {
				t.Error(err)
			}
		})
		_, err := restore.Run(ctx, o)
		t.Logf("error: %v", err)
		if err == nil || !strings.Contains(err.Error(), "replay stopped early") || !strings.Contains(err.Error(), seg.Name()) {
			t.Errorf("restore whose replay stopped early: %v, want an error naming %s", err, seg.Name())
		}
		for _, d := range []string{pgdata, pgdata + ".synbak-restore"} {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("the failed restore left %s behind", d)
			}
		}
	})
}

// backedUp creates a repository the postgres user can read (restore_command
// runs as that user), starts a WAL receiver on c and takes a base backup.
func backedUp(t *testing.T, c *pgtest.Cluster) (repoDir string, r *repo.Repo, b *basebackup.Backup, stop func()) {
	t.Helper()
	repoDir = filepath.Join(t.TempDir(), "repo") // root-only (0700): the server never reads it
	r = repotest.New(t, repoDir, repotest.Zstd)
	stop = startReceiver(t, c, r)
	var err error
	b, err = basebackup.Take(context.Background(), c.ReplicationConn(t), r, basebackup.Options{
		Label: "test", PartSize: 1 << 20, WALTimeout: 2 * time.Minute,
		Facts: map[string]string{"main_database": "synapse"},
	}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return repoDir, r, b, stop
}
