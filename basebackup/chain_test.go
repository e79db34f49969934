package basebackup

import (
	"github.com/jackc/pglogrepl"

	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
)

type chainFix struct {
	t                *testing.T
	ctx              context.Context
	r                *repo.Repo
	full, inc1, inc2 Backup
}

// newChainFix stores a full backup and two incrementals on top of it.
func newChainFix(t *testing.T) *chainFix {
	t.Helper()
	f := &chainFix{t: t, ctx: context.Background(), r: repotest.New(t, t.TempDir(), repotest.Zstd)}
	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	mk := func(i int, kind, parent string, chain []string) Backup {
		st := t0.Add(time.Duration(i) * time.Hour)
		return Backup{ID: NewID(st), StartTime: st, StartLSN: pglogrepl.LSN(i+1) << 24, EndLSN: pglogrepl.LSN(i+1)<<24 + 100,
			SystemID: "7000", PGVersion: 170010, Kind: kind, Parent: parent, Chain: chain}
	}
	f.full = mk(0, KindFull, "", nil)
	f.inc1 = mk(1, KindIncremental, f.full.ID, []string{f.full.ID})
	f.inc2 = mk(2, KindIncremental, f.inc1.ID, []string{f.full.ID, f.inc1.ID})
	for _, b := range []*Backup{&f.full, &f.inc1, &f.inc2} {
		if err := storeMeta(f.ctx, f.r, b); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestLoadChain(t *testing.T) {
	f := newChainFix(t)
	full, inc1, inc2 := f.full, f.inc1, f.inc2
	got, err := LoadChain(f.ctx, f.r, inc2)
	if err != nil {
		t.Fatal(err)
	}
	if g := ids(got); !slices.Equal(g, []string{full.ID, inc1.ID, inc2.ID}) {
		t.Fatalf("chain of %s = %v, want full, inc1, inc2", inc2.ID, g)
	}
	got, err = LoadChain(f.ctx, f.r, full)
	if err != nil || len(got) != 1 || got[0].ID != full.ID {
		t.Fatalf("chain of a full backup = %v, %v; want just itself", ids(got), err)
	}
	if !inc2.Incremental() || full.Incremental() || (Backup{}).Incremental() || (Backup{}).KindName() != KindFull {
		t.Error("Incremental/KindName disagree with Kind")
	}

	// An old backup.json (no kind) is a full backup.
	old := full
	old.Kind = ""
	if err := CheckChainMeta(old); err != nil {
		t.Errorf("backup without kind: %v", err)
	}

	// The middle member deleted by hand: the chain is broken, naming it.
	if err := f.r.Delete(f.ctx, MetaName(inc1.ID)); err != nil {
		t.Fatal(err)
	}
	_, err = LoadChain(f.ctx, f.r, inc2)
	var ce *ChainError
	if !IsChainBroken(err) || !errors.As(err, &ce) || !ce.Missing || ce.Member != inc1.ID || ce.ID != inc2.ID {
		t.Fatalf("chain with %s deleted: %v (%+v), want a ChainError naming it as missing", inc1.ID, err, ce)
	}
}

func TestCheckChainInconsistent(t *testing.T) {
	f := newChainFix(t)
	full, inc1, inc2 := f.full, f.inc1, f.inc2
	other := inc1
	other.SystemID = "7001"
	wrongParent := inc2
	wrongParent.Chain = []string{inc1.ID}
	wrongParent.Parent = inc1.ID
	selfChain := inc2
	selfChain.Chain = []string{full.ID, inc2.ID}
	selfChain.Parent = inc2.ID
	fullWithParent := full
	fullWithParent.Parent = "x"
	incFirst := inc1
	otherMajor := inc1
	otherMajor.PGVersion = 180004
	tests := []struct {
		name   string
		chain  []Backup
		member string
	}{
		{"other system", []Backup{full, other, inc2}, inc1.ID},
		{"chain skips the full backup", []Backup{inc1, wrongParent}, inc1.ID},
		{"names itself", []Backup{full, selfChain}, inc2.ID},
		{"full backup with a parent", []Backup{fullWithParent}, full.ID},
		{"incremental first", []Backup{incFirst}, inc1.ID},
		{"another major", []Backup{full, otherMajor}, inc1.ID},
		{"out of order", []Backup{full, inc2}, inc2.ID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckChain(tc.chain)
			var ce *ChainError
			if !IsChainBroken(err) || !errors.As(err, &ce) || ce.Member != tc.member || ce.Missing {
				t.Fatalf("CheckChain = %v (%+v), want a ChainError at %s", err, ce, tc.member)
			}
		})
	}
	if err := CheckChain([]Backup{full, inc1, inc2}); err != nil {
		t.Fatalf("a good chain: %v", err)
	}
}

func TestDependents(t *testing.T) {
	f := newChainFix(t)
	full, inc1, inc2 := f.full, f.inc1, f.inc2
	lone := Backup{ID: "lone"}
	d := Dependents([]Backup{full, inc1, inc2, lone})
	if !slices.Equal(d[full.ID], []string{inc1.ID, inc2.ID}) || !slices.Equal(d[inc1.ID], []string{inc2.ID}) || len(d[inc2.ID]) != 0 || len(d) != 2 {
		t.Fatalf("Dependents = %v", d)
	}
}

func TestChooseParent(t *testing.T) {
	f := newChainFix(t)
	at := f.full.StartTime.Add(72 * time.Hour)
	for _, tc := range []struct {
		name     string
		mode     Mode
		interval time.Duration
		want     string
	}{
		{"auto, full young enough", ModeAuto, 7 * 24 * time.Hour, f.inc2.ID},
		{"auto, full too old", ModeAuto, 48 * time.Hour, ""},
		{"auto, full_interval 0", ModeAuto, 0, ""},
		{"incremental ignores the age", ModeIncremental, time.Hour, f.inc2.ID},
		{"full", ModeFull, 7 * 24 * time.Hour, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, reason, err := ChooseParent(f.ctx, f.r, tc.mode, tc.interval, at)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if p != nil {
				got = p.ID
			}
			if got != tc.want || (p == nil && tc.mode != ModeFull && reason == "") {
				t.Fatalf("ChooseParent = %q (%q), want %q", got, reason, tc.want)
			}
		})
	}
	// A chain with a member missing is never built on.
	if err := f.r.Delete(f.ctx, MetaName(f.inc1.ID)); err != nil {
		t.Fatal(err)
	}
	p, reason, err := ChooseParent(f.ctx, f.r, ModeIncremental, 0, at)
	if err != nil || p != nil || reason == "" {
		t.Fatalf("ChooseParent over a broken chain = %v, %q, %v; want none, with the reason", p, reason, err)
	}
	// An empty repository: a full backup.
	empty := repotest.New(t, t.TempDir(), repotest.Zstd)
	p, reason, err = ChooseParent(f.ctx, empty, ModeAuto, time.Hour, at)
	if err != nil || p != nil || reason == "" {
		t.Fatalf("ChooseParent in an empty repository = %v, %q, %v", p, reason, err)
	}
}
