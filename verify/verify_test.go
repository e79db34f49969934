package verify_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/verify"
)

// TestVerifyDumps takes a real dump (pg_dump into parts, dump.json last)
// and an incomplete one, then breaks a copy of the repository per case:
// verify names the dump and the part; an incomplete dump is no problem.
func TestVerifyDumps(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	ctx := context.Background()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	c.Exec(t, "postgres", "CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 20000) i")
	dir := filepath.Join(t.TempDir(), "repo")
	r := repotest.New(t, dir, repotest.Zstd)
	d, err := dump.Take(ctx, r, dump.Options{PartSize: 256 << 10, Sources: []dump.Source{{
		Params: map[string]string{"host": "127.0.0.1", "port": fmt.Sprint(c.Port), "user": "postgres", "dbname": "postgres", "sslmode": "disable"},
		Origin: "test", Stores: []string{"main"},
	}}}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	db := d.Databases[0]
	if len(db.Parts) < 2 {
		t.Fatalf("the dump has %d parts; the test needs 2", len(db.Parts))
	}
	// An interrupted dump: a part, no dump.json.
	if _, err := r.Put(ctx, dump.PartName(dump.NewID(d.StartTime.Add(1)), "postgres", 0), strings.NewReader("PGDMP partial"), nil); err != nil {
		t.Fatal(err)
	}
	part0, part1 := dump.PartName(d.ID, db.Name, 0), dump.PartName(d.ID, db.Name, 1)

	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, dir string)
		want   []string // substrings of one problem line
	}{
		{name: "healthy"},
		// Another object's bytes under a part's name: the binding of name
		// and content (object format version 2) catches it.
		{name: "a part replaced by another valid object", break_: func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(dir, dump.MetaName(d.ID)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, part1), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: []string{part1, "dump " + d.ID + " is unusable", "binding"}},
		{name: "a part missing", break_: func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, part0)); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"dump " + d.ID + " unusable", part0, "is missing"}},
		{name: "a flipped byte in a part", break_: func(t *testing.T, dir string) {
			p := filepath.Join(dir, part1)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x5a
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: []string{part1, "dump " + d.ID + " is unusable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := filepath.Join(t.TempDir(), "repo")
			if out, err := exec.Command("cp", "-a", dir, cp).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			if tc.break_ != nil {
				tc.break_(t, cp)
			}
			b, err := local.New(cp)
			if err != nil {
				t.Fatal(err)
			}
			r, err := repo.Open(ctx, b, repotest.Zstd)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := verify.Run(ctx, r, verify.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.IncompleteDumps != 1 {
				t.Errorf("incomplete dumps %d, want 1", rep.IncompleteDumps)
			}
			if tc.break_ == nil {
				if !rep.OK() || rep.Dumps != 1 {
					t.Errorf("healthy repository: %d dumps, problems %q", rep.Dumps, rep.Problems)
				}
				return
			}
			found := false
			for _, p := range rep.Problems {
				ok := true
				for _, w := range tc.want {
					ok = ok && strings.Contains(p, w)
				}
				found = found || ok
			}
			if !found {
				t.Errorf("no problem with %q in %q", tc.want, rep.Problems)
			}
		})
	}
}
