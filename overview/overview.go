// Package overview summarizes a repository for people: the base backups,
// dumps, WAL coverage per timeline with its gaps and timeline switches, the
// media and config snapshot times, the recovery window, what is wrong with
// the archive, and the size by kind. The agent's status page and the
// weekly summary draw on it.
//
// Building it lists the repository once and reads the headers of only the
// first and last object of each contiguous WAL range (not of every
// segment); Cache keeps the result and rebuilds it at most every MaxAge,
// reusing what it read before (objects are immutable).
package overview

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/wal"
)

// Overview is a repository's state for people.
type Overview struct {
	Built        time.Time   `json:"built"`
	BuildSeconds float64     `json:"build_seconds"`
	Backups      []Backup    `json:"backups"`
	Incomplete   int         `json:"incomplete_backups"`
	Dumps        []Dump      `json:"dumps"`
	Timelines    []Timeline  `json:"timelines"`
	Gaps         []Gap       `json:"gaps"`
	Switches     []Switch    `json:"switches"`
	Windows      []Interval  `json:"recovery_windows"`
	Media        []time.Time `json:"media_snapshots"`
	Config       []time.Time `json:"config_snapshots"`
	Problems     []string    `json:"problems"`
	Sizes        []KindSize  `json:"sizes"`
	Segments     int         `json:"wal_segments"`
	SegmentSize  uint64      `json:"segment_size"`
	Extent       Interval    `json:"extent"`
}

// Backup is a complete base backup.
type Backup struct {
	ID         string    `json:"id"`
	Start      time.Time `json:"start"`
	End        time.Time `json:"end"`
	Timeline   uint32    `json:"timeline"`
	Size       int64     `json:"size"`
	StoredSize int64     `json:"stored_size"`
}

// Dump is a complete logical dump.
type Dump struct {
	ID         string    `json:"id"`
	Start      time.Time `json:"start"`
	End        time.Time `json:"end"`
	StoredSize int64     `json:"stored_size"`
}

// Timeline is the WAL archived on one timeline.
type Timeline struct {
	TLI    uint32  `json:"timeline"`
	Ranges []Range `json:"ranges"`
}

// Range is a run of consecutive segments (a trailing partial included).
type Range struct {
	First    string    `json:"first_segment"`
	Last     string    `json:"last_segment"`
	Segments int       `json:"segments"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Partial  bool      `json:"partial,omitempty"`
}

// Gap is a hole in the WAL that restores must cross: later WAL exists
// beyond a missing segment, so no restore reaches past From.
type Gap struct {
	Timeline uint32    `json:"timeline"`
	Missing  string    `json:"missing_from"`
	Segments int       `json:"missing_segments"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
}

// Switch is a timeline switch (a promotion).
type Switch struct {
	Timeline uint32    `json:"timeline"`
	LSN      string    `json:"lsn"`
	Time     time.Time `json:"time,omitzero"`
}

// Interval is a span of time.
type Interval struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// KindSize is the stored bytes and object count of one kind of object.
type KindSize struct {
	Kind    string `json:"kind"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`
}

// Window returns the newest recovery window (nil when none).
func (o *Overview) Window() *Interval {
	if o == nil || len(o.Windows) == 0 {
		return nil
	}
	w := o.Windows[len(o.Windows)-1]
	return &w
}

// objTimes are the server times recorded in a WAL object's header.
type objTimes struct{ first, last time.Time }

// builder holds what survives between builds.
type builder struct {
	times map[string]objTimes
}

func (bd *builder) objectTimes(ctx context.Context, r *repo.Repo, name string) (objTimes, error) {
	if t, ok := bd.times[name]; ok {
		return t, nil
	}
	info, err := r.Stat(ctx, name)
	if err != nil {
		return objTimes{}, err
	}
	var t objTimes
	t.last, _ = time.Parse(time.RFC3339Nano, info.Attrs[wal.AttrLastTime])
	t.first, _ = time.Parse(time.RFC3339Nano, info.Attrs[wal.AttrFirstTime])
	if t.first.IsZero() {
		t.first = t.last
	}
	t.first, t.last = t.first.UTC(), t.last.UTC()
	bd.times[name] = t
	return t, nil
}

type walObj struct {
	name  string
	valid uint64 // partial: valid bytes
}

// build reads the repository.
func (bd *builder) build(ctx context.Context, r *repo.Repo) (*Overview, error) {
	start := time.Now()
	o := &Overview{Backups: []Backup{}, Dumps: []Dump{}, Timelines: []Timeline{}, Gaps: []Gap{}, Switches: []Switch{},
		Windows: []Interval{}, Media: []time.Time{}, Config: []time.Time{}, Problems: []string{}, Sizes: []KindSize{}}
	sizes := map[string]*KindSize{}
	var walNames []string
	var history []uint32
	if err := r.List(ctx, "", func(oi storage.ObjectInfo) error {
		kind, rest, _ := strings.Cut(oi.Name, "/")
		k := sizes[kind]
		if k == nil {
			k = &KindSize{Kind: kind}
			sizes[kind] = k
		}
		k.Objects++
		k.Bytes += oi.Size
		switch {
		case kind == "wal":
			if o, ok := wal.ParseObjectName(oi.Name, 0); ok && o.Kind == wal.KindHistory {
				history = append(history, o.TLI)
			} else {
				walNames = append(walNames, oi.Name)
			}
		case kind == "media" && strings.HasPrefix(rest, "index/"):
			o.Media = append(o.Media, oi.ModTime.UTC())
		case kind == "config" && strings.HasPrefix(rest, "index/"):
			o.Config = append(o.Config, oi.ModTime.UTC())
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list %s: %w", r, err)
	}
	for _, kind := range []string{"backups", "wal", "dumps", "media", "config", "meta"} {
		if k := sizes[kind]; k != nil {
			o.Sizes = append(o.Sizes, *k)
			delete(sizes, kind)
		}
	}
	var rest []string
	for k := range sizes {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	for _, k := range rest {
		o.Sizes = append(o.Sizes, *sizes[k])
	}
	sort.Slice(o.Media, func(i, j int) bool { return o.Media[i].Before(o.Media[j]) })
	sort.Slice(o.Config, func(i, j int) bool { return o.Config[i].Before(o.Config[j]) })

	bs, err := basebackup.List(ctx, r)
	if err != nil {
		return nil, err
	}
	for _, b := range bs {
		o.Backups = append(o.Backups, Backup{ID: b.ID, Start: b.StartTime.UTC(), End: b.EndTime.UTC(), Timeline: b.Timeline, Size: b.Size(), StoredSize: b.StoredSize()})
	}
	inc, err := basebackup.ListIncomplete(ctx, r)
	if err != nil {
		return nil, err
	}
	o.Incomplete = len(inc)
	ds, err := dump.List(ctx, r)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		o.Dumps = append(o.Dumps, Dump{ID: d.ID, Start: d.StartTime.UTC(), End: d.EndTime.UTC(), StoredSize: d.StoredSize()})
	}

	if err := bd.walCoverage(ctx, r, o, bs, walNames, history); err != nil {
		return nil, err
	}
	o.extent()
	o.Built = time.Now().UTC()
	o.BuildSeconds = time.Since(start).Seconds()
	return o, nil
}

// walCoverage fills Timelines, Gaps, Switches and Windows.
func (bd *builder) walCoverage(ctx context.Context, r *repo.Repo, o *Overview, bs []basebackup.Backup, names []string, history []uint32) error {
	if len(names) == 0 {
		return nil
	}
	settings, err := wal.LoadSettings(ctx, r)
	if err != nil {
		if repo.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("read WAL settings: %w", err)
	}
	segSize := settings.SegmentSize
	o.SegmentSize = segSize
	complete := map[uint32]map[uint64]bool{}
	partials := map[uint32]map[uint64]walObj{}
	var newest uint32
	for _, name := range names {
		wo, ok := wal.ParseObjectName(name, segSize)
		if !ok || wo.Kind == wal.KindHistory {
			continue
		}
		seg, valid := wo.Segment, wo.Valid
		newest = max(newest, seg.TLI)
		if wo.Kind == wal.KindSegment {
			if complete[seg.TLI] == nil {
				complete[seg.TLI] = map[uint64]bool{}
			}
			complete[seg.TLI][seg.No] = true
			o.Segments++
			continue
		}
		if partials[seg.TLI] == nil {
			partials[seg.TLI] = map[uint64]walObj{}
		}
		if p, ok := partials[seg.TLI][seg.No]; !ok || valid > p.valid {
			partials[seg.TLI][seg.No] = walObj{name: name, valid: valid}
		}
	}
	hasHistory := map[uint32]bool{}
	for _, h := range history {
		newest = max(newest, h)
		hasHistory[h] = true
	}
	obj := func(tli uint32, no uint64) (string, bool) {
		if complete[tli][no] {
			return wal.SegmentAt(tli, pglogrepl.LSN(no*segSize), segSize).ObjectName(), false
		}
		if p, ok := partials[tli][no]; ok {
			return p.name, true
		}
		return "", false
	}

	// Per timeline: runs of consecutive segments, a partial extending the
	// last run (or standing alone) when it is beyond the complete ones.
	var tlis []uint32
	for tli := range complete {
		tlis = append(tlis, tli)
	}
	for tli := range partials {
		if complete[tli] == nil {
			tlis = append(tlis, tli)
		}
	}
	sort.Slice(tlis, func(i, j int) bool { return tlis[i] < tlis[j] })
	for _, tli := range tlis {
		if tli > 1 && !hasHistory[tli] {
			o.Problems = append(o.Problems, fmt.Sprintf("restores onto timeline %d impossible: its history file %s is missing", tli, wal.HistoryObjectName(tli)))
		}
		var nos []uint64
		for no := range complete[tli] {
			nos = append(nos, no)
		}
		maxC := uint64(0)
		for _, no := range nos {
			maxC = max(maxC, no)
		}
		var pNo uint64
		hasP := false
		for no := range partials[tli] {
			if (len(nos) == 0 || no > maxC) && (!hasP || no > pNo) {
				pNo, hasP = no, true
			}
		}
		if hasP {
			nos = append(nos, pNo)
		}
		sort.Slice(nos, func(i, j int) bool { return nos[i] < nos[j] })
		t := Timeline{TLI: tli, Ranges: []Range{}}
		for i := 0; i < len(nos); {
			j := i
			for j+1 < len(nos) && nos[j+1] == nos[j]+1 {
				j++
			}
			firstName, _ := obj(tli, nos[i])
			lastName, lastPartial := obj(tli, nos[j])
			// An unreadable header costs the range its times, not the
			// overview (verify reports the object).
			ft, err1 := bd.objectTimes(ctx, r, firstName)
			lt, err2 := bd.objectTimes(ctx, r, lastName)
			for _, err := range []error{err1, err2} {
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					o.Problems = append(o.Problems, fmt.Sprintf("cannot read a WAL object's header: %v", err))
				}
			}
			if ft.first.IsZero() {
				ft.first = lt.last
			}
			if lt.last.IsZero() {
				lt.last = ft.first
			}
			t.Ranges = append(t.Ranges, Range{
				First:    wal.SegmentAt(tli, pglogrepl.LSN(nos[i]*segSize), segSize).Name(),
				Last:     wal.SegmentAt(tli, pglogrepl.LSN(nos[j]*segSize), segSize).Name(),
				Segments: j - i + 1, From: ft.first, To: lt.last, Partial: lastPartial,
			})
			i = j + 1
		}
		o.Timelines = append(o.Timelines, t)
	}

	// The path restores follow: the newest timeline's history.
	spans, err := readHistory(ctx, r, newest)
	if err != nil {
		o.Problems = append(o.Problems, err.Error())
		return nil
	}
	for _, s := range spans[1:] {
		sw := Switch{Timeline: s.tli, LSN: s.begin.String()}
		// The switch's time: the newest server time archived on the
		// parent before it.
		o.Switches = append(o.Switches, sw)
	}
	segTLI := func(no uint64) uint32 {
		for i := len(spans) - 1; i >= 0; i-- {
			if uint64(spans[i].begin)/segSize <= no {
				return spans[i].tli
			}
		}
		return spans[0].tli
	}
	// Runs along the path.
	minNo, maxNo, any := uint64(0), uint64(0), false
	for _, s := range spans {
		for no := range complete[s.tli] {
			if !any || no < minNo {
				minNo = no
			}
			maxNo, any = max(maxNo, no), true
		}
		for no := range partials[s.tli] {
			if !any || no < minNo {
				minNo = no
			}
			maxNo, any = max(maxNo, no), true
		}
	}
	if !any {
		return nil
	}
	type run struct{ first, last uint64 }
	var runs []run
	in := false
	for no := minNo; no <= maxNo; no++ {
		tli := segTLI(no)
		_, present := complete[tli][no]
		if !present && no == maxNo {
			_, present = partials[tli][no]
		}
		switch {
		case present && in:
			runs[len(runs)-1].last = no
		case present:
			runs = append(runs, run{no, no})
			in = true
		default:
			in = false
		}
	}
	timeOf := func(no uint64, last bool) time.Time {
		name, _ := obj(segTLI(no), no)
		if name == "" {
			return time.Time{}
		}
		t, err := bd.objectTimes(ctx, r, name)
		if err != nil {
			return time.Time{}
		}
		if last {
			return t.last
		}
		return t.first
	}
	for i := 0; i+1 < len(runs); i++ {
		miss := runs[i].last + 1
		tli := segTLI(miss)
		o.Gaps = append(o.Gaps, Gap{Timeline: tli, Missing: wal.SegmentAt(tli, pglogrepl.LSN(miss*segSize), segSize).Name(),
			Segments: int(runs[i+1].first - miss), From: timeOf(runs[i].last, true), To: timeOf(runs[i+1].first, false)})
	}
	// A switch's time: when the new timeline's WAL begins.
	for i := range o.Switches {
		for _, t := range o.Timelines {
			if t.TLI == o.Switches[i].Timeline && len(t.Ranges) > 0 {
				o.Switches[i].Time = t.Ranges[0].From
			}
		}
	}
	// Recovery windows: from each backup's end to the end of the run
	// holding its start (the backup's own WAL must be whole). The
	// problems follow restore.ArchiveProblems' rules and words, from the
	// runs computed once (not a walk per backup).
	var wins []Interval
	gapReported := map[int]bool{}
	for _, b := range bs {
		onPath := false
		for _, s := range spans {
			onPath = onPath || s.tli == b.Timeline
		}
		if !onPath {
			o.Problems = append(o.Problems, fmt.Sprintf("backup %s is on timeline %d, which is not an ancestor of the newest timeline %d: it cannot be restored", b.ID, b.Timeline, newest))
			continue
		}
		sno, eno := uint64(b.StartLSN)/segSize, uint64(b.EndLSN)/segSize
		if b.EndLSN > 0 {
			eno = uint64(b.EndLSN-1) / segSize
		}
		found := false
		for i, rn := range runs {
			if rn.first <= sno && eno <= rn.last {
				to := timeOf(rn.last, true)
				if to.Before(b.EndTime) {
					to = b.EndTime.UTC()
				}
				wins = append(wins, Interval{From: b.EndTime.UTC(), To: to})
				found = true
				if i < len(o.Gaps) && !gapReported[i] { // the hole after this run (gap i follows run i)
					gapReported[i] = true
					g := o.Gaps[i]
					missing, _ := wal.ParseSegmentName(g.Missing, segSize)
					o.Problems = append(o.Problems, fmt.Sprintf("restores from backup %s to times after %s impossible: WAL segment %s is missing (later WAL exists)",
						b.ID, to.Format(time.RFC3339), missing.ObjectName()))
				}
				break
			}
		}
		if !found {
			o.Problems = append(o.Problems, fmt.Sprintf("backup %s cannot be restored at all: the WAL from %s to %s is not all in the repository", b.ID, b.StartLSN, b.EndLSN))
		}
	}
	sort.Slice(wins, func(i, j int) bool { return wins[i].From.Before(wins[j].From) })
	for _, w := range wins {
		if n := len(o.Windows); n > 0 && !w.From.After(o.Windows[n-1].To) {
			if w.To.After(o.Windows[n-1].To) {
				o.Windows[n-1].To = w.To
			}
			continue
		}
		o.Windows = append(o.Windows, w)
	}
	return nil
}

// extent is the span of time the overview covers.
func (o *Overview) extent() {
	var ts []time.Time
	for _, b := range o.Backups {
		ts = append(ts, b.Start, b.End)
	}
	for _, d := range o.Dumps {
		ts = append(ts, d.Start, d.End)
	}
	for _, t := range o.Timelines {
		for _, r := range t.Ranges {
			ts = append(ts, r.From, r.To)
		}
	}
	ts = append(ts, o.Media...)
	ts = append(ts, o.Config...)
	for _, t := range ts {
		if t.IsZero() {
			continue
		}
		if o.Extent.From.IsZero() || t.Before(o.Extent.From) {
			o.Extent.From = t
		}
		if t.After(o.Extent.To) {
			o.Extent.To = t
		}
	}
}

type span struct {
	tli   uint32
	begin pglogrepl.LSN
}

// readHistory returns the timelines leading to tli, oldest first
// (wal.ReadHistory).
func readHistory(ctx context.Context, r *repo.Repo, tli uint32) ([]span, error) {
	hs, err := wal.ReadHistory(ctx, r, tli)
	if err != nil {
		return nil, err
	}
	spans := make([]span, len(hs))
	for i, h := range hs {
		spans[i] = span{tli: h.TLI, begin: h.Begin}
	}
	return spans, nil
}
