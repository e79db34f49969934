package restore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

// TestRestoreIncrementalChain backs up a cluster as a full backup and two
// incrementals on top of it, with every kind of change between them (rows
// updated and inserted, a TRUNCATE, a dropped and a new table, a relation
// extended by new blocks and one shrunk by VACUUM), and restores to a time
// after each incremental: every table's row count and content checksum
// equal the source's at that time, and amcheck finds nothing. Then, with
// writes quiesced, a full backup and a third incremental taken back to
// back restore to the same relation files, byte for byte.
func TestRestoreIncrementalChain(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	for _, major := range pgtest.MatrixMajorsFrom(t, 17) {
		t.Run(fmt.Sprintf("PostgreSQL %d", major), func(t *testing.T) { testIncrementalChain(t, major) })
	}
}

func testIncrementalChain(t *testing.T, major int) {
	ctx := context.Background()
	// Data checksums make PostgreSQL WAL-log hint-bit changes (a full page
	// image the first time a page is hinted after a checkpoint), so the
	// WAL summaries name every block whose bytes changed; without them a
	// block hinted between two backups differs between an incremental and
	// a full backup of the same moment, and only the file-by-file
	// comparison would notice. (PostgreSQL 18's initdb turns them on by
	// default; 17's does not.) Autovacuum off: nothing writes but the
	// test.
	tsLoc := pgtest.ServerDir(t) // empty and owned by postgres, as CREATE TABLESPACE wants
	ts2Loc := pgtest.ServerDir(t)
	c := pgtest.Start(t, pgtest.Options{
		Major:      major,
		InitdbArgs: []string{"--wal-segsize=1", "--data-checksums"},
		Conf:       []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'", "summarize_wal = on", "autovacuum = off", "fsync = off"},
	})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	body := "repeat(md5(i::text), 6)"
	c.Exec(t, "postgres", fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", tsLoc))
	// A tablespace dropped after the full backup: the chain's restore must
	// not keep the full backup's link to the server's directory.
	c.Exec(t, "postgres", fmt.Sprintf("CREATE TABLESPACE ts2 LOCATION '%s'", ts2Loc))
	ts2OID := c.Text(t, "postgres", "select oid::text from pg_tablespace where spcname = 'ts2'")
	c.Exec(t, "synapse", "CREATE TABLE in_ts2 (id int) TABLESPACE ts2")
	c.Exec(t, "synapse", "INSERT INTO in_ts2 SELECT generate_series(1, 100)")
	for _, q := range []string{
		// A table in a tablespace: its INCREMENTAL. files are in the
		// tablespace's archive.
		"CREATE TABLE tsx (id int primary key, body text) TABLESPACE ts",
		"INSERT INTO tsx SELECT i, " + body + " FROM generate_series(1, 3000) i",
		"CREATE TABLE ext (id int primary key, body text)",
		"INSERT INTO ext SELECT i, " + body + " FROM generate_series(1, 3000) i",
		"CREATE TABLE shrink (id int primary key, body text)",
		"INSERT INTO shrink SELECT i, " + body + " FROM generate_series(1, 8000) i",
		"CREATE TABLE trunc (id int, body text)",
		"INSERT INTO trunc SELECT i, " + body + " FROM generate_series(1, 2000) i",
		"CREATE TABLE dropme (id int, body text)",
		"INSERT INTO dropme SELECT i, " + body + " FROM generate_series(1, 2000) i",
		"CREATE TABLE upd (id int primary key, v int, body text)",
		"INSERT INTO upd SELECT i, 0, " + body + " FROM generate_series(1, 3000) i",
		// Frozen, as an old database is: a later VACUUM skips the
		// untouched pages, so that the shrunk and extended relations go
		// into the incrementals as INCREMENTAL. files (a relation with
		// more than 90 % of its blocks changed is sent whole).
		"VACUUM (FREEZE)",
	} {
		c.Exec(t, "synapse", q)
	}
	repoDir := filepath.Join(pgtest.ServerDir(t), "repo")
	r := repotest.New(t, repoDir, repotest.Zstd)
	stop := startReceiver(t, c, r)
	take := func(parent *basebackup.Backup) basebackup.Backup {
		t.Helper()
		b, err := basebackup.Take(ctx, c.ReplicationConn(t), r, basebackup.Options{
			Label: "chain test", PartSize: 1 << 20, WALTimeout: 2 * time.Minute, Incremental: parent,
			Facts: map[string]string{"main_database": "synapse"},
		}, pgtest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		if parent != nil && (!b.Incremental() || b.Parent != parent.ID) {
			t.Fatalf("backup %s is %s with parent %q, want an incremental on %s (refused: %s)", b.ID, b.KindName(), b.Parent, parent.ID, b.IncrementalRefused)
		}
		return *b
	}
	relSize := func(rel string) int64 {
		var n int64
		fmt.Sscan(c.Text(t, "synapse", "select pg_relation_size($1)::text", rel), &n)
		return n
	}
	// at commits one more change and returns a server time after it and
	// before anything that follows, with the tables' contents then.
	at := func(q string) (time.Time, map[string]string) {
		c.Exec(t, "synapse", q)
		now := serverNow(t, c)
		sums := tableSums(t, c)
		timeAfter(t, c, now)
		return now, sums
	}

	full := take(nil)
	timeAfter(t, c, full.EndTime)
	c.Exec(t, "synapse", "UPDATE upd SET v = v + 1 WHERE id % 50 = 0")
	c.Exec(t, "synapse", "TRUNCATE trunc")
	c.Exec(t, "synapse", "INSERT INTO trunc SELECT i, 'after truncate' FROM generate_series(1, 10) i")
	c.Exec(t, "synapse", "INSERT INTO ext SELECT i, "+body+" FROM generate_series(3001, 3200) i")
	c.Exec(t, "synapse", "UPDATE tsx SET body = 'changed' WHERE id % 100 = 0")
	c.Exec(t, "synapse", "DROP TABLE in_ts2")
	c.Exec(t, "postgres", "DROP TABLESPACE ts2")
	inc1 := take(&full)
	timeAfter(t, c, inc1.EndTime)
	tA, sumsA := at("UPDATE upd SET v = v + 100 WHERE id = 1")

	extBefore, shrinkBefore := relSize("ext"), relSize("shrink")
	c.Exec(t, "synapse", "DROP TABLE dropme")
	c.Exec(t, "synapse", "CREATE TABLE newt AS SELECT i AS id, "+body+" AS body FROM generate_series(1, 1500) i")
	c.Exec(t, "synapse", "INSERT INTO ext SELECT i, "+body+" FROM generate_series(3201, 6000) i")
	c.Exec(t, "synapse", "DELETE FROM shrink WHERE id > 2000")
	c.Exec(t, "synapse", "VACUUM shrink")
	c.Exec(t, "synapse", "UPDATE upd SET v = v + 1 WHERE id % 7 = 0")
	c.Exec(t, "synapse", "INSERT INTO tsx SELECT i, "+body+" FROM generate_series(3001, 3500) i")
	if ext, shrink := relSize("ext"), relSize("shrink"); ext <= extBefore || shrink >= shrinkBefore {
		t.Fatalf("ext %d -> %d bytes, shrink %d -> %d: the test needs one relation extended and one shrunk", extBefore, ext, shrinkBefore, shrink)
	}
	inc2 := take(&inc1)
	// The relation files that exercise the reconstruction went into the
	// incremental as INCREMENTAL. files.
	inc2Files := manifestPaths(t, r, inc2.ID)
	for _, rel := range []string{"ext", "shrink", "tsx"} {
		path := c.Text(t, "synapse", "select pg_relation_filepath($1)", rel)
		inc := filepath.Dir(path) + "/INCREMENTAL." + filepath.Base(path) // pg_tblspc/<OID>/... for tsx
		if !slices.Contains(inc2Files, inc) {
			t.Errorf("backup %s lacks %s (the table %s sent incrementally)", inc2.ID, inc, rel)
		}
	}
	timeAfter(t, c, inc2.EndTime)
	tB, sumsB := at("UPDATE upd SET v = v + 1000 WHERE id = 2")
	if maps := fmt.Sprint(sumsB); !strings.Contains(maps, "newt:") || strings.Contains(maps, "dropme:") {
		t.Fatalf("tables at tB: %v", sumsB)
	}

	// Quiesced: a full backup and an incremental of the same moment.
	full3 := take(nil)
	inc3 := take(&inc2)
	lastSums := tableSums(t, c)
	switchAndWait(t, c, r)
	stop()

	chainIDs := func(p restore.Plan) []string {
		var ids []string
		for _, m := range p.Chain {
			ids = append(ids, m.ID)
		}
		return ids
	}
	restoreTo := func(target restore.Point, wantChain ...basebackup.Backup) (string, restore.Report) {
		t.Helper()
		p, err := restore.NewPlan(ctx, r, target)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, b := range wantChain {
			want = append(want, b.ID)
		}
		if got := chainIDs(p); !slices.Equal(got, want) {
			t.Fatalf("plan for %s: chain %v, want %v\n%s", target, got, want, p)
		}
		// The dry run's text lists the chain (none for a full backup).
		text := p.String()
		if strings.Contains(text, "backup chain:") != (len(want) > 1) {
			t.Errorf("plan text for a chain of %d:\n%s", len(want), text)
		}
		for i, b := range wantChain {
			if len(want) > 1 && !strings.Contains(text, fmt.Sprintf("%s (%s, ended", b.ID, b.KindName())) {
				t.Errorf("plan text lacks member %d, %s:\n%s", i+1, b.ID, text)
			}
		}
		pgdata := filepath.Join(pgtest.ServerDir(t), "data")
		rep, err := restore.Run(ctx, restore.Options{
			Repo: r, Prefetch: 4, Target: target, PGData: pgdata,
			Executable: pgtest.SynbakBinary(t), BinDir: c.BinDir, Log: pgtest.Logger(t),
		})
		if err != nil {
			t.Fatalf("restore to %s: %v", target, err)
		}
		return pgdata, rep
	}
	check := func(pgdata string, want map[string]string) {
		t.Helper()
		rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{BinDir: c.BinDir})
		if got := tableSums(t, rc); !equalMaps(got, want) {
			t.Errorf("restored tables differ from the source's:\n got %v\nwant %v", got, want)
		}
		amcheck(t, rc)
		rc.Stop(t)
	}

	t.Run("after the first incremental", func(t *testing.T) {
		pgdata, rep := restoreTo(restore.Point{Time: tA}, full, inc1)
		if !strings.Contains(rep.String(), "chain of 2 backups") {
			t.Errorf("report does not name the chain:\n%s", rep)
		}
		if _, err := os.Lstat(filepath.Join(pgdata, "pg_tblspc", ts2OID)); !os.IsNotExist(err) {
			t.Errorf("the dropped tablespace %s is still linked in the restore (%v)", ts2OID, err)
		}
		check(pgdata, sumsA)
	})
	t.Run("after the second incremental", func(t *testing.T) {
		pgdata, _ := restoreTo(restore.Point{Time: tB}, full, inc1, inc2)
		check(pgdata, sumsB)
	})
	t.Run("chain equals full", func(t *testing.T) {
		// The full backup restores for a target at its end (before the
		// incremental's), the chain for --latest; both replay the same WAL
		// to the end of the archive.
		fullData, _ := restoreTo(restore.Point{Time: full3.EndTime}, full3)
		chainData, _ := restoreTo(restore.Point{Latest: true}, full, inc1, inc2, inc3)
		compareRelationFiles(t, fullData, chainData)
		check(chainData, lastSums)
	})
	t.Run("broken chain refused", func(t *testing.T) {
		if err := r.Delete(ctx, basebackup.MetaName(inc1.ID)); err != nil {
			t.Fatal(err)
		}
		_, err := restore.NewPlan(ctx, r, restore.Point{Time: tB})
		if !restore.IsRefused(err) || !basebackup.IsChainBroken(err) || !strings.Contains(err.Error(), inc1.ID) || !strings.Contains(err.Error(), "restores from backup "+full.ID) {
			t.Fatalf("plan with %s gone: %v, want a refusal naming it and the full backup %s as the way out", inc1.ID, err, full.ID)
		}
		t.Logf("refusal: %v", err)
		pgdata := filepath.Join(pgtest.ServerDir(t), "data")
		_, err = restore.Run(ctx, restore.Options{Repo: r, Target: restore.Point{Time: tB}, PGData: pgdata,
			Executable: pgtest.SynbakBinary(t), BinDir: c.BinDir, Log: pgtest.Logger(t)})
		if !restore.IsRefused(err) {
			t.Errorf("restore with %s gone: %v, want refused", inc1.ID, err)
		}
		if _, err := os.Stat(pgdata); !os.IsNotExist(err) {
			t.Errorf("a refused restore wrote %s (%v)", pgdata, err)
		}
	})
}

// manifestPaths returns the paths backup id's backup_manifest lists.
func manifestPaths(t *testing.T, r *repo.Repo, id string) []string {
	t.Helper()
	rd, err := r.Get(context.Background(), basebackup.ManifestName(id))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var m struct {
		Files []struct {
			Path string `json:"Path"`
		} `json:"Files"`
	}
	if err := json.NewDecoder(rd).Decode(&m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range m.Files {
		out = append(out, f.Path)
	}
	return out
}

// tableSums returns "rows:md5 of the rows in order" for every table of the
// public schema of the synapse database.
func tableSums(t *testing.T, c *pgtest.Cluster) map[string]string {
	t.Helper()
	names := c.Text(t, "synapse", "select coalesce(string_agg(tablename, ',' order by tablename), '') from pg_tables where schemaname = 'public'")
	out := map[string]string{}
	for _, n := range strings.Split(names, ",") {
		if n == "" {
			continue
		}
		out[n] = c.Text(t, "synapse", fmt.Sprintf(`select count(*) || ':' || md5(coalesce(string_agg(x::text, '|' order by x::text), '')) from %q x`, n))
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// amcheck runs amcheck's heap and B-tree checks on every relation of the
// synapse database (the SQL functions: Debian's pg_amcheck is 15's).
func amcheck(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	c.Exec(t, "synapse", "CREATE EXTENSION IF NOT EXISTS amcheck")
	heap := c.Text(t, "synapse", `select count(*)::text || ' ' || coalesce(string_agg(c.relname || ': ' || v.msg, '; '), '')
		from pg_class c, verify_heapam(c.oid, check_toast => true) v
		where c.relkind in ('r', 'm', 't') and c.relpersistence = 'p'`)
	if heap != "0 " {
		t.Errorf("verify_heapam: %s", heap)
	}
	n := c.Text(t, "synapse", `select count(bt_index_check(c.oid, true))::text
		from pg_class c join pg_am am on am.oid = c.relam
		where c.relkind = 'i' and am.amname = 'btree' and c.relpersistence = 'p'`)
	if n == "0" {
		t.Error("bt_index_check checked no index")
	}
}

// relationFile matches the files of a relation's forks and segments.
var relationFile = regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)

// compareRelationFiles compares every relation file of two restored (and
// stopped) data directories byte for byte, a the full backup's restore and
// b the chain's. The one allowed difference: visibility maps the chain
// restore dropped because PostgreSQL's incremental backups cannot be
// trusted with them (extract.go, "Stale visibility maps"), or that replay
// recreated after the drop with a subset of the bits; a map the chain
// restore kept must equal the full backup's. Hint bits are WAL-logged here
// (data checksums), and nothing wrote between the two backups, so
// everything else must be equal.
func compareRelationFiles(t *testing.T, a, b string) {
	t.Helper()
	files := func(root string) map[string]bool {
		out := map[string]bool{}
		for _, dir := range []string{"base", "global"} {
			err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if d.Type().IsRegular() && relationFile.MatchString(d.Name()) {
					rel, _ := filepath.Rel(root, path)
					out[rel] = true
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		// Tablespaces, by their path in the data directory.
		links, err := os.ReadDir(filepath.Join(root, "pg_tblspc"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			dir, err := filepath.EvalSymlinks(filepath.Join(root, "pg_tblspc", l.Name()))
			if err != nil {
				t.Fatal(err)
			}
			err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if d.Type().IsRegular() && relationFile.MatchString(d.Name()) {
					rel, _ := filepath.Rel(dir, path)
					out[filepath.Join("pg_tblspc", l.Name(), rel)] = true
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if len(links) == 0 {
			t.Errorf("%s has no tablespace", root)
		}
		return out
	}
	fa, fb := files(a), files(b)
	var differ []string
	var vmDropped int
	for p := range fa {
		if !fb[p] && strings.HasSuffix(p, "_vm") {
			vmDropped++ // a visibility map the chain restore dropped: correct, if conservative
			continue
		}
		if !fb[p] {
			differ = append(differ, p+" (only from the full backup)")
			continue
		}
		da, err := os.ReadFile(filepath.Join(a, p))
		if err != nil {
			t.Fatal(err)
		}
		db, err := os.ReadFile(filepath.Join(b, p))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(p, "_vm") && !bytes.Equal(da, db) && vmSubset(db, da) {
			vmDropped++ // dropped, then recreated by replay with fewer bits
			continue
		}
		if !bytes.Equal(da, db) {
			i := firstDiff(da, db)
			differ = append(differ, fmt.Sprintf("%s (%d and %d bytes, first difference in block %d at byte %d)", p, len(da), len(db), i/8192, i%8192))
		}
	}
	for p := range fb {
		if !fa[p] {
			differ = append(differ, p+" (only from the chain)")
		}
	}
	if len(fa) < 100 {
		t.Errorf("only %d relation files compared", len(fa))
	}
	if len(differ) > 0 {
		slices.Sort(differ)
		t.Errorf("%d of %d relation files differ between the full backup's restore and the chain's: %s", len(differ), len(fa), strings.Join(differ, ", "))
	} else {
		t.Logf("%d relation files equal; %d visibility maps dropped by the chain restore", len(fa)-vmDropped, vmDropped)
	}
}

// vmSubset reports whether every visibility-map bit set in the pages of
// sub is set in those of super (page headers ignored).
func vmSubset(sub, super []byte) bool {
	for off := 0; off < len(sub); off += 8192 {
		for i := off + 24; i < off+8192 && i < len(sub); i++ {
			var sup byte
			if i < len(super) {
				sup = super[i]
			}
			if sub[i]&^sup != 0 {
				return false
			}
		}
	}
	return true
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// switchAndWait ends the open segment on c and waits until the repository
// has it.
func switchAndWait(t *testing.T, c *pgtest.Cluster, r *repo.Repo) {
	t.Helper()
	endLSN, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	tli := c.IdentifySystem(t).Timeline
	seg := wal.SegmentAt(uint32(tli), endLSN-1, 1<<20)
	waitFor(t, time.Minute, "WAL archived: "+seg.ObjectName(), func() bool {
		_, err := r.Stat(context.Background(), seg.ObjectName())
		return err == nil
	})
}
