package dump_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage/local"
)

const (
	role     = "synapse_user"
	password = "s3cret-Dump-Pw-7f4e"
)

// source starts a cluster with a Synapse-shaped database "synapse" owned by
// synapse_user (password-authenticated), filled with events, users, media
// rows and one-time keys.
func source(t *testing.T, events int) *pgtest.Cluster {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	c.CreatePasswordRole(t, role, password)
	c.Exec(t, "postgres", "CREATE DATABASE synapse OWNER "+role+" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
	// Everything the harness creates in synapse as postgres is created as
	// synapse_user, as Synapse would.
	c.Exec(t, "postgres", "ALTER ROLE postgres IN DATABASE synapse SET role = "+role)
	c.CreateSynapseSchema(t, "synapse")
	c.FillSynapse(t, "synapse", events)
	if n := c.Int64(t, "synapse", "SELECT count(*) FROM e2e_one_time_keys_json"); n == 0 {
		t.Fatal("the fixture has no one-time keys")
	}
	return c
}

func srcParams(c *pgtest.Cluster) map[string]string {
	return map[string]string{"host": "127.0.0.1", "port": fmt.Sprint(c.Port), "user": role, "password": password, "dbname": "synapse", "sslmode": "disable"}
}

func targetParams(c *pgtest.Cluster, db string) map[string]string {
	return map[string]string{"host": "127.0.0.1", "port": fmt.Sprint(c.Port), "user": "postgres", "dbname": db, "sslmode": "disable"}
}

func take(t *testing.T, r *repo.Repo, src *pgtest.Cluster, opts dump.Options) dump.Dump {
	t.Helper()
	opts.Sources = []dump.Source{{Params: srcParams(src), Origin: "test source", Stores: []string{"main", "state"}}}
	d, err := dump.Take(context.Background(), r, opts, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// tableSums returns, per table of the public schema, its row count and an
// md5 of its rows in a canonical order.
func tableSums(t *testing.T, c *pgtest.Cluster, db string) map[string]string {
	t.Helper()
	conn := c.Conn(t, db)
	ctx := context.Background()
	rows, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, s)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	out := map[string]string{}
	for _, tb := range tables {
		var n int64
		var sum *string
		q := fmt.Sprintf(`SELECT count(*), md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM public.%q x`, tb)
		if err := conn.QueryRow(ctx, q).Scan(&n, &sum); err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		s := "-"
		if sum != nil {
			s = *sum
		}
		out[tb] = fmt.Sprintf("%d rows, md5 %s", n, s)
	}
	return out
}

func TestDumpRoundTrip(t *testing.T) {
	src := source(t, 3000)
	dst := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	dst.Exec(t, "postgres", "CREATE ROLE "+role+" LOGIN")
	r := repotest.New(t, t.TempDir(), repotest.Zstd)

	// The password never shows in the process list while pg_dump runs.
	var psChecked bool
	d := take(t, r, src, dump.Options{PartSize: 256 << 10, OnStart: func(pid int) {
		out, err := exec.Command("ps", "-eo", "pid,args").Output()
		if err != nil {
			t.Errorf("ps: %v", err)
			return
		}
		var line string
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == fmt.Sprint(pid) {
				line = l
			}
		}
		if !strings.Contains(line, "pg_dump") || !strings.Contains(line, "user="+role) {
			t.Errorf("pg_dump (pid %d) not found in ps output:\n%s", pid, out)
		}
		if strings.Contains(string(out), password) {
			t.Errorf("the password is visible in ps output:\n%s", out)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || strings.Contains(string(cmdline), password) {
			t.Errorf("/proc/%d/cmdline: %v, holds the password: %v", pid, err, strings.Contains(string(cmdline), password))
		}
		psChecked = true
	}})
	if !psChecked {
		t.Fatal("OnStart was not called")
	}
	db := d.Main()
	if len(db.Parts) < 2 || db.Size == 0 || db.Owner != role || db.ServerVersionNum < 150000 || !strings.Contains(db.PgDump, "pg_dump (PostgreSQL)") {
		t.Fatalf("unexpected metadata: %+v", db)
	}
	if strings.Contains(strings.Join(db.Command, " "), password) {
		t.Fatalf("the recorded command holds the password: %q", db.Command)
	}
	if !strings.Contains(strings.Join(db.Command, " "), "--exclude-table-data=e2e_one_time_keys_json") {
		t.Fatalf("command %q", db.Command)
	}
	if got, err := dump.Find(context.Background(), r, "latest"); err != nil || got.ID != d.ID {
		t.Fatalf("Find(latest) = %v, %v", got.ID, err)
	}

	opts := dump.RestoreOptions{Targets: []dump.Target{{Params: targetParams(dst, ""), Origin: "--target-dsn"}}, Jobs: 2, WorkDir: t.TempDir()}
	plan, err := dump.PlanRestore(context.Background(), r, d, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Databases) != 1 || plan.Databases[0].Database != "synapse" || plan.Databases[0].Owner != role || plan.Databases[0].Exists {
		t.Fatalf("plan %+v", plan)
	}
	rep, err := dump.Restore(context.Background(), r, d, opts, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Databases[0].Created || rep.Databases[0].OneTimeKeysTruncated != 0 || rep.Databases[0].Tables == 0 {
		t.Fatalf("report %+v", rep.Databases[0])
	}

	want, got := tableSums(t, src, "synapse"), tableSums(t, dst, "synapse")
	if len(want) < 10 {
		t.Fatalf("only %d tables in the source", len(want))
	}
	var names []string
	for tb := range want {
		names = append(names, tb)
	}
	sort.Strings(names)
	for _, tb := range names {
		if tb == dump.OneTimeKeysTable {
			if got[tb] != "0 rows, md5 -" {
				t.Errorf("%s restored as %s, want empty", tb, got[tb])
			}
			continue
		}
		if got[tb] != want[tb] {
			t.Errorf("%s: restored %s, source %s", tb, got[tb], want[tb])
		}
	}
	if len(got) != len(want) {
		t.Errorf("restored %d tables, source has %d", len(got), len(want))
	}
	// Created as Synapse's docs say, everything owned by the owner.
	if s := dst.Text(t, "postgres", "SELECT pg_encoding_to_char(encoding) || ' ' || datcollate || ' ' || datctype || ' ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'synapse'"); s != "UTF8 C C "+role {
		t.Errorf("database created as %q", s)
	}
	if n := dst.Int64(t, "synapse", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> $1", role); n != 0 {
		t.Errorf("%d tables not owned by %s", n, role)
	}
	// The restored database is healthy by PostgreSQL's own check.
	if out, err := dst.RunAsServerUser(context.Background(), filepath.Join(dst.BinDir, "pg_amcheck"), "-h", "127.0.0.1", "-p", fmt.Sprint(dst.Port), "-U", "postgres", "--install-missing", "-d", "synapse").CombinedOutput(); err != nil {
		t.Errorf("pg_amcheck: %v\n%s", err, out)
	}

	// A second restore into the same, now populated, database is refused
	// and changes nothing.
	before := tableSums(t, dst, "synapse")
	_, err = dump.Restore(context.Background(), r, d, opts, pgtest.Logger(t))
	if !dump.IsTargetNotEmpty(err) || !strings.Contains(err.Error(), "never restored over an existing database") {
		t.Fatalf("restore over a populated database: %v", err)
	}
	if after := tableSums(t, dst, "synapse"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("the refused restore changed the database")
	}
}

// A dump made by hand (or by an older synbak) with the one-time keys'
// rows: the restore empties the table and says how many rows it deleted.
func TestRestoreTruncatesOneTimeKeys(t *testing.T) {
	src := source(t, 300)
	r := repotest.New(t, t.TempDir(), repotest.Zstd)
	keys := src.Int64(t, "synapse", "SELECT count(*) FROM e2e_one_time_keys_json")
	d := takeWith(t, r, src, func(args []string) []string {
		var out []string
		for _, a := range args {
			if !strings.HasPrefix(a, "--exclude-table-data") {
				out = append(out, a)
			}
		}
		return out
	})
	dst := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	rep, err := dump.Restore(context.Background(), r, d, dump.RestoreOptions{Owner: "postgres",
		Targets: []dump.Target{{Params: targetParams(dst, "restored"), Origin: "--target-dsn"}}, WorkDir: t.TempDir()}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Databases[0].OneTimeKeysTruncated != keys || rep.Databases[0].Database != "restored" {
		t.Fatalf("truncated %d one-time keys into %q, the source has %d", rep.Databases[0].OneTimeKeysTruncated, rep.Databases[0].Database, keys)
	}
	if n := dst.Int64(t, "restored", "SELECT count(*) FROM e2e_one_time_keys_json"); n != 0 {
		t.Fatalf("%d one-time keys left", n)
	}
	if n := dst.Int64(t, "restored", "SELECT count(*) FROM event_json"); n != src.Int64(t, "synapse", "SELECT count(*) FROM event_json") {
		t.Fatalf("event_json: %d rows", n)
	}
}

func TestRestoreRefusals(t *testing.T) {
	src := source(t, 200)
	r := repotest.New(t, t.TempDir(), repotest.Zstd)
	repoDir := t.TempDir()
	rCopy := repotest.New(t, repoDir, repotest.Zstd)
	d := take(t, r, src, dump.Options{})
	dc := take(t, rCopy, src, dump.Options{PartSize: 64 << 10})

	dst := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	dst.CreatePasswordRole(t, "restorer", "right-password", "CREATEDB")
	ctx := context.Background()
	databases := func() string {
		return dst.Text(t, "postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
	}
	initial := databases()

	t.Run("wrong credentials", func(t *testing.T) {
		p := targetParams(dst, "synapse")
		p["user"], p["password"] = "restorer", "wrong-password"
		_, err := dump.Restore(ctx, r, d, dump.RestoreOptions{Targets: []dump.Target{{Params: p, Origin: "--target-dsn"}}, WorkDir: t.TempDir()}, pgtest.Logger(t))
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") || strings.Contains(err.Error(), "wrong-password") {
			t.Fatalf("err = %v", err)
		}
		if databases() != initial {
			t.Fatalf("databases now %s", databases())
		}
	})

	t.Run("target has tables", func(t *testing.T) {
		dst.Exec(t, "postgres", "CREATE DATABASE busy ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
		dst.Exec(t, "busy", "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)")
		_, err := dump.Restore(ctx, r, d, dump.RestoreOptions{Owner: "postgres", Targets: []dump.Target{{Params: targetParams(dst, "busy"), Origin: "--target-dsn"}}, WorkDir: t.TempDir()}, pgtest.Logger(t))
		if !dump.IsTargetNotEmpty(err) || !strings.Contains(err.Error(), "public.keep_me") {
			t.Fatalf("err = %v", err)
		}
		if n := dst.Int64(t, "busy", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"); n != 1 {
			t.Fatalf("%d tables in busy", n)
		}
	})

	t.Run("an empty existing database is used", func(t *testing.T) {
		dst.Exec(t, "postgres", "CREATE DATABASE empty ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
		rep, err := dump.Restore(ctx, r, d, dump.RestoreOptions{Targets: []dump.Target{{Params: targetParams(dst, "empty"), Origin: "--target-dsn"}}, WorkDir: t.TempDir()}, pgtest.Logger(t))
		if err != nil || rep.Databases[0].Created || rep.Databases[0].Tables == 0 {
			t.Fatalf("rep %+v, err %v", rep.Databases, err)
		}
	})

	t.Run("flipped byte", func(t *testing.T) {
		// Flip one byte in the middle of the second part's payload.
		name := filepath.Join(repoDir, filepath.FromSlash(dump.PartName(dc.ID, "synapse", 1)))
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0x40
		if err := os.Chmod(name, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		p := targetParams(dst, "fromcorrupt")
		_, err = dump.Restore(ctx, rCopy, dc, dump.RestoreOptions{Owner: "postgres", Targets: []dump.Target{{Params: p, Origin: "--target-dsn"}}, WorkDir: t.TempDir()}, pgtest.Logger(t))
		if !repo.IsCorrupt(err) {
			t.Fatalf("err = %v", err)
		}
		if dst.Int64(t, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'fromcorrupt'") != 0 {
			t.Fatal("a database was created from a corrupt dump")
		}
	})

	t.Run("older target server or pg_restore", func(t *testing.T) {
		newer := d
		newer.Databases = append([]dump.Database(nil), d.Databases...)
		newer.Databases[0].ServerVersionNum = (dump.MajorOf(d.Main().ServerVersionNum)+1)*10000 + 2
		newer.Databases[0].PgDump = "pg_dump (PostgreSQL) newer"
		_, err := dump.PlanRestore(ctx, r, newer, dump.RestoreOptions{Targets: []dump.Target{{Params: targetParams(dst, "newer"), Origin: "--target-dsn"}}})
		if err == nil || !strings.Contains(err.Error(), "at least as new as the dump") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("two databases, one target", func(t *testing.T) {
		two := d
		two.Databases = append(append([]dump.Database(nil), d.Databases...), d.Databases[0])
		_, err := dump.PlanRestore(ctx, r, two, dump.RestoreOptions{Targets: []dump.Target{{Params: targetParams(dst, "x"), Origin: "--target-dsn"}}})
		if err == nil || !strings.Contains(err.Error(), "--target-state-dsn") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestTakeRefusals(t *testing.T) {
	src := source(t, 10)
	r := repotest.New(t, t.TempDir(), repotest.Zstd)
	p := srcParams(src)
	p["password"] = "not-the-password"
	_, err := dump.Take(context.Background(), r, dump.Options{Sources: []dump.Source{{Params: p, Origin: "homeserver.yaml database"}}}, pgtest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "password authentication failed") || strings.Contains(err.Error(), "not-the-password") {
		t.Fatalf("err = %v", err)
	}
	// A role that may connect but not read the tables (a replication-only
	// role, say): pg_dump's refusal, with what to do.
	src.CreatePasswordRole(t, "replicator", "rep-pw", "REPLICATION")
	p = srcParams(src)
	p["user"], p["password"] = "replicator", "rep-pw"
	_, err = dump.Take(context.Background(), r, dump.Options{Sources: []dump.Source{{Params: p, Origin: "postgres.dsn"}}}, pgtest.Logger(t))
	if !dump.IsTool(err) || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "GRANT pg_read_all_data TO \"replicator\"") {
		t.Fatalf("err = %v", err)
	}
	// Neither left a complete dump; the second left an incomplete one at
	// most (parts stored before pg_dump failed), never a dump.json.
	if c, _, err := dump.Scan(context.Background(), r); err != nil || len(c) != 0 {
		t.Fatalf("complete dumps after failed takes: %v %v", c, err)
	}
}

// In an encrypted repository the dump is encrypted like everything else:
// it restores with the identity and not without it.
func TestDumpEncrypted(t *testing.T) {
	src := source(t, 100)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := repotest.New(t, dir, repo.Options{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}})
	d := take(t, r, src, dump.Options{})
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	noKey, err := repo.Open(context.Background(), b, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	opts := dump.RestoreOptions{Owner: "postgres", Targets: []dump.Target{{Params: targetParams(dst, "synapse"), Origin: "--target-dsn"}}, WorkDir: t.TempDir()}
	if _, err := dump.Restore(context.Background(), noKey, d, opts, pgtest.Logger(t)); !repo.IsEncryption(err) {
		t.Fatalf("restore without the identity: %v", err)
	}
	if dst.Int64(t, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'synapse'") != 0 {
		t.Fatal("a database was created without a readable dump")
	}
	if _, err := dump.Restore(context.Background(), r, d, opts, pgtest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if n, want := dst.Int64(t, "synapse", "SELECT count(*) FROM event_json"), src.Int64(t, "synapse", "SELECT count(*) FROM event_json"); n != want {
		t.Fatalf("event_json: %d rows, want %d", n, want)
	}
}

func TestToolArgsKeepThePasswordOut(t *testing.T) {
	for _, cs := range []string{
		"host=db.example port=5433 user=synapse password='pa ss\\'w' dbname=synapse sslmode=require",
		"postgresql://synapse:pa%20ss%27w@db.example:5433/synapse?sslmode=require",
	} {
		p, err := pgsource.Params(cs)
		if err != nil {
			t.Fatal(err)
		}
		ci, env, err := pgsource.ToolArgs(p)
		if err != nil {
			t.Fatal(err)
		}
		if ci != "dbname=synapse host=db.example port=5433 sslmode=require user=synapse" {
			t.Errorf("%s: conninfo %q", cs, ci)
		}
		if len(env) != 1 || env[0] != "PGPASSWORD=pa ss'w" {
			t.Errorf("%s: env %q", cs, env)
		}
	}
}

// takeWith takes a dump with pg_dump's fixed arguments changed by f.
func takeWith(t *testing.T, r *repo.Repo, src *pgtest.Cluster, f func([]string) []string) dump.Dump {
	t.Helper()
	undo := dump.SetPgDumpArgs(f)
	defer undo()
	return take(t, r, src, dump.Options{})
}

// A cancelled dump ends at once even while pg_dump waits for a lock, and
// leaves pg_dump killed and no complete dump behind.
func TestTakeCancelledWhileWaitingForALock(t *testing.T) {
	src := source(t, 10)
	r := repotest.New(t, t.TempDir(), repotest.Zstd)
	ctx := context.Background()
	conn := src.Conn(t, "synapse")
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE events IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var pid int
	errc := make(chan error, 1)
	go func() {
		_, err := dump.Take(dctx, r, dump.Options{Sources: []dump.Source{{Params: srcParams(src), Origin: "test"}}, OnStart: func(p int) { pid = p }}, pgtest.Logger(t))
		errc <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for src.Int64(t, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("pg_dump never waited for the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Take did not return after the cancellation")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("pg_dump (pid %d) still runs: %s", pid, st)
		}
	}
	if c, _, err := dump.Scan(ctx, r); err != nil || len(c) != 0 {
		t.Fatalf("complete dumps: %v %v", c, err)
	}
}
