package wal_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/wal"
)

func TestCheckSegmentHeader(t *testing.T) {
	const segSize = 16 << 20
	seg := wal.SegmentAt(3, 0x2_0500_0000, segSize)
	st := wal.Settings{SystemID: "7312345678901234567", SegmentSize: segSize}
	sysid, _ := strconv.ParseUint(st.SystemID, 10, 64)
	good := func() []byte { return wal.LongPageHeader(seg, seg.TLI, sysid) }
	if err := wal.CheckSegmentHeader(good(), seg, st); err != nil {
		t.Fatalf("valid header: %v", err)
	}
	le := binary.LittleEndian
	for _, magic := range []uint16{0xD110, 0xD113, 0xD116, 0xD118} {
		h := good()
		le.PutUint16(h, magic)
		if err := wal.CheckSegmentHeader(h, seg, st); err != nil {
			t.Errorf("magic 0x%04X: %v", magic, err)
		}
	}
	// The first segment of a timeline starts with the previous timeline's
	// pages (copied up to the switch point).
	h := good()
	le.PutUint32(h[4:], 2)
	if err := wal.CheckSegmentHeader(h, seg, st); err != nil {
		t.Errorf("older timeline on the first page: %v", err)
	}
	for _, c := range []struct {
		what string
		fn   func(h []byte) []byte
	}{
		{"magic of PostgreSQL 14", func(h []byte) []byte { le.PutUint16(h, 0xD10D); return h }},
		{"zero page", func(h []byte) []byte { clear(h); return h }},
		{"short header", func(h []byte) []byte { le.PutUint16(h[2:], 0); return h }},
		{"newer timeline", func(h []byte) []byte { le.PutUint32(h[4:], 4); return h }},
		{"timeline 0", func(h []byte) []byte { le.PutUint32(h[4:], 0); return h }},
		{"next segment's page address", func(h []byte) []byte { le.PutUint64(h[8:], uint64(seg.EndLSN())); return h }},
		{"one bit of the page address", func(h []byte) []byte { h[11] ^= 1; return h }},
		{"another system identifier", func(h []byte) []byte { h[24] ^= 1; return h }},
		{"another segment size", func(h []byte) []byte { le.PutUint32(h[32:], 1<<20); return h }},
		{"implausible page size", func(h []byte) []byte { le.PutUint32(h[36:], 8191); return h }},
		{"truncated", func(h []byte) []byte { return h[:39] }},
		{"empty", func(h []byte) []byte { return nil }},
	} {
		err := wal.CheckSegmentHeader(c.fn(good()), seg, st)
		if !wal.IsSegmentMismatch(err) || !repo.IsCorrupt(err) {
			t.Errorf("%s: error %v, want IsSegmentMismatch and IsCorrupt", c.what, err)
		}
	}
}

// TestCheckSegmentHeaderRealWAL checks segments PostgreSQL wrote: the
// segments of a cluster pass, under another name or against another system
// identifier they fail; the first segment of a promoted standby's new
// timeline passes under its name.
func TestCheckSegmentHeaderRealWAL(t *testing.T) {
	primary := startCluster(t)
	sysid := primary.IdentifySystem(t).SystemID
	st := wal.Settings{SystemID: sysid, SegmentSize: 1 << 20}
	primary.Exec(t, "postgres", "create table x as select generate_series(1, 20000) i")
	cur := primary.Text(t, "postgres", "select pg_walfile_name(pg_current_wal_insert_lsn())")
	primary.Exec(t, "postgres", "select pg_switch_wal()")
	seg, err := wal.ParseSegmentName(cur, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	page := readPage(t, filepath.Join(primary.PgWalDir(), cur))
	if err := wal.CheckSegmentHeader(page, seg, st); err != nil {
		t.Fatalf("%s of its own cluster: %v", cur, err)
	}
	if err := wal.CheckSegmentHeader(page, seg.Next(), st); !wal.IsSegmentMismatch(err) {
		t.Errorf("%s under the next segment's name: %v, want a mismatch", cur, err)
	}
	other := st
	other.SystemID = "1" + sysid[1:]
	if other.SystemID == sysid {
		other.SystemID = "2" + sysid[1:]
	}
	if err := wal.CheckSegmentHeader(page, seg, other); !wal.IsSegmentMismatch(err) {
		t.Errorf("%s against another system identifier: %v, want a mismatch", cur, err)
	}

	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: clusterConf})
	lsn := primary.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	deadline := time.Now().Add(time.Minute)
	for !standby.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn) {
		if time.Now().After(deadline) {
			t.Fatal("standby did not replay")
		}
		time.Sleep(50 * time.Millisecond)
	}
	standby.Promote(t)
	sw, err := pglogrepl.ParseLSN(standby.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	// The switch point's segment on timeline 2: its first page was
	// copied from timeline 1 unless the switch fell on a segment boundary.
	first := wal.Segment{TLI: 2, No: uint64(sw) / (1 << 20), Size: 1 << 20}
	// Find the first segment of timeline 2 in pg_wal.
	for first.No > 0 {
		prev := first
		prev.No--
		if _, err := os.Stat(filepath.Join(standby.PgWalDir(), prev.Name())); err != nil {
			break
		}
		first = prev
	}
	page = readPage(t, filepath.Join(standby.PgWalDir(), first.Name()))
	t.Logf("%s: first page on timeline %d", first.Name(), binary.LittleEndian.Uint32(page[4:8]))
	if err := wal.CheckSegmentHeader(page, first, st); err != nil {
		t.Errorf("first segment of timeline 2: %v", err)
	}
}

func readPage(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, wal.LongPageHeaderSize)
	if _, err := f.ReadAt(page, 0); err != nil {
		t.Fatal(err)
	}
	return page
}
