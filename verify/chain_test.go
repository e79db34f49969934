package verify_test

import (
	"github.com/jackc/pglogrepl"

	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/verify"
)

// TestVerifyChains: a chain full <- inc1 <- inc2 with whole objects has no
// chain problem; with inc1's backup.json gone, inc2 is reported unusable
// naming inc1; with a part of the full backup damaged, both incrementals
// are reported unusable naming it.
func TestVerifyChains(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := repotest.New(t, dir, repotest.Zstd)
	put := func(name string, data []byte) basebackup.Object {
		t.Helper()
		res, err := r.Put(ctx, name, bytes.NewReader(data), map[string]string{"kind": "basebackup"})
		if err != nil {
			t.Fatal(err)
		}
		return basebackup.Object{Size: res.Size, StoredSize: res.StoredSize, Checksum: res.Checksum}
	}
	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	var chain []string
	var all []basebackup.Backup
	for i := range 3 {
		st := t0.Add(time.Duration(i) * time.Hour)
		b := basebackup.Backup{ID: basebackup.NewID(st), StartTime: st, EndTime: st.Add(time.Minute), SystemID: "7", PGVersion: 170010,
			StartLSN: pglogrepl.LSN(i+1) << 24, EndLSN: pglogrepl.LSN(i+1)<<24 + 0x100, Timeline: 1, EndTimeline: 1, SegmentSize: 1 << 24,
			Kind: basebackup.KindFull}
		if i > 0 {
			b.Kind, b.Parent, b.Chain = basebackup.KindIncremental, chain[len(chain)-1], append([]string{}, chain...)
		}
		part := put(basebackup.PartName(b.ID, "base.tar", 0), []byte(strings.Repeat("tar "+b.ID, 100)))
		b.Archives = []basebackup.Archive{{Name: "base.tar", Size: part.Size, StoredSize: part.StoredSize, Parts: []basebackup.Part{part}}}
		b.Manifest = put(basebackup.ManifestName(b.ID), []byte(`{"PostgreSQL-Backup-Manifest-Version": 2}`))
		meta, _ := json.Marshal(b)
		put(basebackup.MetaName(b.ID), meta)
		chain = append(chain, b.ID)
		all = append(all, b)
	}
	full, inc1, inc2 := all[0], all[1], all[2]

	run := func() []string {
		t.Helper()
		rep, err := verify.Run(ctx, r, verify.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range rep.Problems {
			if strings.Contains(p, "chain") {
				out = append(out, p)
			}
		}
		return out
	}
	has := func(problems []string, want ...string) bool {
		for _, p := range problems {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(p, w)
			}
			if ok {
				return true
			}
		}
		return false
	}
	if p := run(); len(p) != 0 {
		t.Fatalf("whole chain: problems %q", p)
	}

	// A part of the full backup damaged: both incrementals are unusable.
	path := filepath.Join(dir, filepath.FromSlash(basebackup.PartName(full.ID, "base.tar", 0)))
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[len(bad)/2] ^= 0x5a
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	p := run()
	for _, b := range []basebackup.Backup{inc1, inc2} {
		if !has(p, "backup "+b.ID+" unusable", "chain member "+full.ID, "damaged") {
			t.Errorf("damaged full backup: no problem for %s naming %s in %q", b.ID, full.ID, p)
		}
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}

	// inc1's backup.json deleted by hand: inc2 is unusable, naming inc1.
	if err := r.Delete(ctx, basebackup.MetaName(inc1.ID)); err != nil {
		t.Fatal(err)
	}
	p = run()
	if !has(p, "backup "+inc2.ID+" unusable", inc1.ID, "missing") || len(p) != 1 {
		t.Fatalf("inc1's backup.json gone: problems %q, want one naming %s for %s", p, inc1.ID, inc2.ID)
	}
}
