// Package retentiontest builds synthetic repositories for retention tests
// (imported by tests only): base backups over several days, WAL across a
// timeline switch, incomplete backups, media and config indexes with their
// objects, and (AddDumps) logical dumps, all named and framed as the real
// writers name them.
package retentiontest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/wal"
)

// SegSize is the WAL segment size of the world.
const SegSize = 1 << 20

// Day is 24 hours.
const Day = 24 * time.Hour

// World is a synthetic repository (times relative to T0; D(n) = T0 + n days):
//
//	backups    B0 D(0) TLI 1 seg 2   B1 D(1) TLI 1 seg 4   B2 D(2) TLI 1 seg 6
//	           B3 D(3) TLI 2 seg 10  B4 D(4) TLI 2 seg 12  (each ends 10 min after it starts)
//	timelines  1 -> 2 at 0/880000 (segment 8) at D(2)+12h
//	WAL        TLI 1: 2..7, 8.partial     TLI 2: 8..13, 14.partial (last_time End)
//	incomplete Abandoned   (id D(0)+12h, objects 3 days old)
//	           StaleRecent (id D(1)+12h, objects just written)
//	           InProgress  (id D(5) — after every complete one; objects just written)
//	media      gone:     added D(0)+1h, deleted D(1)
//	           kept:     added D(0)+2h, never deleted
//	           late-del: added D(1), deleted D(3)+1h
//	           new:      added D(4)
//	           replaced: content Old added D(0), New added D(1) (same path)
//	           an orphan object 3 days old, an orphan just written
//	config     homeserver.yaml C1 at D(0), C2 at D(1)+1h; signing key K1 at D(0);
//	           old.yaml O1 at D(0), deleted at D(1)
//
// The objects of the incomplete backups and orphans have their real
// modification times adjusted relative to Now.
type World struct {
	R   *repo.Repo
	Dir string
	T0  time.Time
	// Now is D(4)+12h; End is the newest WAL's last_time (D(4)+11h).
	Now, End time.Time
	// Backups are B0..B4.
	Backups                            []basebackup.Backup
	Abandoned, StaleRecent, InProgress string
	// Dumps are Dump0..Dump3 and DumpAbandoned, DumpRunning the incomplete
	// dumps, once AddDumps has added them.
	Dumps                      []dump.Dump
	DumpAbandoned, DumpRunning string
	// Media and Config map a short name to the sha256 of its object:
	// media gone, kept, late-del, new, replaced-old, replaced-new,
	// orphan-old, orphan-new; config C1, C2, K1, O1.
	Media, Config map[string]string
}

// D is T0 plus n days.
func (w *World) D(n float64) time.Time { return w.T0.Add(time.Duration(n * float64(Day))) }

// New builds the world in a new temporary directory.
func New(t testing.TB, t0 time.Time) *World {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	w := &World{R: r, Dir: dir, T0: t0.UTC(), Media: map[string]string{}, Config: map[string]string{}}
	w.Now = w.D(4).Add(12 * time.Hour)
	w.End = w.D(4).Add(11 * time.Hour)
	put := func(name string, data []byte, attrs map[string]string) {
		t.Helper()
		if _, err := r.Put(ctx, name, bytes.NewReader(data), attrs); err != nil {
			t.Fatal(err)
		}
	}
	age := func(name string, d time.Duration) {
		t.Helper()
		when := w.Now.Add(-d)
		if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(name)), when, when); err != nil {
			t.Fatal(err)
		}
	}
	put(wal.SettingsObjectName, []byte(`{"system_id":"7","segment_size":1048576}`), nil)

	// WAL.
	segTime := func(tli uint32, no uint64) time.Time {
		// Monotonic over the archive; the newest is End.
		return w.End.Add(-time.Duration(30-int(no)-int(tli)) * time.Hour)
	}
	seg := func(tli uint32, no uint64, partial uint64, last time.Time) {
		s := wal.SegmentAt(tli, pglogrepl.LSN(no*SegSize), SegSize)
		name := s.ObjectName()
		end := s.EndLSN()
		if partial > 0 {
			name = s.PartialObjectName(partial)
			end = s.StartLSN() + pglogrepl.LSN(partial)
		}
		put(name, bytes.Repeat([]byte{byte(no)}, 100), map[string]string{
			wal.AttrSystemID: "7", wal.AttrTimeline: itoa(uint64(tli)),
			wal.AttrStartLSN: s.StartLSN().String(), wal.AttrEndLSN: end.String(),
			wal.AttrSegSize: itoa(SegSize), wal.AttrLastTime: last.Format(time.RFC3339Nano),
		})
	}
	for no := uint64(2); no <= 7; no++ {
		seg(1, no, 0, segTime(1, no))
	}
	seg(1, 8, 0x80000, segTime(1, 8))
	put(wal.HistoryObjectName(2), []byte("1\t0/880000\tno recovery target specified\n"), map[string]string{wal.AttrTimeline: "2"})
	for no := uint64(8); no <= 13; no++ {
		seg(2, no, 0, segTime(2, no))
	}
	seg(2, 14, 0x1000, w.End)

	// Complete backups.
	starts := []struct {
		tli uint32
		seg uint64
	}{{1, 2}, {1, 4}, {1, 6}, {2, 10}, {2, 12}}
	for i, s := range starts {
		st := w.D(float64(i))
		bk := basebackup.Backup{
			ID:       id(st, i),
			StartLSN: pglogrepl.LSN(s.seg*SegSize + 0x28), EndLSN: pglogrepl.LSN(s.seg*SegSize + 0x100),
			Timeline: s.tli, EndTimeline: s.tli, StartTime: st, EndTime: st.Add(10 * time.Minute),
			PGVersion: 170000, SystemID: "7", SegmentSize: SegSize,
		}
		part := []byte(strings.Repeat("base "+bk.ID, 50))
		put(basebackup.PartName(bk.ID, "base.tar", 0), part, nil)
		put(basebackup.PartName(bk.ID, "base.tar", 1), part[:100], nil)
		put(basebackup.ManifestName(bk.ID), []byte("{}"), nil)
		meta, _ := json.Marshal(bk)
		put(basebackup.MetaName(bk.ID), meta, map[string]string{"kind": "basebackup"})
		w.Backups = append(w.Backups, bk)
	}

	// Incomplete backups.
	w.Abandoned = id(w.D(0.5), 10)
	w.StaleRecent = id(w.D(1.5), 11)
	w.InProgress = id(w.D(5), 12)
	for _, id := range []string{w.Abandoned, w.StaleRecent, w.InProgress} {
		for n := range 2 {
			name := basebackup.PartName(id, "base.tar", n)
			put(name, []byte("partial backup "+id), nil)
			if id == w.Abandoned {
				age(name, 3*Day)
			}
		}
	}

	// Media.
	mobj := func(key string) string {
		data := []byte("media content " + key)
		sum := sha256.Sum256(data)
		sha := hex.EncodeToString(sum[:])
		put(mediawatch.ObjectName(sha), data, nil)
		w.Media[key] = sha
		return sha
	}
	var events []mediawatch.Event
	ev := func(path, key, kind string, at time.Time) {
		e := mediawatch.Event{Path: path, SHA256: w.Media[key], Size: int64(len("media content " + key)), MTime: at, FirstSeen: at, Event: kind, At: at}
		if kind == mediawatch.Deleted {
			e.MTime = at.Add(-time.Hour)
		}
		events = append(events, e)
	}
	for _, k := range []string{"gone", "kept", "late-del", "new", "replaced-old", "replaced-new", "orphan-old", "orphan-new"} {
		mobj(k)
	}
	age(mediawatch.ObjectName(w.Media["orphan-old"]), 3*Day)
	ev("local_content/aa/bb/gone", "gone", mediawatch.Added, w.D(0).Add(time.Hour))
	ev("local_content/aa/bb/kept", "kept", mediawatch.Added, w.D(0).Add(2*time.Hour))
	ev("local_content/aa/bb/replaced", "replaced-old", mediawatch.Added, w.D(0))
	ev("local_content/aa/bb/gone", "gone", mediawatch.Deleted, w.D(1))
	ev("local_content/aa/bb/late", "late-del", mediawatch.Added, w.D(1))
	ev("local_content/aa/bb/replaced", "replaced-new", mediawatch.Added, w.D(1))
	ev("local_content/aa/bb/late", "late-del", mediawatch.Deleted, w.D(3).Add(time.Hour))
	ev("local_content/aa/bb/new", "new", mediawatch.Added, w.D(4))
	for i, batch := range [][]mediawatch.Event{events[:3], events[3:6], events[6:]} {
		var buf bytes.Buffer
		for _, e := range batch {
			line, _ := json.Marshal(e)
			buf.Write(append(line, '\n'))
		}
		put("media/index/"+pad12(i+1)+".jsonl", buf.Bytes(), nil)
	}

	// Config.
	cobj := func(key string) confsnap.Record {
		data := []byte("config content " + key)
		sum := sha256.Sum256(data)
		sha := hex.EncodeToString(sum[:])
		put(confsnap.ObjectName(sha), data, nil)
		w.Config[key] = sha
		return confsnap.Record{SHA256: sha, Size: int64(len(data)), Mode: "0640"}
	}
	rec := func(key, path string, at time.Time) confsnap.Record {
		r := cobj(key)
		r.Path, r.Role, r.Time = path, "config", at
		return r
	}
	const hs, key, old = "/etc/synapse/homeserver.yaml", "/etc/synapse/signing.key", "/etc/synapse/old.yaml"
	files := []confsnap.Tracked{{Path: hs, Role: "config"}, {Path: key, Role: "signing_key", Secret: true}, {Path: old, Role: "config"}}
	batches := []confsnap.Batch{
		{Time: w.D(0), Files: files, Records: []confsnap.Record{rec("C1", hs, w.D(0)), rec("K1", key, w.D(0)), rec("O1", old, w.D(0))}},
		{Time: w.D(1), Files: files[:2], Records: []confsnap.Record{{Time: w.D(1), Path: old, Role: "config", Deleted: true}}},
		{Time: w.D(1).Add(time.Hour), Files: files[:2], Records: []confsnap.Record{rec("C2", hs, w.D(1).Add(time.Hour))}},
	}
	for i, b := range batches {
		data, _ := json.Marshal(b)
		put("config/index/"+pad12(i+1)+".json", append(data, '\n'), map[string]string{"time": b.Time.Format(time.RFC3339Nano)})
	}
	return w
}

// AddDumps adds logical dumps to the world (they change the horizon, so
// the tests that predate dumps run without them):
//
//	complete   Dump0 D(0)+1h30  Dump1 D(2)+3h  Dump2 D(3)+3h  Dump3 D(4)+3h
//	           (each ends 5 min after it starts; database "synapse", 2 parts)
//	incomplete DumpAbandoned (id D(1)+3h, one part 3 days old)
//	           DumpRunning   (id D(4)+6h, one part just written)
//
// Dump0 started between the addition of media "gone" and its deletion,
// and before "replaced-old" was replaced and config C1 superseded: while
// Dump0 is kept, those objects are needed.
func (w *World) AddDumps(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	parts := func(id string, data []byte) []repo.PartInfo {
		t.Helper()
		pw := w.R.NewPartWriter(ctx, func(n int) string { return dump.PartName(id, "synapse", n) },
			func(n int) map[string]string { return map[string]string{"kind": "dump", "dump_id": id} }, int64(len(data)/2+1))
		if err := pw.Write(data); err != nil {
			t.Fatal(err)
		}
		ps, err := pw.Close()
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	for i, st := range []time.Time{w.D(0).Add(90 * time.Minute), w.D(2).Add(3 * time.Hour), w.D(3).Add(3 * time.Hour), w.D(4).Add(3 * time.Hour)} {
		d := dump.Dump{ID: id(st, 20+i), StartTime: st, EndTime: st.Add(5 * time.Minute)}
		db := dump.Database{Name: "synapse", Stores: []string{"main", "state"}, StartTime: d.StartTime, EndTime: d.EndTime,
			Parts: parts(d.ID, []byte(strings.Repeat("PGDMP "+d.ID, 40)))}
		for _, p := range db.Parts {
			db.Size += p.Size
			db.StoredSize += p.StoredSize
		}
		d.Databases = []dump.Database{db}
		meta, _ := json.Marshal(d)
		if _, err := w.R.Put(ctx, dump.MetaName(d.ID), bytes.NewReader(meta), map[string]string{"kind": "dump", "dump_id": d.ID}); err != nil {
			t.Fatal(err)
		}
		w.Dumps = append(w.Dumps, d)
	}
	w.DumpAbandoned = id(w.D(1).Add(3*time.Hour), 30)
	w.DumpRunning = id(w.D(4).Add(6*time.Hour), 31)
	for _, id := range []string{w.DumpAbandoned, w.DumpRunning} {
		name := dump.PartName(id, "synapse", 0)
		if _, err := w.R.Put(ctx, name, strings.NewReader("PGDMP partial "+id), nil); err != nil {
			t.Fatal(err)
		}
		if id == w.DumpAbandoned {
			when := w.Now.Add(-3 * Day)
			if err := os.Chtimes(filepath.Join(w.Dir, filepath.FromSlash(name)), when, when); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// MakeIncremental turns backup child into an incremental backup on top of
// backup parent (indexes into Backups; parent must be made incremental
// first when it is one): its backup.json is written again with kind,
// parent and chain.
func (w *World) MakeIncremental(t testing.TB, child, parent int) {
	t.Helper()
	ctx := context.Background()
	p := w.Backups[parent]
	b := &w.Backups[child]
	b.Kind = basebackup.KindIncremental
	b.Parent = p.ID
	b.Chain = append(append([]string{}, p.Chain...), p.ID)
	if p.Kind == "" {
		w.Backups[parent].Kind = basebackup.KindFull
	}
	for _, bk := range []basebackup.Backup{w.Backups[parent], *b} {
		if err := w.R.Delete(ctx, basebackup.MetaName(bk.ID)); err != nil {
			t.Fatal(err)
		}
		meta, _ := json.Marshal(bk)
		if _, err := w.R.Put(ctx, basebackup.MetaName(bk.ID), bytes.NewReader(meta), map[string]string{"kind": "basebackup"}); err != nil {
			t.Fatal(err)
		}
	}
}

// id is a backup id as basebackup.NewID makes them, with a fixed suffix
// so that two worlds built from the same T0 are identical.
func id(t time.Time, n int) string {
	return t.UTC().Format("20060102T150405Z") + fmt.Sprintf("-%06x", n)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func pad12(n int) string { return fmt.Sprintf("%012d", n) }

// Names returns every object name in the repository with its size (but
// for the repository metadata), in name order, for comparing states.
func (w *World) Names(t testing.TB) []string {
	t.Helper()
	var out []string
	err := w.R.List(context.Background(), "", func(oi storage.ObjectInfo) error {
		if strings.HasPrefix(oi.Name, "meta/") {
			out = append(out, oi.Name) // its creation time varies in length
			return nil
		}
		out = append(out, fmt.Sprintf("%s %d", oi.Name, oi.Size))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Clone copies the world's repository, modification times included, into
// a new temporary directory (much faster than building it again).
func (w *World) Clone(t testing.TB) *World {
	t.Helper()
	dir := t.TempDir()
	err := filepath.WalkDir(w.Dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(w.Dir, p)
		dst := filepath.Join(dir, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			return err
		}
		return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), b, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	c := *w
	c.R, c.Dir = r, dir
	return &c
}
