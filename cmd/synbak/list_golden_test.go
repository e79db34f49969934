package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/golden"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/wal"
)

// TestListGolden: `synbak list --json` (and its text) over a fixed
// repository: two backups, an incomplete one, WAL on two timelines with a
// hole, a leftover partial, the open partial, and objects list must ignore.
func TestListGolden(t *testing.T) {
	ctx := context.Background()
	const segSize = 1 << 20
	dir := filepath.Join(t.TempDir(), "repo")
	r := repotest.New(t, dir, repo.Options{Compression: "none"})
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	put := func(name string, data []byte, attrs map[string]string) {
		t.Helper()
		if _, err := r.Put(ctx, name, bytes.NewReader(data), attrs); err != nil {
			t.Fatal(err)
		}
		// Modification times are part of the listing (incomplete backups).
		if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(name)), t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	put(wal.SettingsObjectName, []byte(`{"system_id":"7441234567890123456","segment_size":1048576}`), nil)
	for i, start := range []uint64{2, 5} {
		b := basebackup.Backup{
			ID: []string{"20261124T100000Z-aaaaaa", "20261124T110000Z-bbbbbb"}[i], Label: "synbak",
			StartLSN: pglogrepl.LSN(start*segSize + 0x28), EndLSN: pglogrepl.LSN(start*segSize + 0x100), Timeline: 1, EndTimeline: 1,
			StartTime: t0.Add(time.Duration(i) * time.Hour), EndTime: t0.Add(time.Duration(i)*time.Hour + time.Minute),
			PGVersion: 150010, SystemID: "7441234567890123456", SegmentSize: segSize,
			Archives:    []basebackup.Archive{{Name: "base.tar", Size: 1000, StoredSize: 400}},
			Tablespaces: []basebackup.Tablespace{{OID: 0}},
		}
		meta, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		put(basebackup.MetaName(b.ID), meta, nil)
	}
	put(basebackup.PartName("20261124T120000Z-cccccc", "base.tar", 0), []byte("interrupted"), nil)
	seg := func(tli uint32, no uint64, partial uint64, minutes int) {
		s := wal.SegmentAt(tli, pglogrepl.LSN(no*segSize), segSize)
		name := s.ObjectName()
		if partial > 0 {
			name = s.PartialObjectName(partial)
		}
		put(name, []byte("wal"), map[string]string{wal.AttrLastTime: t0.Add(time.Duration(minutes) * time.Minute).Format(time.RFC3339Nano)})
	}
	for no := uint64(2); no <= 6; no++ {
		seg(1, no, 0, int(no)*10)
	}
	seg(1, 6, 0x100, 55) // a leftover partial of a completed segment
	seg(1, 8, 0, 80)     // after a hole (7)
	seg(1, 9, 0x80000, 95)
	put(wal.HistoryObjectName(2), []byte("1\t0/9080000\tno recovery target specified\n"), nil)
	seg(2, 9, 0, 100)
	seg(2, 10, 0, 110)
	seg(2, 11, 0x1000, 121)
	seg(2, 11, 0x2000, 122)                                        // the open segment, newest partial
	put("wal/00000002/000000010000000000000005", []byte("x"), nil) // a segment in another timeline's directory
	put("wal/00000002/junk", []byte("x"), nil)

	l, err := buildListing(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	// The repository's metadata records its creation time, whose printed
	// length varies: its size is the one thing not fixed by the fixture.
	for i := range l.Sizes {
		if l.Sizes[i].Kind == "meta" {
			l.Sizes[i].Bytes = 200
		}
	}
	var js bytes.Buffer
	if err := printJSON(&js, l); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "list.golden.json", js.Bytes())
	var txt bytes.Buffer
	printListing(&txt, l)
	golden.Check(t, "list.golden.txt", txt.Bytes())
}
