package wal

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
)

// Repository layout of the WAL archive:
//
//	wal/<TLI>/<SEGMENT>                     a complete segment (TLI: 8 hex digits)
//	wal/<TLI>/<SEGMENT>.partial.<OFFSET>    the open segment as of OFFSET valid bytes
//	                                        (8 hex digits, so that names sort by progress);
//	                                        stored whole (zero-padded to the segment size)
//	wal/history/<TLI>.history               a timeline history file
//
// Objects carry attributes (see Attr*). Partial objects of a segment are
// deleted once a newer partial or the complete segment is stored.
const (
	prefix        = "wal/"
	historyPrefix = "wal/history/"
	partialMarker = ".partial."
)

// Attribute names stored with WAL objects.
const (
	AttrSystemID  = "system_id"
	AttrTimeline  = "timeline"
	AttrStartLSN  = "start_lsn"
	AttrEndLSN    = "end_lsn"    // first byte not contained (segment end, or valid end of a partial)
	AttrFirstTime = "first_time" // server time of the first message that wrote into the segment
	AttrLastTime  = "last_time"  // server time up to which the segment is known complete
	AttrSegSize   = "segment_size"
)

// Segment identifies one WAL segment file.
type Segment struct {
	TLI  uint32
	No   uint64 // segment number: LSN / segment size
	Size uint64 // segment size in bytes
}

// SegmentAt returns the segment of tli that holds lsn.
func SegmentAt(tli uint32, lsn pglogrepl.LSN, segSize uint64) Segment {
	return Segment{TLI: tli, No: uint64(lsn) / segSize, Size: segSize}
}

// StartLSN is the segment's first byte.
func (s Segment) StartLSN() pglogrepl.LSN { return pglogrepl.LSN(s.No * s.Size) }

// EndLSN is the first byte after the segment.
func (s Segment) EndLSN() pglogrepl.LSN { return pglogrepl.LSN((s.No + 1) * s.Size) }

// Next is the following segment on the same timeline.
func (s Segment) Next() Segment { s.No++; return s }

// Name is PostgreSQL's file name for the segment (XLogFileName).
func (s Segment) Name() string {
	perID := uint64(0x100000000) / s.Size
	return fmt.Sprintf("%08X%08X%08X", s.TLI, s.No/perID, s.No%perID)
}

// ObjectName is the repository name of the complete segment.
func (s Segment) ObjectName() string { return timelineDir(s.TLI) + s.Name() }

// PartialObjectName is the repository name of a partial copy of the segment
// holding valid bytes.
func (s Segment) PartialObjectName(valid uint64) string {
	return fmt.Sprintf("%s%s%08X", s.ObjectName(), partialMarker, valid)
}

func (s Segment) String() string { return s.Name() }

func timelineDir(tli uint32) string { return fmt.Sprintf("%s%08X/", prefix, tli) }

// HistoryObjectName is the repository name of a timeline history file.
func HistoryObjectName(tli uint32) string { return fmt.Sprintf("%s%08X.history", historyPrefix, tli) }

// HistoryFileName is PostgreSQL's name of a timeline history file.
func HistoryFileName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// ParseSegmentName parses a 24-hex-digit segment file name.
func ParseSegmentName(name string, segSize uint64) (Segment, error) {
	if len(name) != 24 || strings.ToUpper(name) != name {
		return Segment{}, fmt.Errorf("%q is not a WAL segment name", name)
	}
	tli, err1 := strconv.ParseUint(name[0:8], 16, 32)
	hi, err2 := strconv.ParseUint(name[8:16], 16, 32)
	lo, err3 := strconv.ParseUint(name[16:24], 16, 32)
	if err1 != nil || err2 != nil || err3 != nil || tli == 0 {
		return Segment{}, fmt.Errorf("%q is not a WAL segment name", name)
	}
	perID := uint64(0x100000000) / segSize
	if lo >= perID {
		return Segment{}, fmt.Errorf("%q is not a WAL segment name for %d-byte segments", name, segSize)
	}
	return Segment{TLI: uint32(tli), No: hi*perID + lo, Size: segSize}, nil
}

// ParseHistoryName parses "0000000X.history" and returns the timeline.
func ParseHistoryName(name string) (uint32, bool) {
	if len(name) != 16 || !strings.HasSuffix(name, ".history") {
		return 0, false
	}
	tli, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil || tli == 0 {
		return 0, false
	}
	return uint32(tli), true
}

// ObjectKind classifies a repository object under wal/.
type ObjectKind int

const (
	// KindOther is anything that is not a WAL object (wal/settings.json,
	// foreign or malformed names).
	KindOther ObjectKind = iota
	// KindSegment is a complete segment, wal/<TLI>/<SEGMENT>.
	KindSegment
	// KindPartial is a partial copy of the open segment,
	// wal/<TLI>/<SEGMENT>.partial.<VALID>.
	KindPartial
	// KindHistory is a timeline history file, wal/history/<TLI>.history.
	KindHistory
)

// Object is one parsed WAL archive object name.
type Object struct {
	Name string
	Kind ObjectKind
	// TLI is the timeline: the segment's, or the history file's.
	TLI uint32
	// Segment is the segment a complete or partial object holds.
	Segment Segment
	// Valid is how many bytes of WAL the object holds from the segment's
	// start: the segment size for a complete segment, the name's offset
	// for a partial one.
	Valid uint64
	// Size is the stored size (from the listing; 0 when parsed from a
	// name alone).
	Size int64
}

// EndLSN is the first byte of WAL after what a segment object holds.
func (o Object) EndLSN() pglogrepl.LSN {
	return o.Segment.StartLSN() + pglogrepl.LSN(o.Valid)
}

func (o Object) String() string { return o.Name }

// IsObjectName reports whether name lies in the WAL archive's part of the
// repository (wal/...), whatever its kind.
func IsObjectName(name string) bool { return strings.HasPrefix(name, prefix) }

// ParseObjectName parses a repository object name of the WAL archive:
// wal/<TLI>/<SEGMENT>, wal/<TLI>/<SEGMENT>.partial.<VALID> (VALID 8 hex
// digits, at most segSize) or wal/history/<TLI>.history. The segment
// must be on the timeline of its directory. ok is false for anything
// else; segSize is needed for segment names (not for history files).
func ParseObjectName(name string, segSize uint64) (o Object, ok bool) {
	rest, found := strings.CutPrefix(name, prefix)
	if !found {
		return Object{}, false
	}
	if file, found := strings.CutPrefix(rest, "history/"); found {
		tli, ok := ParseHistoryName(file)
		if !ok || file != HistoryFileName(tli) {
			return Object{}, false
		}
		return Object{Name: name, Kind: KindHistory, TLI: tli}, true
	}
	if len(rest) < 9 || rest[8] != '/' || segSize == 0 {
		return Object{}, false
	}
	file := rest[9:]
	base, off, isPartial := strings.Cut(file, partialMarker)
	seg, err := ParseSegmentName(base, segSize)
	if err != nil || fmt.Sprintf("%08X", seg.TLI) != rest[:8] {
		return Object{}, false
	}
	o = Object{Name: name, Kind: KindSegment, TLI: seg.TLI, Segment: seg, Valid: segSize}
	if !isPartial {
		return o, true
	}
	valid, err := strconv.ParseUint(off, 16, 64)
	if err != nil || len(off) != 8 || strings.ToUpper(off) != off || valid > segSize {
		return Object{}, false
	}
	o.Kind, o.Valid = KindPartial, valid
	return o, true
}

// parseObjectName is ParseObjectName for segment objects: the segment,
// its kind (KindOther for history files too) and its valid bytes.
func parseObjectName(name string, segSize uint64) (Segment, ObjectKind, uint64) {
	o, ok := ParseObjectName(name, segSize)
	if !ok || o.Kind == KindHistory {
		return Segment{}, KindOther, 0
	}
	return o.Segment, o.Kind, o.Valid
}
