package wal

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

// This file is the WAL archive's read model: the one place that lists the
// archive and makes sense of its object names (names.go holds the
// grammar). Restore planning, retention, `synbak list`, the overview,
// verify, basebackup's wait for its WAL and the receiver's resume all read
// the archive through it.

// settingsObject records what reading the archive needs to know.
const settingsObject = "wal/settings.json"

// SettingsObjectName is the repository name of the archive's settings.
const SettingsObjectName = settingsObject

// Settings are the archive-wide facts stored in wal/settings.json.
type Settings struct {
	SystemID    string `json:"system_id"`
	SegmentSize uint64 `json:"segment_size"`
}

// LoadSettings reads wal/settings.json. A repository without a WAL archive
// is an error for which repo.IsNotExist is true.
func LoadSettings(ctx context.Context, rp *repo.Repo) (Settings, error) {
	rd, err := rp.Get(ctx, settingsObject)
	if err != nil {
		return Settings{}, err
	}
	defer rd.Close()
	var s Settings
	b, err := io.ReadAll(rd)
	if err != nil {
		return Settings{}, err
	}
	if err := json.Unmarshal(b, &s); err != nil || s.SegmentSize == 0 || s.SegmentSize&(s.SegmentSize-1) != 0 {
		return Settings{}, fmt.Errorf("%s: invalid content", settingsObject)
	}
	return s, nil
}

// Timeline is what the archive holds of one timeline.
type Timeline struct {
	TLI uint32
	// Segments are the complete segments by segment number.
	Segments map[uint64]Object
	// Partials are the newest partial object of each segment number
	// (older ones, superseded and about to be deleted, are only in
	// Archive.Objects).
	Partials map[uint64]Object
	// History is the timeline's history file, nil when absent (always
	// for timeline 1).
	History *Object
}

// Object returns the object holding segment no: the complete one, else the
// newest partial.
func (t *Timeline) Object(no uint64) (Object, bool) {
	if t == nil {
		return Object{}, false
	}
	if o, ok := t.Segments[no]; ok {
		return o, true
	}
	o, ok := t.Partials[no]
	return o, ok
}

// Numbers returns the numbers of the complete segments, ascending.
func (t *Timeline) Numbers() []uint64 {
	if t == nil {
		return nil
	}
	nos := make([]uint64, 0, len(t.Segments))
	for no := range t.Segments {
		nos = append(nos, no)
	}
	slices.Sort(nos)
	return nos
}

// MaxNo returns the highest segment number with an object (complete or
// partial); ok is false for a timeline without segments.
func (t *Timeline) MaxNo() (no uint64, ok bool) {
	if t == nil {
		return 0, false
	}
	for n := range t.Segments {
		no, ok = max(no, n), true
	}
	for n := range t.Partials {
		no, ok = max(no, n), true
	}
	return no, ok
}

// Partial returns the partial object beyond the last complete segment: the
// open segment as last stored (or a timeline's end).
func (t *Timeline) Partial() (Object, bool) {
	no, ok := t.MaxNo()
	if !ok {
		return Object{}, false
	}
	if _, complete := t.Segments[no]; complete {
		return Object{}, false
	}
	return t.Partials[no], true
}

// Newest returns the object holding the timeline's newest WAL.
func (t *Timeline) Newest() (Object, bool) {
	no, ok := t.MaxNo()
	if !ok {
		return Object{}, false
	}
	return t.Object(no)
}

// Archive is the WAL archive as listed at one moment.
type Archive struct {
	Settings Settings
	// Timelines by timeline ID: every timeline with a segment, partial or
	// history object.
	Timelines map[uint32]*Timeline
	// Objects are every segment, partial and history object, in name
	// order, including superseded partials.
	Objects []Object

	r *repo.Repo
}

// ReadArchive reads the archive's settings and lists its objects. A
// repository without a WAL archive (no wal/settings.json) is an error for
// which repo.IsNotExist is true. Objects that are not WAL objects
// (foreign names, a segment in the wrong timeline's directory, a partial
// longer than a segment) are ignored.
func ReadArchive(ctx context.Context, r *repo.Repo) (*Archive, error) {
	st, err := LoadSettings(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("read the WAL archive's settings: %w", err)
	}
	return listArchive(ctx, r, st)
}

func listArchive(ctx context.Context, r *repo.Repo, st Settings) (*Archive, error) {
	var infos []storage.ObjectInfo
	if err := r.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		infos = append(infos, oi)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list the WAL archive: %w", err)
	}
	a := ArchiveOf(st, infos)
	a.r = r
	return a, nil
}

// ArchiveOf builds the archive's model from a listing made elsewhere (the
// objects under wal/; others are ignored). Its Times and History need a
// repository and fail: use ReadArchive for those.
func ArchiveOf(st Settings, infos []storage.ObjectInfo) *Archive {
	a := &Archive{Settings: st, Timelines: map[uint32]*Timeline{}}
	for _, oi := range infos {
		o, ok := ParseObjectName(oi.Name, st.SegmentSize)
		if !ok {
			continue
		}
		o.Size = oi.Size
		a.Objects = append(a.Objects, o)
		t := a.timeline(o.TLI)
		switch o.Kind {
		case KindHistory:
			h := o
			t.History = &h
		case KindSegment:
			t.Segments[o.Segment.No] = o
		case KindPartial:
			if p, ok := t.Partials[o.Segment.No]; !ok || o.Valid > p.Valid {
				t.Partials[o.Segment.No] = o
			}
		}
	}
	slices.SortFunc(a.Objects, func(x, y Object) int {
		switch {
		case x.Name < y.Name:
			return -1
		case x.Name > y.Name:
			return 1
		}
		return 0
	})
	return a
}

func (a *Archive) timeline(tli uint32) *Timeline {
	t := a.Timelines[tli]
	if t == nil {
		t = &Timeline{TLI: tli, Segments: map[uint64]Object{}, Partials: map[uint64]Object{}}
		a.Timelines[tli] = t
	}
	return t
}

// Timeline returns what the archive holds of tli (nil when nothing; the
// methods of a nil *Timeline answer "nothing").
func (a *Archive) Timeline(tli uint32) *Timeline { return a.Timelines[tli] }

// TLIs returns the archive's timelines, ascending.
func (a *Archive) TLIs() []uint32 {
	tlis := make([]uint32, 0, len(a.Timelines))
	for tli := range a.Timelines {
		tlis = append(tlis, tli)
	}
	slices.Sort(tlis)
	return tlis
}

// SegmentTLIs returns the timelines that hold segment or partial objects,
// ascending.
func (a *Archive) SegmentTLIs() []uint32 {
	var tlis []uint32
	for _, tli := range a.TLIs() {
		if _, ok := a.Timelines[tli].MaxNo(); ok {
			tlis = append(tlis, tli)
		}
	}
	return tlis
}

// Newest returns the newest timeline the archive knows (by a segment,
// partial or history object), 0 for an empty archive.
func (a *Archive) Newest() uint32 {
	var n uint32
	for tli := range a.Timelines {
		n = max(n, tli)
	}
	return n
}

// NewestSegment returns the newest complete segment: on the highest
// timeline that has one, the highest number.
func (a *Archive) NewestSegment() (Object, bool) {
	tlis := a.TLIs()
	for i := len(tlis) - 1; i >= 0; i-- {
		if nos := a.Timelines[tlis[i]].Numbers(); len(nos) > 0 {
			return a.Timelines[tlis[i]].Segments[nos[len(nos)-1]], true
		}
	}
	return Object{}, false
}

// History returns the timelines leading to tli (ReadHistory).
func (a *Archive) History(ctx context.Context, tli uint32) ([]TimelineSpan, error) {
	if a.r == nil && tli > 1 {
		return nil, fmt.Errorf("%w: the archive model was built without its repository", ErrNoHistory)
	}
	return ReadHistory(ctx, a.r, tli)
}

// TimeRange is the server-time range recorded with a segment object: the
// time of the first message that wrote into it and the time up to which it
// is known complete. A zero time is one not recorded (or unreadable).
type TimeRange struct {
	First, Last time.Time
}

// Times reads the server-time range recorded with o (attributes first_time
// and last_time, UTC). The WAL receiver replaces a partial object by a
// longer one or by the complete segment at any time: when o is gone, Times
// reads the segment's newest object instead and returns it as cur.
func (a *Archive) Times(ctx context.Context, o Object) (cur Object, tr TimeRange, err error) {
	if a.r == nil {
		return o, TimeRange{}, fmt.Errorf("times of %s: the archive model was built without its repository", o.Name)
	}
	return ReadTimes(ctx, a.r, o)
}

// ReadTimes is Archive.Times for a single object.
func ReadTimes(ctx context.Context, r *repo.Repo, o Object) (cur Object, tr TimeRange, err error) {
	cur = o
	for attempt := 0; ; attempt++ {
		info, err := r.Stat(ctx, cur.Name)
		if err == nil {
			tr.First, _ = time.Parse(time.RFC3339Nano, info.Attrs[AttrFirstTime])
			tr.Last, _ = time.Parse(time.RFC3339Nano, info.Attrs[AttrLastTime])
			tr.First, tr.Last = tr.First.UTC(), tr.Last.UTC()
			return cur, tr, nil
		}
		if !repo.IsNotExist(err) || cur.Kind != KindPartial || attempt == 4 {
			return cur, TimeRange{}, fmt.Errorf("read WAL object %s: %w", cur.Name, err)
		}
		objs, lerr := ReadSegment(ctx, r, cur.Segment)
		if lerr != nil {
			return cur, TimeRange{}, lerr
		}
		switch {
		case objs.Complete != nil:
			cur = *objs.Complete
		case objs.Partial != nil:
			cur = *objs.Partial
		default:
			return cur, TimeRange{}, fmt.Errorf("read WAL object %s: %w", cur.Name, err)
		}
	}
}

// SegmentObjects are the objects stored for one segment.
type SegmentObjects struct {
	// Complete is the complete segment, nil when not stored.
	Complete *Object
	// Partial is the newest partial object, nil when none.
	Partial *Object
}

// ReadSegment lists the objects stored for seg (whose Size must be set, as
// SegmentAt and ParseSegmentName do): the complete segment and the newest
// partial one. It lists one segment's names only, so pollers can call it
// often.
func ReadSegment(ctx context.Context, r *repo.Repo, seg Segment) (SegmentObjects, error) {
	var so SegmentObjects
	err := r.List(ctx, seg.ObjectName(), func(oi storage.ObjectInfo) error {
		o, ok := ParseObjectName(oi.Name, seg.Size)
		if !ok || o.Segment != seg {
			return nil
		}
		o.Size = oi.Size
		switch {
		case o.Kind == KindSegment:
			so.Complete = &o
		case o.Kind == KindPartial && (so.Partial == nil || o.Valid > so.Partial.Valid):
			so.Partial = &o
		}
		return nil
	})
	if err != nil {
		return SegmentObjects{}, fmt.Errorf("list WAL segment %s: %w", seg.ObjectName(), err)
	}
	return so, nil
}

// lastArchivedSegment returns the newest complete segment in the repository
// (highest timeline, then highest number), or nil.
func lastArchivedSegment(ctx context.Context, rp *repo.Repo, segSize uint64) (*Segment, error) {
	a, err := listArchive(ctx, rp, Settings{SegmentSize: segSize})
	if err != nil {
		return nil, err
	}
	o, ok := a.NewestSegment()
	if !ok {
		return nil, nil
	}
	return &o.Segment, nil
}
