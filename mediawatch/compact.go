package mediawatch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

// Index snapshots (see the package comment, "Index compaction").
//
//	media/index/snapshot-<gen 8 digits>-<last 12 digits>.jsonl
//
// A snapshot is a sequence of units, each a header line
//
//	{"batch":<seq>,"batch_sha256":"<sha256 of the batch object's plaintext>","events":<n>}
//
// followed by the batch's n event lines, verbatim: the whole history of the
// batches it holds, ordered by sequence number as a loader reads them, so
// that Set(at) gives the same answer for every time whether batches were
// compacted or not. Its attribute "subsumes" lists the snapshots
// (name=sha256) whose every unit it holds.
const snapshotPrefix = indexPrefix + "snapshot-"

func snapshotName(gen uint64, last uint64) string {
	return fmt.Sprintf("%s%08d-%012d.jsonl", snapshotPrefix, gen, last)
}

func parseSnapshotName(name string) (gen, last uint64, ok bool) {
	rest, ok := strings.CutPrefix(name, snapshotPrefix)
	if !ok {
		return 0, 0, false
	}
	rest, ok = strings.CutSuffix(rest, ".jsonl")
	g, l, ok2 := strings.Cut(rest, "-")
	if !ok || !ok2 || len(g) != 8 || len(l) != 12 {
		return 0, 0, false
	}
	gen, err1 := strconv.ParseUint(g, 10, 64)
	last, err2 := strconv.ParseUint(l, 10, 64)
	return gen, last, err1 == nil && err2 == nil
}

// errVanished says that an object listed a moment ago is gone: a
// concurrent compaction removed it after including it in a snapshot.
var errVanished = errors.New("media index object vanished while the index was read")

// unit is one index batch: from a batch object or from a snapshot.
type unit struct {
	seq    uint64
	sha    string // sha256 of the batch object's plaintext
	lines  [][]byte
	events []Event
}

type snapRef struct {
	name      string
	gen, last uint64
	sha       string
}

// indexInfo is what readIndex found.
type indexInfo struct {
	// last is the highest batch sequence number named anywhere.
	last uint64
	// base is the snapshot read first (zero name: none).
	base snapRef
	// foreign are snapshots not subsumed by base, whose units not in base
	// were read after it (left by concurrent compactions); garbage are
	// snapshots base subsumes (left by an interrupted compaction).
	foreign, garbage []snapRef
	// loose are the batch objects read (not covered by a snapshot);
	// covered those skipped because a snapshot holds them.
	loose, covered []string
}

// readIndex calls fn for every unit of the index in load order: by
// sequence number, merging the snapshot with the highest generation (then
// the highest last batch) — the base —, the snapshots it does not subsume
// (left by concurrent compactions: their units the base does not hold),
// and the batch objects no snapshot holds (same sequence number and same
// sha256; a batch stored later under a sequence number whose earlier
// batch was compacted and removed is read). Units with the same sequence
// number come base first, then other snapshots, then the batch object.
// Snapshots subsumed by the base are not read. An object that vanished
// after the listing is errVanished.
//
// Batch objects with a sequence number above maxLoose are left out (as if
// they were not there yet).
func readIndex(ctx context.Context, r *repo.Repo, maxLoose uint64, fn func(unit) error) (indexInfo, error) {
	var info indexInfo
	looseNames := map[uint64]string{}
	var snaps []snapRef
	err := r.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		if seq, ok := parseIndexName(oi.Name); ok && seq <= maxLoose {
			looseNames[seq] = oi.Name
			info.last = max(info.last, seq)
		} else if gen, last, ok := parseSnapshotName(oi.Name); ok {
			snaps = append(snaps, snapRef{name: oi.Name, gen: gen, last: last})
			info.last = max(info.last, last)
		}
		return nil
	})
	if err != nil {
		return info, fmt.Errorf("list media index in %s: %w", r, err)
	}
	sort.Slice(snaps, func(i, j int) bool {
		if snaps[i].gen != snaps[j].gen {
			return snaps[i].gen > snaps[j].gen
		}
		return snaps[i].last > snaps[j].last
	})
	var maxSnapLast uint64
	var subsumed map[string]string
	for i := range snaps {
		st, err := r.Stat(ctx, snaps[i].name)
		if err != nil {
			return info, vanished(err, "media index snapshot")
		}
		snaps[i].sha = st.SHA256
		maxSnapLast = max(maxSnapLast, snaps[i].last)
		if i == 0 {
			info.base = snaps[0]
			subsumed = parseSubsumes(st.Attrs["subsumes"])
			continue
		}
		if subsumed[snaps[i].name] == snaps[i].sha {
			info.garbage = append(info.garbage, snaps[i])
		} else {
			info.foreign = append(info.foreign, snaps[i])
		}
	}

	// Open the snapshots to merge: the base first.
	var readers []*snapReader
	defer func() {
		for _, sr := range readers {
			sr.close()
		}
	}()
	for _, s := range append([]snapRef{info.base}, info.foreign...) {
		if s.name == "" {
			continue
		}
		sr, err := openSnapshot(ctx, r, s.name)
		if err != nil {
			return info, err
		}
		readers = append(readers, sr)
	}
	seqs := make([]uint64, 0, len(looseNames))
	for seq := range looseNames {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })

	// held: the units with the current sequence number emitted so far.
	held := map[string]bool{}
	var cur uint64
	for {
		var s uint64 = math.MaxUint64
		for _, sr := range readers {
			if sr.ok {
				s = min(s, sr.head.seq)
			}
		}
		if len(seqs) > 0 {
			s = min(s, seqs[0])
		}
		if s == math.MaxUint64 {
			break
		}
		if s != cur {
			cur = s
			clear(held)
		}
		for i, sr := range readers {
			for sr.ok && sr.head.seq == s {
				u := sr.head
				if err := sr.advance(); err != nil {
					return info, err
				}
				if i > 0 && held[u.sha] {
					continue // a foreign snapshot's unit the base holds
				}
				held[u.sha] = true
				if err := fn(u); err != nil {
					return info, err
				}
			}
		}
		if len(seqs) > 0 && seqs[0] == s {
			name := looseNames[s]
			seqs = seqs[1:]
			if s <= maxSnapLast {
				st, err := r.Stat(ctx, name)
				if err != nil {
					return info, vanished(err, "media index batch")
				}
				if held[st.SHA256] {
					info.covered = append(info.covered, name)
					continue
				}
			}
			u, err := readBatch(ctx, r, name, s)
			if err != nil {
				return info, err
			}
			info.loose = append(info.loose, name)
			if err := fn(u); err != nil {
				return info, err
			}
		}
	}
	return info, nil
}

func vanished(err error, what string) error {
	if repo.IsNotExist(err) {
		return fmt.Errorf("%s: %w (%w)", what, errVanished, err)
	}
	return fmt.Errorf("read %s: %w", what, err)
}

func parseSubsumes(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// readBatch reads one batch object as a unit.
func readBatch(ctx context.Context, r *repo.Repo, name string, seq uint64) (unit, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return unit{}, vanished(err, "media index batch")
	}
	defer rd.Close()
	u := unit{seq: seq}
	sc := newLineScanner(rd)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		ev, err := parseEvent(b)
		if err != nil {
			return unit{}, fmt.Errorf("media index %s line %d: %w", name, line, err)
		}
		u.lines = append(u.lines, bytes.Clone(b))
		u.events = append(u.events, ev)
	}
	if err := sc.Err(); err != nil {
		return unit{}, fmt.Errorf("read media index %s: %w", name, err)
	}
	u.sha = rd.Info().SHA256
	return u, nil
}

func newLineScanner(rd io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return sc
}

func parseEvent(b []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(b, &ev); err != nil {
		return ev, err
	}
	return ev, validEvent(ev)
}

// unitHeader starts a unit in a snapshot; encoding/json writes the fields
// in this order, so a header line starts with `{"batch":`.
type unitHeader struct {
	Batch  uint64 `json:"batch"`
	SHA256 string `json:"batch_sha256"`
	Events int    `json:"events"`
}

var headerStart = []byte(`{"batch":`)

// snapReader reads a snapshot's units one at a time; head is the current
// one while ok.
type snapReader struct {
	name string
	rd   *repo.Reader
	sc   *bufio.Scanner
	line int
	next []byte // a header line read ahead
	head unit
	ok   bool
}

func openSnapshot(ctx context.Context, r *repo.Repo, name string) (*snapReader, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return nil, vanished(err, "media index snapshot")
	}
	sr := &snapReader{name: name, rd: rd, sc: newLineScanner(rd)}
	if err := sr.advance(); err != nil {
		rd.Close()
		return nil, err
	}
	return sr, nil
}

func (sr *snapReader) close() { sr.rd.Close() }

func (sr *snapReader) corrupt(format string, args ...any) error {
	return fmt.Errorf("media index snapshot %s line %d: %s: %w", sr.name, sr.line, fmt.Sprintf(format, args...), repo.ErrCorrupt)
}

// advance reads the next unit into head (ok false at the end).
func (sr *snapReader) advance() error {
	prev := sr.head.seq
	sr.ok = false
	hdr := sr.next
	sr.next = nil
	for hdr == nil {
		if !sr.sc.Scan() {
			if err := sr.sc.Err(); err != nil {
				return fmt.Errorf("read media index snapshot %s: %w", sr.name, err)
			}
			return nil
		}
		sr.line++
		if b := bytes.TrimSpace(sr.sc.Bytes()); len(b) > 0 {
			if !bytes.HasPrefix(b, headerStart) {
				return sr.corrupt("event before any batch header")
			}
			hdr = bytes.Clone(b)
		}
	}
	var h unitHeader
	if err := json.Unmarshal(hdr, &h); err != nil || len(h.SHA256) != 64 || h.Batch == 0 {
		return sr.corrupt("bad batch header")
	}
	if h.Batch < prev {
		return sr.corrupt("batch %d after batch %d", h.Batch, prev)
	}
	u := unit{seq: h.Batch, sha: h.SHA256}
	for sr.sc.Scan() {
		sr.line++
		b := bytes.TrimSpace(sr.sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if bytes.HasPrefix(b, headerStart) {
			sr.next = bytes.Clone(b)
			break
		}
		ev, err := parseEvent(b)
		if err != nil {
			return fmt.Errorf("media index snapshot %s line %d: %w", sr.name, sr.line, err)
		}
		u.lines = append(u.lines, bytes.Clone(b))
		u.events = append(u.events, ev)
	}
	if err := sr.sc.Err(); err != nil {
		return fmt.Errorf("read media index snapshot %s: %w", sr.name, err)
	}
	if len(u.events) != h.Events {
		return sr.corrupt("batch %d has %d events, its header says %d", u.seq, len(u.events), h.Events)
	}
	sr.head, sr.ok = u, true
	return nil
}

// CompactReport says what Compact did.
type CompactReport struct {
	// Snapshot is the snapshot written ("" when none was needed).
	Snapshot string
	// Batches and Events are the units and events it holds.
	Batches, Events int
	// Removed counts the batch objects and older snapshots removed
	// (their content is in the newest snapshot).
	Removed int
}

// Compact consolidates the media index: it writes a new snapshot holding
// the newest snapshot's units, those of snapshots it does not subsume
// (concurrent compactions) and every batch object no snapshot holds, then
// removes what the new snapshot holds. Every event is kept, so restores as
// of any time are unchanged; loading then reads one snapshot and the
// batches written since.
//
// It is crash-safe at every step: the snapshot is published atomically
// under a new name (an existing name with other content is a conflict,
// never overwritten), and objects are removed only once the snapshot
// holding them is durable; a loader skips batch objects and snapshots that
// the newest snapshot already holds. Concurrent writers may go on storing
// batches; concurrent compactions lose nothing either (a loser's removals
// only cover what its own snapshot holds; see readIndex).
func Compact(ctx context.Context, r *repo.Repo) (CompactReport, error) {
	return compactIndex(ctx, r, nil)
}

// compactIndex is Compact; step, when not nil (tests), is called at each
// step of the compaction, and an error from it ends the compaction there,
// as a crash would.
func compactIndex(ctx context.Context, r *repo.Repo, step func(string) error) (CompactReport, error) {
	hook := func(name string) error {
		if step != nil {
			return step(name)
		}
		return nil
	}
	var rep CompactReport
	// First pass: what is there, and is there anything to consolidate?
	plan, err := readIndex(ctx, r, math.MaxUint64, func(unit) error { return nil })
	if err != nil {
		return rep, fmt.Errorf("compact media index: %w", err)
	}
	if err := hook("planned"); err != nil {
		return rep, err
	}
	var remove []string
	if len(plan.loose) > 0 || len(plan.foreign) > 0 {
		var gen uint64
		subsumes := []string{plan.base.name + "=" + plan.base.sha}
		if plan.base.name == "" {
			subsumes = nil
		}
		for _, s := range slices.Concat([]snapRef{plan.base}, plan.foreign, plan.garbage) {
			gen = max(gen, s.gen)
		}
		for _, s := range slices.Concat(plan.foreign, plan.garbage) {
			subsumes = append(subsumes, s.name+"="+s.sha)
		}
		name := snapshotName(gen+1, plan.last)
		pr, pw := io.Pipe()
		var got indexInfo
		written := make(chan struct{})
		go func() {
			defer close(written)
			bw := bufio.NewWriterSize(pw, 256<<10)
			var werr error
			got, werr = readIndex(ctx, r, plan.last, func(u unit) error {
				h, _ := json.Marshal(unitHeader{Batch: u.seq, SHA256: u.sha, Events: len(u.lines)})
				bw.Write(h)
				bw.WriteByte('\n')
				for _, l := range u.lines {
					bw.Write(l)
					bw.WriteByte('\n')
				}
				rep.Batches++
				rep.Events += len(u.lines)
				_, err := bw.Write(nil) // the first write error, if any: Put gave up
				return err
			})
			if werr == nil && !sameSnapshots(plan, got) {
				// Another compaction ran in between: "subsumes" (fixed
				// before the content) might not describe this content.
				werr = errors.New("another compaction ran meanwhile; try again later")
			}
			if werr == nil {
				werr = hook("snapshot written")
			}
			if werr == nil {
				werr = bw.Flush()
			}
			pw.CloseWithError(werr)
		}()
		_, err := r.Put(ctx, name, pr, map[string]string{"subsumes": strings.Join(subsumes, ",")})
		pr.CloseWithError(errors.New("snapshot not stored"))
		<-written
		if err != nil {
			return rep, fmt.Errorf("compact media index: store %s: %w", name, err)
		}
		// The snapshot holds exactly what the second pass read (batches
		// stored meanwhile into free sequence numbers up to plan.last
		// too): remove that, and the snapshots it subsumes.
		rep.Snapshot = name
		remove = slices.Concat(got.loose, got.covered)
		for _, s := range slices.Concat(plan.garbage, plan.foreign, []snapRef{plan.base}) {
			if s.name != "" {
				remove = append(remove, s.name)
			}
		}
	} else {
		// Nothing new: only leftovers of an interrupted compaction.
		remove = slices.Clone(plan.covered)
		for _, s := range plan.garbage {
			remove = append(remove, s.name)
		}
	}
	if err := hook("stored"); err != nil {
		return rep, err
	}
	// Batches first, then the snapshots, the old base last.
	for _, name := range remove {
		if err := r.Delete(ctx, name); err != nil {
			return rep, fmt.Errorf("compact media index: remove %s: %w", name, err)
		}
		rep.Removed++
		if err := hook("removed " + name); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// sameSnapshots says whether two passes saw the same snapshots.
func sameSnapshots(a, b indexInfo) bool {
	return a.base == b.base && slices.Equal(a.foreign, b.foreign) && slices.Equal(a.garbage, b.garbage)
}
