package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/synbak/synbak/internal/repo"
)

// A WAL segment's first page starts with PostgreSQL's long page header
// (XLogLongPageHeaderData, src/include/access/xlog_internal.h), in the
// server's byte order (little-endian on every platform synbak runs on):
//
//	offset  size  field
//	0       2     xlp_magic      XLOG_PAGE_MAGIC of the server's major version
//	2       2     xlp_info       flag bits; XLP_LONG_HEADER (0x0002) on a segment's first page
//	4       4     xlp_tli        timeline of the first record on the page
//	8       8     xlp_pageaddr   LSN of the page: the segment's start
//	16      4     xlp_rem_len    continuation bytes of a record from the previous page
//	20      4     (padding to MAXALIGN)
//	24      8     xlp_sysid      the cluster's system identifier
//	32      4     xlp_seg_size   wal_segment_size
//	36      4     xlp_xlog_blcksz  WAL page size (XLOG_BLCKSZ)
//
// CheckSegmentHeader checks these against the segment's name and the
// archive's settings before a segment is served or counted as archived: an
// object stored under another segment's name, or copied from another
// cluster, is caught before PostgreSQL replays it (PostgreSQL would stop at
// "unexpected pageaddr" and, without a target, promote as if the archive
// had ended there).
const (
	// LongPageHeaderSize is the size of a segment's first page header.
	LongPageHeaderSize = 40
	// xlpLongHeader is XLP_LONG_HEADER in xlp_info.
	xlpLongHeader = 0x0002
)

// pageMagics maps XLOG_PAGE_MAGIC to the PostgreSQL major that writes it
// (src/include/access/xlog_internal.h of each release branch). A new major
// changes the magic: add it here when synbak supports that major.
var pageMagics = map[uint16]int{
	0xD110: 15,
	0xD113: 16,
	0xD116: 17,
	0xD118: 18,
}

// ErrSegmentMismatch says that a WAL segment's content does not match its
// name or the archive (another segment's or another cluster's WAL).
var ErrSegmentMismatch = errors.New("WAL segment content does not match its name")

// SegmentMismatchError is a segment whose first page header contradicts its
// name or the archive's settings. It is a corruption (repo.IsCorrupt is
// true) and IsSegmentMismatch is true for it.
type SegmentMismatchError struct {
	Segment string // the segment's file name
	Reason  string
}

func (e *SegmentMismatchError) Error() string {
	return fmt.Sprintf("WAL segment %s: %s", e.Segment, e.Reason)
}

// Is makes errors.Is match ErrSegmentMismatch and repo.ErrCorrupt.
func (e *SegmentMismatchError) Is(target error) bool {
	return target == ErrSegmentMismatch || target == repo.ErrCorrupt
}

// IsSegmentMismatch reports whether err says that a segment's content does
// not match its name or the archive.
func IsSegmentMismatch(err error) bool { return errors.Is(err, ErrSegmentMismatch) }

// CheckSegmentHeader checks the long page header at the start of page (at
// least LongPageHeaderSize bytes of the segment's first page) against seg
// (its start LSN and timeline) and st (the archive's system identifier and
// segment size). The page's timeline may be older than seg's: the first
// segment of a new timeline begins with a copy of the old timeline's
// segment up to the switch point, whose pages keep the old timeline ID.
func CheckSegmentHeader(page []byte, seg Segment, st Settings) error {
	bad := func(format string, args ...any) error {
		return &SegmentMismatchError{Segment: seg.Name(), Reason: fmt.Sprintf(format, args...)}
	}
	if len(page) < LongPageHeaderSize {
		return bad("only %d bytes, less than the first page's header (%d bytes)", len(page), LongPageHeaderSize)
	}
	le := binary.LittleEndian
	magic := le.Uint16(page[0:2])
	if _, ok := pageMagics[magic]; !ok {
		return bad("page magic 0x%04X is not a WAL page of PostgreSQL 15 to 18", magic)
	}
	if info := le.Uint16(page[2:4]); info&xlpLongHeader == 0 {
		return bad("its first page has no long header (xlp_info 0x%04X): it is not the start of a segment", info)
	}
	if addr, want := le.Uint64(page[8:16]), uint64(seg.StartLSN()); addr != want {
		return bad("its first page is at %X/%X, but the name says %X/%X (the object holds another segment)",
			addr>>32, uint32(addr), want>>32, uint32(want))
	}
	if tli := le.Uint32(page[4:8]); tli == 0 || tli > seg.TLI {
		return bad("its first page is on timeline %d, but the name says timeline %d", tli, seg.TLI)
	}
	if st.SystemID != "" {
		sysid := le.Uint64(page[24:32])
		if strconv.FormatUint(sysid, 10) != st.SystemID {
			return bad("it belongs to the cluster with system identifier %d, but the archive is of %s (WAL of another cluster)", sysid, st.SystemID)
		}
	}
	if size := le.Uint32(page[32:36]); st.SegmentSize != 0 && uint64(size) != st.SegmentSize {
		return bad("its segment size is %d, the archive's %d", size, st.SegmentSize)
	}
	if blck := le.Uint32(page[36:40]); blck < 1024 || blck > 65536 || blck&(blck-1) != 0 {
		return bad("implausible WAL page size %d", blck)
	}
	return nil
}

// CheckSegmentObject checks the first page header of the WAL object name (a
// complete segment wal/<TLI>/<SEGMENT> or a partial one) against its name
// and st, reading only the start of the object. It returns false, nil for
// names that are not segment objects (history files, settings) and for a
// partial object too short to hold the header. A mismatch is an error for
// which IsSegmentMismatch and repo.IsCorrupt are true.
func CheckSegmentObject(ctx context.Context, rp *repo.Repo, name string, st Settings) (bool, error) {
	seg, kind, valid := parseObjectName(name, st.SegmentSize)
	if kind == KindOther || valid < LongPageHeaderSize {
		return false, nil
	}
	rd, err := rp.Get(ctx, name)
	if err != nil {
		return false, err
	}
	defer rd.Close()
	page := make([]byte, LongPageHeaderSize)
	n, err := io.ReadFull(rd, page)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return false, err
	}
	if err := CheckSegmentHeader(page[:n], seg, st); err != nil {
		return true, fmt.Errorf("object %s in repository %s: %w", name, rp, err)
	}
	return true, nil
}

// LongPageHeader returns the long page header PostgreSQL 15 writes at the
// start of seg, as written on timeline tli by the cluster sysid (an XLOG
// page size of 8 kB): for building test segments and tools.
func LongPageHeader(seg Segment, tli uint32, sysid uint64) []byte {
	le := binary.LittleEndian
	h := make([]byte, LongPageHeaderSize)
	le.PutUint16(h[0:], 0xD110)
	le.PutUint16(h[2:], xlpLongHeader)
	le.PutUint32(h[4:], tli)
	le.PutUint64(h[8:], uint64(seg.StartLSN()))
	le.PutUint64(h[24:], sysid)
	le.PutUint32(h[32:], uint32(seg.Size))
	le.PutUint32(h[36:], 8192)
	return h
}

// VerifySegmentObject reads the whole object name like repo.Verify (its
// checksum and binding) and, when it is a segment object, checks its first
// page header like CheckSegmentObject, in one read. checked reports
// whether the header was checked. A damaged object is reported before a
// header mismatch.
func VerifySegmentObject(ctx context.Context, rp *repo.Repo, name string, st Settings) (info repo.Info, checked bool, err error) {
	seg, kind, valid := parseObjectName(name, st.SegmentSize)
	if kind == KindOther || valid < LongPageHeaderSize {
		info, err = rp.Verify(ctx, name)
		return info, false, err
	}
	rd, err := rp.Get(ctx, name)
	if err != nil {
		return repo.Info{}, false, err
	}
	defer rd.Close()
	page := make([]byte, LongPageHeaderSize)
	n, rerr := io.ReadFull(rd, page)
	if rerr == nil {
		_, rerr = io.Copy(io.Discard, rd)
	} else if rerr == io.ErrUnexpectedEOF || rerr == io.EOF {
		rerr = nil // the header check names the short segment
	}
	if rerr != nil {
		return repo.Info{}, false, rerr
	}
	if err := CheckSegmentHeader(page[:n], seg, st); err != nil {
		return repo.Info{}, true, fmt.Errorf("object %s in repository %s: %w", name, rp, err)
	}
	return rd.Info(), true, nil
}
