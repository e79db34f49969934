package wal

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
)

const testSegSize = 1 << 20

// TestObjectNames: every name the writer forms parses back to what formed
// it, and near misses are rejected.
func TestObjectNames(t *testing.T) {
	for _, segSize := range []uint64{1 << 20, 16 << 20, 1 << 30} {
		for _, tli := range []uint32{1, 2, 0x1A, 0xFFFFFFFF} {
			for _, no := range []uint64{0, 1, 255, 4096/(segSize>>20) + 7, 0x1234567} {
				seg := SegmentAt(tli, pglogrepl.LSN(no*segSize), segSize)
				o, ok := ParseObjectName(seg.ObjectName(), segSize)
				if !ok || o.Kind != KindSegment || o.Segment != seg || o.TLI != tli || o.Valid != segSize || o.EndLSN() != seg.EndLSN() {
					t.Errorf("%s: parsed as %+v, %v", seg.ObjectName(), o, ok)
				}
				if p, err := ParseSegmentName(seg.Name(), segSize); err != nil || p != seg {
					t.Errorf("ParseSegmentName(%s) = %+v, %v", seg.Name(), p, err)
				}
				for _, valid := range []uint64{0, 1, 4096, segSize} {
					name := seg.PartialObjectName(valid)
					o, ok := ParseObjectName(name, segSize)
					if !ok || o.Kind != KindPartial || o.Segment != seg || o.Valid != valid || o.EndLSN() != seg.StartLSN()+pglogrepl.LSN(valid) {
						t.Errorf("%s: parsed as %+v, %v", name, o, ok)
					}
				}
			}
			h, ok := ParseObjectName(HistoryObjectName(tli), testSegSize)
			if !ok || h.Kind != KindHistory || h.TLI != tli {
				t.Errorf("%s: parsed as %+v, %v", HistoryObjectName(tli), h, ok)
			}
		}
	}
	// Names sort by progress: partials by valid length, segments by number.
	seg := SegmentAt(1, 0, testSegSize)
	if !(seg.PartialObjectName(0x0FFF) < seg.PartialObjectName(0x1000)) || !(seg.ObjectName() < seg.Next().ObjectName()) {
		t.Error("object names do not sort by progress")
	}

	for _, bad := range []string{
		"wal/settings.json",
		"wal/00000001/00000001000000000000000",                    // 23 digits
		"wal/00000001/0000000100000000000000001",                  // 25 digits
		"wal/00000001/00000001000000000000000a",                   // lower case
		"wal/00000002/000000010000000000000001",                   // wrong timeline directory
		"wal/0000001/000000010000000000000001",                    // short directory
		"wal/00000000/000000000000000000000001",                   // timeline 0
		"wal/00000001/000000010000000000000100",                   // segment 0x100 of a 4 GB log file: too high for 16 MB segments
		"wal/00000001/000000010000000000000001.partial.",          // no offset
		"wal/00000001/000000010000000000000001.partial.1000",      // short offset
		"wal/00000001/000000010000000000000001.partial.01000001",  // beyond the segment
		"wal/00000001/000000010000000000000001.partial.0000100g",  // not hex
		"wal/00000001/000000010000000000000001.partial.0000abcd",  // lower case
		"wal/00000001/000000010000000000000001.partial.000010000", // long offset
		"wal/00000001/000000010000000000000001.json",
		"wal/history/00000002.history.tmp",
		"wal/history/0000002.history",
		"wal/history/0000000a.history",
		"wal/history/00000000.history",
		"wal/00000002.history",
		"backups/00000001/000000010000000000000001",
		"000000010000000000000001",
	} {
		segSize := uint64(testSegSize)
		if strings.HasSuffix(bad, "100") {
			segSize = 16 << 20
		}
		if o, ok := ParseObjectName(bad, segSize); ok {
			t.Errorf("%s: accepted as %+v", bad, o)
		}
	}
	if _, ok := ParseObjectName(SegmentAt(1, 0, testSegSize).ObjectName(), 0); ok {
		t.Error("a segment name parsed without a segment size")
	}
	if !IsObjectName("wal/settings.json") || IsObjectName("walx/1") || IsObjectName("backups/wal/1") {
		t.Error("IsObjectName")
	}
}

// archiveRepo is a repository in a temp dir (local backend) with the
// archive's settings.
func archiveRepo(t *testing.T) *repo.Repo {
	t.Helper()
	r := repotest.New(t, filepath.Join(t.TempDir(), "repo"), repo.Options{Compression: "none"})
	if err := storeSettings(context.Background(), r, "7", testSegSize); err != nil {
		t.Fatal(err)
	}
	return r
}

func putObject(t *testing.T, r *repo.Repo, name string, body []byte, attrs map[string]string) {
	t.Helper()
	if _, err := r.Put(context.Background(), name, bytes.NewReader(body), attrs); err != nil {
		t.Fatal(err)
	}
}

// TestSettings: stored settings load back; a second cluster's settings
// conflict permanently; broken content is an error; a missing file says
// "no archive".
func TestSettings(t *testing.T) {
	ctx := context.Background()
	r := archiveRepo(t)
	st, err := LoadSettings(ctx, r)
	if err != nil || st != (Settings{SystemID: "7", SegmentSize: testSegSize}) {
		t.Fatalf("LoadSettings = %+v, %v", st, err)
	}
	if err := storeSettings(ctx, r, "7", testSegSize); err != nil {
		t.Errorf("storing the same settings again: %v", err)
	}
	if err := storeSettings(ctx, r, "8", testSegSize); !IsPermanent(err) {
		t.Errorf("another cluster's settings: %v, want a permanent error", err)
	}

	empty := repotest.New(t, filepath.Join(t.TempDir(), "repo"), repo.Options{Compression: "none"})
	if _, err := LoadSettings(ctx, empty); !repo.IsNotExist(err) {
		t.Errorf("no settings: %v, want not-exist", err)
	}
	if _, err := ReadArchive(ctx, empty); !repo.IsNotExist(err) {
		t.Errorf("ReadArchive without settings: %v, want not-exist", err)
	}
	for _, body := range []string{`{`, `{"system_id":"7"}`, `{"system_id":"7","segment_size":1000000}`} {
		bad := repotest.New(t, filepath.Join(t.TempDir(), "repo"), repo.Options{Compression: "none"})
		putObject(t, bad, SettingsObjectName, []byte(body), nil)
		if _, err := LoadSettings(ctx, bad); err == nil || repo.IsNotExist(err) {
			t.Errorf("settings %s: %v, want invalid content", body, err)
		}
	}
}

// TestReadArchive: the reader over a repository in a temp dir sees the
// complete segments, the newest partial per segment, the history files and
// the recorded server times, and ignores what is not a WAL object.
func TestReadArchive(t *testing.T) {
	ctx := context.Background()
	r := archiveRepo(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	seg := func(tli uint32, no uint64) Segment { return SegmentAt(tli, pglogrepl.LSN(no*testSegSize), testSegSize) }
	times := func(no uint64) map[string]string {
		return map[string]string{
			AttrFirstTime: t0.Add(time.Duration(no) * time.Minute).Format(time.RFC3339Nano),
			AttrLastTime:  t0.Add(time.Duration(no)*time.Minute + 30*time.Second).Format(time.RFC3339Nano),
		}
	}
	for no := uint64(2); no <= 5; no++ {
		putObject(t, r, seg(1, no).ObjectName(), []byte{byte(no)}, times(no))
	}
	putObject(t, r, seg(1, 5).PartialObjectName(100), []byte("leftover"), times(5)) // superseded by the complete one
	putObject(t, r, seg(1, 6).PartialObjectName(0x2000), []byte("tl1 end"), times(6))
	putObject(t, r, seg(2, 6).ObjectName(), []byte{6}, times(6))
	putObject(t, r, seg(2, 8).ObjectName(), []byte{8}, times(8)) // after a hole
	putObject(t, r, seg(2, 9).PartialObjectName(0x1000), []byte("old"), times(8))
	putObject(t, r, seg(2, 9).PartialObjectName(0x3000), []byte("open"), times(9))
	putObject(t, r, HistoryObjectName(2), []byte("1\t0/6000000\tno recovery target specified\n"), nil)
	putObject(t, r, HistoryObjectName(3), []byte("1\t0/6000000\tx\n2\t0/A000000\ty\n"), nil)
	for _, junk := range []string{"wal/00000002/000000010000000000000007", "wal/00000001/x", "wal/history/zz.history", "backups/b1/backup.json"} {
		putObject(t, r, junk, []byte("junk"), nil)
	}

	a, err := ReadArchive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if a.Settings.SegmentSize != testSegSize || a.Settings.SystemID != "7" {
		t.Errorf("settings %+v", a.Settings)
	}
	if got := a.TLIs(); len(got) != 3 || got[0] != 1 || got[2] != 3 {
		t.Errorf("TLIs %v, want [1 2 3]", got)
	}
	if got := a.SegmentTLIs(); len(got) != 2 || got[1] != 2 {
		t.Errorf("SegmentTLIs %v, want [1 2]", got)
	}
	if a.Newest() != 3 {
		t.Errorf("Newest %d, want 3 (known by its history file)", a.Newest())
	}
	if n := len(a.Objects); n != 4+1+1+2+2+2 {
		t.Errorf("%d objects, want 12: %v", n, a.Objects)
	}
	t1, t2 := a.Timeline(1), a.Timeline(2)
	if nos := t1.Numbers(); len(nos) != 4 || nos[0] != 2 || nos[3] != 5 {
		t.Errorf("timeline 1 complete %v", nos)
	}
	if p, ok := t1.Partial(); !ok || p.Segment != seg(1, 6) || p.EndLSN() != seg(1, 6).StartLSN()+0x2000 {
		t.Errorf("timeline 1's end partial %+v %v", p, ok)
	}
	if o, ok := t1.Object(5); !ok || o.Kind != KindSegment {
		t.Errorf("segment 5 is %+v %v, want the complete object over the leftover partial", o, ok)
	}
	if _, ok := t2.Object(7); ok {
		t.Error("timeline 2 holds segment 7 (a segment of timeline 1 in its directory)")
	}
	if p, ok := t2.Partial(); !ok || p.Valid != 0x3000 || p.Name != seg(2, 9).PartialObjectName(0x3000) {
		t.Errorf("timeline 2's open partial %+v %v, want the longest", p, ok)
	}
	if n, ok := t2.Newest(); !ok || n.Valid != 0x3000 {
		t.Errorf("timeline 2's newest %+v", n)
	}
	if t1.History != nil || t2.History == nil || a.Timeline(3).History == nil {
		t.Error("history files")
	}
	if s, ok := a.NewestSegment(); !ok || s.Segment != seg(2, 8) {
		t.Errorf("NewestSegment %+v", s)
	}
	if last, err := lastArchivedSegment(ctx, r, testSegSize); err != nil || last == nil || *last != seg(2, 8) {
		t.Errorf("lastArchivedSegment %v, %v", last, err)
	}
	spans, err := a.History(ctx, 3)
	if err != nil || len(spans) != 3 || spans[2].Begin != 0xA000000 || spans[1].TLI != 2 {
		t.Errorf("History(3) = %+v, %v", spans, err)
	}

	// Times: the recorded range; a partial replaced since the listing is
	// followed to its successor.
	o, _ := t1.Object(3)
	cur, tr, err := a.Times(ctx, o)
	if err != nil || cur != o || !tr.First.Equal(t0.Add(3*time.Minute)) || !tr.Last.Equal(t0.Add(3*time.Minute+30*time.Second)) {
		t.Errorf("Times(%s) = %+v, %+v, %v", o.Name, cur, tr, err)
	}
	open, _ := t2.Partial()
	putObject(t, r, seg(2, 9).ObjectName(), []byte{9}, times(10))
	for _, n := range []string{seg(2, 9).PartialObjectName(0x1000), open.Name} {
		if err := r.Delete(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	cur, tr, err = a.Times(ctx, open)
	if err != nil || cur.Kind != KindSegment || cur.Segment != seg(2, 9) || !tr.Last.Equal(t0.Add(10*time.Minute+30*time.Second)) {
		t.Errorf("Times of a replaced partial = %+v, %+v, %v; want the complete segment's", cur, tr, err)
	}
	if _, _, err := a.Times(ctx, Object{Name: seg(1, 9).ObjectName(), Kind: KindSegment, Segment: seg(1, 9)}); !repo.IsNotExist(err) {
		t.Errorf("Times of a missing segment: %v, want not-exist", err)
	}

	so, err := ReadSegment(ctx, r, seg(1, 5))
	if err != nil || so.Complete == nil || so.Partial == nil || so.Partial.Valid != 100 {
		t.Errorf("ReadSegment(1, 5) = %+v, %v", so, err)
	}
	so, err = ReadSegment(ctx, r, seg(1, 7))
	if err != nil || so.Complete != nil || so.Partial != nil {
		t.Errorf("ReadSegment(1, 7) = %+v, %v, want nothing", so, err)
	}
}

// TestResumeSegment: streaming resumes at the open spool file, else after
// the newest complete segment in the spool or the repository.
func TestResumeSegment(t *testing.T) {
	ctx := context.Background()
	seg := func(tli uint32, no uint64) Segment { return SegmentAt(tli, pglogrepl.LSN(no*testSegSize), testSegSize) }
	touch := func(dir, name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name     string
		repo     []Segment // complete segments archived
		spool    []string  // spool files
		want     *Segment
		wantLast *Segment
	}{
		{name: "empty", want: nil},
		{name: "repository only", repo: []Segment{seg(1, 3), seg(1, 4)}, want: ptr(seg(1, 5)), wantLast: ptr(seg(1, 4))},
		{name: "spool ahead of the repository", repo: []Segment{seg(1, 3)}, spool: []string{seg(1, 4).Name(), seg(1, 5).Name()}, want: ptr(seg(1, 6)), wantLast: ptr(seg(1, 3))},
		{name: "open file", repo: []Segment{seg(1, 3)}, spool: []string{seg(1, 4).Name() + ".partial"}, want: ptr(seg(1, 4)), wantLast: ptr(seg(1, 3))},
		{name: "open file while finished ones wait", spool: []string{seg(1, 4).Name(), seg(1, 5).Name() + ".partial", seg(1, 6).Name() + ".partial"}, want: ptr(seg(1, 5))},
		{name: "leftover open file of an ended timeline", repo: []Segment{seg(2, 6)}, spool: []string{seg(1, 6).Name() + ".partial"}, want: ptr(seg(2, 7)), wantLast: ptr(seg(2, 6))},
		{name: "timeline end partial", spool: []string{seg(1, 6).PartialObjectName(0x100)[len("wal/00000001/"):]}, want: nil},
		{name: "newer timeline wins", repo: []Segment{seg(1, 9), seg(2, 7)}, want: ptr(seg(2, 8)), wantLast: ptr(seg(2, 7))},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := archiveRepo(t)
			for _, s := range c.repo {
				putObject(t, r, s.ObjectName(), []byte{1}, nil)
			}
			sp, err := openSpool(t.TempDir(), testSegSize)
			if err != nil {
				t.Fatal(err)
			}
			defer sp.close()
			for _, f := range c.spool {
				touch(sp.dir, f)
			}
			got, last, err := resumeSegment(ctx, r, sp)
			if err != nil {
				t.Fatal(err)
			}
			if !sameSeg(got, c.want) || !sameSeg(last, c.wantLast) {
				t.Errorf("resume at %v (last archived %v), want %v (%v)", got, last, c.want, c.wantLast)
			}
		})
	}
}

func ptr(s Segment) *Segment { return &s }

func sameSeg(a, b *Segment) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// TestFetchPadsPartial: the newest partial object is served under the
// segment's name, zero-padded to the segment size; none is served when a
// later timeline holds the complete segment.
func TestFetchPadsPartial(t *testing.T) {
	ctx := context.Background()
	// Settings with a real system identifier for the header check.
	r := repotest.New(t, filepath.Join(t.TempDir(), "repo"), repo.Options{Compression: "none"})
	const sysid = 7000000000000000001
	if err := storeSettings(ctx, r, "7000000000000000001", testSegSize); err != nil {
		t.Fatal(err)
	}
	seg := SegmentAt(1, 5*testSegSize, testSegSize)
	body := func(n int, fill byte) []byte {
		b := bytes.Repeat([]byte{fill}, n)
		copy(b, LongPageHeader(seg, 1, sysid))
		return b
	}
	putObject(t, r, seg.PartialObjectName(0x1000), body(0x1000, 0x11), nil)
	newest := body(0x2345, 0x22)
	putObject(t, r, seg.PartialObjectName(0x2345), newest, nil)

	f, err := NewFetcher(ctx, r, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if err := f.Fetch(ctx, seg.Name(), dest); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != testSegSize {
		t.Fatalf("served %d bytes, want the segment size %d", len(got), testSegSize)
	}
	if !bytes.Equal(got[:len(newest)], newest) {
		t.Error("the served segment does not start with the newest partial's bytes")
	}
	if !bytes.Equal(got[len(newest):], make([]byte, testSegSize-len(newest))) {
		t.Error("the served segment is not zero-padded after the partial's valid bytes")
	}

	// A later timeline completed the segment: PostgreSQL wants that copy,
	// so the partial of timeline 1 is not served.
	putObject(t, r, HistoryObjectName(2), []byte("1\t0/5100000\tx\n"), nil)
	later := seg
	later.TLI = 2
	putObject(t, r, later.ObjectName(), body(testSegSize, 0x33), nil)
	os.Remove(dest)
	if err := f.Fetch(ctx, seg.Name(), dest); !IsNotFound(err) {
		t.Errorf("partial behind a later timeline's complete segment: %v, want not found", err)
	}
}
