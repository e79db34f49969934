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

// objectKind classifies a repository object name under wal/<TLI>/.
type objectKind int

const (
	kindOther objectKind = iota
	kindSegment
	kindPartial
)

// parseObjectName parses wal/<TLI>/<SEGMENT>[.partial.<OFFSET>].
func parseObjectName(name string, segSize uint64) (Segment, objectKind, uint64) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || len(rest) < 9 || rest[8] != '/' {
		return Segment{}, kindOther, 0
	}
	file := rest[9:]
	base, off, isPartial := strings.Cut(file, partialMarker)
	seg, err := ParseSegmentName(base, segSize)
	if err != nil || fmt.Sprintf("%08X", seg.TLI) != rest[:8] {
		return Segment{}, kindOther, 0
	}
	if !isPartial {
		return seg, kindSegment, segSize
	}
	valid, err := strconv.ParseUint(off, 16, 64)
	if err != nil || len(off) != 8 || valid > segSize {
		return Segment{}, kindOther, 0
	}
	return seg, kindPartial, valid
}
