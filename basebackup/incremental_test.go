package basebackup_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
)

// incrementalMajors are the majors of the matrix that have incremental
// backups (17 and later).
func incrementalMajors(t *testing.T) []int {
	t.Helper()
	return pgtest.MatrixMajorsFrom(t, 17)
}

var incConf = append(slices.Clone(clusterConf), "summarize_wal = on", "fsync = off")

func takeBackup(t *testing.T, c *pgtest.Cluster, r *repo.Repo, parent *basebackup.Backup) *basebackup.Backup {
	t.Helper()
	started := time.Now()
	b, err := basebackup.Take(context.Background(), c.ReplicationConn(t), r, basebackup.Options{
		PartSize: 4 << 20, WALTimeout: time.Minute, Incremental: parent,
	}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s backup %s (parent %q) took %s: %d bytes, %d stored; refused: %q", b.KindName(), b.ID, b.Parent,
		time.Since(started).Round(time.Millisecond), b.Size(), b.StoredSize(), b.IncrementalRefused)
	return b
}

// manifestFiles returns the paths the stored backup_manifest lists.
func manifestFiles(t *testing.T, r *repo.Repo, id string) []string {
	t.Helper()
	rd, err := r.Get(context.Background(), basebackup.ManifestName(id))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Files []struct {
			Path string `json:"Path"`
		} `json:"Files"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("manifest of %s: %v", id, err)
	}
	var out []string
	for _, f := range m.Files {
		out = append(out, f.Path)
	}
	return out
}

func countIncremental(paths []string) int {
	n := 0
	for _, p := range paths {
		base := p[strings.LastIndex(p, "/")+1:]
		if strings.HasPrefix(base, "INCREMENTAL.") {
			n++
		}
	}
	return n
}

// TestIncremental, on each PostgreSQL of 17 and later: a full backup,
// writes, an incremental on top of it, more writes, a second incremental on
// top of the first. The incrementals store a fraction of the full's bytes,
// their manifests list INCREMENTAL. files, backup.json names parent and
// chain, LoadChain returns the chain. Then the refusals: the middle backup
// deleted by hand (the chain is broken, naming it; an incremental asked
// for on top of it is a full backup), summarize_wal off (a full backup).
func TestIncremental(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	for _, major := range incrementalMajors(t) {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			ctx := context.Background()
			c := pgtest.Start(t, pgtest.Options{Major: major, InitdbArgs: initdbArgs, Conf: incConf})
			c.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
			c.Exec(t, "postgres", "CREATE TABLE dropped AS SELECT g AS id, repeat('d', 200) AS v FROM generate_series(1, 20000) g")
			c.Exec(t, "postgres", "CREATE TABLE truncated AS SELECT g AS id, repeat('t', 200) AS v FROM generate_series(1, 20000) g")
			dir := t.TempDir()
			// Uncompressed: the test takes eight backups, and zstd under
			// the race detector would take most of its time.
			r := repotest.New(t, dir, repo.Options{Compression: "none"})
			startReceiver(t, c, r)

			full := takeBackup(t, c, r, nil)
			if full.Kind != basebackup.KindFull || full.Parent != "" || len(full.Chain) != 0 || full.IncrementalRefused != "" {
				t.Fatalf("full backup: kind %q parent %q chain %v refused %q", full.Kind, full.Parent, full.Chain, full.IncrementalRefused)
			}
			if n := countIncremental(manifestFiles(t, r, full.ID)); n != 0 {
				t.Fatalf("the full backup's manifest lists %d INCREMENTAL. files", n)
			}

			c.Exec(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 2000 = 0")
			c.Exec(t, "postgres", "TRUNCATE truncated")
			c.Exec(t, "postgres", "DROP TABLE dropped")
			c.Exec(t, "postgres", "CREATE TABLE created AS SELECT g AS id FROM generate_series(1, 1000) g")
			inc1 := takeBackup(t, c, r, full)

			c.Exec(t, "postgres", "INSERT INTO pgbench_history SELECT 1, 1, g, 1, now() FROM generate_series(1, 5000) g")
			c.Exec(t, "postgres", "DELETE FROM created WHERE id > 500")
			c.Exec(t, "postgres", "VACUUM created")
			inc2 := takeBackup(t, c, r, inc1)

			for _, tc := range []struct {
				b     *basebackup.Backup
				chain []string
			}{{inc1, []string{full.ID}}, {inc2, []string{full.ID, inc1.ID}}} {
				b := tc.b
				if !b.Incremental() || b.Parent != tc.chain[len(tc.chain)-1] || !slices.Equal(b.Chain, tc.chain) || b.IncrementalRefused != "" {
					t.Fatalf("%s: kind %q parent %q chain %v refused %q, want incremental on %v", b.ID, b.Kind, b.Parent, b.Chain, b.IncrementalRefused, tc.chain)
				}
				stored, err := basebackup.Load(ctx, r, b.ID)
				if err != nil {
					t.Fatal(err)
				}
				if stored.Kind != basebackup.KindIncremental || stored.Parent != b.Parent || !slices.Equal(stored.Chain, tc.chain) {
					t.Fatalf("backup.json of %s: kind %q parent %q chain %v", b.ID, stored.Kind, stored.Parent, stored.Chain)
				}
				// Much smaller than the full backup: a few changed blocks
				// and the small files sent whole.
				if b.StoredSize()*4 > full.StoredSize() || b.Size()*4 > full.Size() {
					t.Errorf("incremental %s stores %d bytes (%d sent), the full %d (%d): want far less", b.ID, b.StoredSize(), b.Size(), full.StoredSize(), full.Size())
				}
				files := manifestFiles(t, r, b.ID)
				if n := countIncremental(files); n < 10 {
					t.Errorf("the manifest of %s lists %d INCREMENTAL. files of %d", b.ID, n, len(files))
				}
			}
			chain, err := basebackup.LoadChain(ctx, r, *inc2)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range chain {
				got = append(got, b.ID)
			}
			if want := []string{full.ID, inc1.ID, inc2.ID}; !slices.Equal(got, want) {
				t.Fatalf("LoadChain(%s) = %v, want %v", inc2.ID, got, want)
			}

			// summarize_wal off: a full backup instead, saying why.
			c.Exec(t, "postgres", "ALTER SYSTEM SET summarize_wal = off")
			c.Exec(t, "postgres", "SELECT pg_reload_conf()")
			waitFor(t, 30*time.Second, "summarize_wal off", func() bool {
				return c.Text(t, "postgres", "SHOW summarize_wal") == "off"
			})
			off := takeBackup(t, c, r, inc2)
			if off.Kind != basebackup.KindFull || off.Parent != "" || len(off.Chain) != 0 || off.IncrementalRefused == "" {
				t.Fatalf("with summarize_wal off: kind %q parent %q chain %v refused %q, want a full backup saying why", off.Kind, off.Parent, off.Chain, off.IncrementalRefused)
			}
			if n := countIncremental(manifestFiles(t, r, off.ID)); n != 0 {
				t.Fatalf("the fallback full backup's manifest lists %d INCREMENTAL. files", n)
			}
			c.Exec(t, "postgres", "ALTER SYSTEM SET summarize_wal = on")
			c.Exec(t, "postgres", "SELECT pg_reload_conf()")

			// The middle of the chain deleted by hand.
			if err := r.Delete(ctx, basebackup.MetaName(inc1.ID)); err != nil {
				t.Fatal(err)
			}
			_, err = basebackup.LoadChain(ctx, r, *inc2)
			var ce *basebackup.ChainError
			if !basebackup.IsChainBroken(err) || !errors.As(err, &ce) || !ce.Missing || ce.Member != inc1.ID {
				t.Fatalf("LoadChain with %s's backup.json deleted: %v, want a broken chain naming it", inc1.ID, err)
			}
			pruned := takeBackup(t, c, r, inc2)
			if pruned.Kind != basebackup.KindFull || pruned.IncrementalRefused == "" {
				t.Fatalf("on top of a broken chain: kind %q refused %q, want a full backup saying why", pruned.Kind, pruned.IncrementalRefused)
			}
			gone := takeBackup(t, c, r, inc1)
			if gone.Kind != basebackup.KindFull || gone.IncrementalRefused == "" {
				t.Fatalf("on top of a deleted parent: kind %q refused %q, want a full backup saying why", gone.Kind, gone.IncrementalRefused)
			}

			// The parent's stored manifest damaged: the upload fails on
			// its checksum, and a full backup is taken instead.
			mpath := filepath.Join(dir, filepath.FromSlash(basebackup.ManifestName(gone.ID)))
			data, err := os.ReadFile(mpath)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x5a
			if err := os.WriteFile(mpath, data, 0o600); err != nil {
				t.Fatal(err)
			}
			damaged := takeBackup(t, c, r, gone)
			if damaged.Kind != basebackup.KindFull || damaged.IncrementalRefused == "" {
				t.Fatalf("on top of a damaged manifest: kind %q refused %q, want a full backup saying why", damaged.Kind, damaged.IncrementalRefused)
			}
		})
	}
}

// TestIncrementalOtherTimeline: the parent was taken on a promoted standby
// (timeline 2) and copied into the repository of its old primary, which is
// still on timeline 1. PostgreSQL refuses the incremental ("timeline 2 found
// in manifest, but not in this server's history", SQLSTATE 55000) after
// the manifest upload, and Take takes a full backup on the same connection.
func TestIncrementalOtherTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	majors := incrementalMajors(t)
	major := majors[len(majors)-1]
	ctx := context.Background()
	primary := pgtest.Start(t, pgtest.Options{Major: major, InitdbArgs: initdbArgs, Conf: incConf})
	primary.Exec(t, "postgres", "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g")
	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: incConf})
	standby.Promote(t)
	if tli := standby.IdentifySystem(t).Timeline; tli < 2 {
		t.Fatalf("promoted standby on timeline %d", tli)
	}

	r2 := newRepo(t, t.TempDir())
	startReceiver(t, standby, r2)
	parent := takeBackup(t, standby, r2, nil)
	if parent.Timeline < 2 {
		t.Fatalf("the standby's backup is on timeline %d", parent.Timeline)
	}

	r := newRepo(t, t.TempDir())
	startReceiver(t, primary, r)
	for _, name := range []string{basebackup.MetaName(parent.ID), basebackup.ManifestName(parent.ID)} {
		rd, err := r2.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := r2.Stat(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Put(ctx, name, rd, info.Attrs)
		rd.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	b := takeBackup(t, primary, r, parent)
	if b.Kind != basebackup.KindFull || b.Parent != "" || b.IncrementalRefused == "" || b.Timeline != 1 {
		t.Fatalf("on top of a timeline-2 parent on a timeline-1 server: kind %q parent %q refused %q timeline %d, want a full backup saying why",
			b.Kind, b.Parent, b.IncrementalRefused, b.Timeline)
	}
	if n := countIncremental(manifestFiles(t, r, b.ID)); n != 0 {
		t.Fatalf("the fallback full backup's manifest lists %d INCREMENTAL. files", n)
	}
}
