package wal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/internal/durable"
)

// The spool is the receiver's local, durable staging area (under
// state_dir/wal/<system id>/). What the receiver acknowledges to PostgreSQL
// as flushed is fsynced here first; the uploader then moves it to the
// repository. Files:
//
//	<SEGMENT>.partial                the open segment, pre-sized to the segment size
//	<SEGMENT>                        a complete segment waiting for upload
//	<SEGMENT>.partial.<OFFSET>       the last, incomplete segment of an ended timeline,
//	                                 waiting for upload as a partial object
//	<SEGMENT>.json                   server times of a finished file (optional)
//	<SEGMENT>.partial.json           server times of the open segment, recorded with
//	                                 each partial object (for a restart without a server)
//	conflicts/                       segments that differed from the repository's copy
//	lock                             flock held by the running receiver
type spool struct {
	dir     string
	segSize uint64
	lock    *os.File
}

// segTimes are the server times recorded for a spool file.
type segTimes struct {
	First string `json:"first_time,omitempty"`
	Last  string `json:"last_time,omitempty"`
}

func openSpool(dir string, segSize uint64) (*spool, error) {
	if err := os.MkdirAll(filepath.Join(dir, "conflicts"), 0o700); err != nil {
		return nil, fmt.Errorf("WAL spool %s: %w (check state_dir)", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("WAL spool %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: WAL spool %s is locked by another synbak process (an agent, a `wal stream` or a `backup`)", ErrSpoolLocked, dir)
	}
	return &spool{dir: dir, segSize: segSize, lock: f}, nil
}

// ErrSpoolLocked says that another process holds the spool's lock: a
// receiver runs there (it holds the lock for its whole life). It is never
// permanent: Run waits for the lock unless Options.YieldSpool is set.
var ErrSpoolLocked = errors.New("WAL spool locked")

// IsSpoolLocked reports whether err says that another process holds the
// spool.
func IsSpoolLocked(err error) bool { return errors.Is(err, ErrSpoolLocked) }

func (s *spool) close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close() // releases the flock
	s.lock = nil
	return err
}

func (s *spool) path(name string) string { return filepath.Join(s.dir, name) }

// spoolEntry is a finished file waiting for upload.
type spoolEntry struct {
	file  string // file name in the spool
	seg   Segment
	valid uint64 // bytes of WAL in it (segment size for complete segments)
}

// pending lists finished files waiting for upload, oldest first.
func (s *spool) pending() ([]spoolEntry, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []spoolEntry
	for _, de := range des {
		name := de.Name()
		base, off, isPartial := strings.Cut(name, partialMarker)
		seg, err := ParseSegmentName(base, s.segSize)
		if err != nil {
			continue
		}
		valid := s.segSize
		if isPartial {
			v, err := strconv.ParseUint(off, 16, 64)
			if err != nil || len(off) != 8 {
				continue
			}
			valid = v
		}
		out = append(out, spoolEntry{file: name, seg: seg, valid: valid})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].seg.TLI != out[j].seg.TLI {
			return out[i].seg.TLI < out[j].seg.TLI
		}
		return out[i].seg.No < out[j].seg.No
	})
	return out, nil
}

// openPartials lists <SEGMENT>.partial files (normally at most one).
func (s *spool) openPartials() ([]Segment, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []Segment
	for _, de := range des {
		base, ok := strings.CutSuffix(de.Name(), ".partial")
		if !ok {
			continue
		}
		if seg, err := ParseSegmentName(base, s.segSize); err == nil {
			out = append(out, seg)
		}
	}
	return out, nil
}

func (s *spool) writeTimes(name string, t segTimes) error {
	b, _ := json.Marshal(t)
	return writeFileSync(s.path(name+".json"), b)
}

func (s *spool) readTimes(name string) segTimes {
	var t segTimes
	if b, err := os.ReadFile(s.path(name + ".json")); err == nil {
		_ = json.Unmarshal(b, &t)
	}
	return t
}

// remove deletes a finished file and its times, then syncs the directory.
func (s *spool) remove(name string) error {
	if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(s.path(name + ".json"))
	return syncDir(s.dir)
}

// setAside moves a file that conflicts with the repository out of the way.
func (s *spool) setAside(name, suffix string) (string, error) {
	dst := filepath.Join(s.dir, "conflicts", name+"."+suffix)
	if err := os.Rename(s.path(name), dst); err != nil {
		return "", err
	}
	_ = os.Remove(s.path(name + ".json"))
	if err := syncDir(filepath.Join(s.dir, "conflicts")); err != nil {
		return "", err
	}
	return dst, syncDir(s.dir)
}

// segmentFile is the open segment being written.
type segmentFile struct {
	seg       Segment
	f         *os.File
	dir       string    // the spool directory
	dirSynced bool      // the file's directory entry is durable
	written   uint64    // contiguous bytes written from the segment start
	synced    uint64    // bytes known durable
	first     time.Time // server time of the first write
	last      time.Time // server time of the last write (or keepalive finding it complete)
}

// times formats the segment's server times for its object's attributes
// (only when needed: not for every message).
func (sf *segmentFile) times() segTimes {
	var t segTimes
	if !sf.first.IsZero() {
		t.First = sf.first.UTC().Format(time.RFC3339Nano)
	}
	if !sf.last.IsZero() {
		t.Last = sf.last.UTC().Format(time.RFC3339Nano)
	}
	return t
}

// create makes a pre-sized <SEGMENT>.partial, or opens the one an earlier
// session or run left (streaming restarts at the segment start and rewrites
// it with the same bytes; it is not truncated, because the uploader may be
// storing its durable bytes as a partial object meanwhile).
// It does not fsync: nothing in the file is reported as flushed before sync
// (which also makes the directory entry durable) or finish, and a file lost
// in a crash is rewritten from the segment start.
func (s *spool) create(seg Segment) (*segmentFile, error) {
	p := s.path(seg.Name() + ".partial")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", p, err)
	}
	if fi, err := f.Stat(); err == nil && uint64(fi.Size()) == s.segSize {
		return &segmentFile{seg: seg, f: f, dir: s.dir}, nil
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(s.segSize)); err != nil {
		// File systems without fallocate: zero-fill like pg_receivewal.
		if err := zeroFill(f, s.segSize); err != nil {
			f.Close()
			os.Remove(p)
			return nil, fmt.Errorf("pre-size %s: %w", p, diskErr(err))
		}
	}
	return &segmentFile{seg: seg, f: f, dir: s.dir}, nil
}

func zeroFill(f *os.File, size uint64) error {
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		n := min(uint64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], int64(off)); err != nil {
			return err
		}
	}
	return nil
}

// sync makes everything written durable, the directory entry included.
func (sf *segmentFile) sync() error {
	if sf.synced == sf.written && sf.dirSynced {
		return nil
	}
	if err := sf.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", sf.f.Name(), diskErr(err))
	}
	if !sf.dirSynced {
		if err := syncDir(sf.dir); err != nil {
			return err
		}
		sf.dirSynced = true
	}
	sf.synced = sf.written
	return nil
}

// finish syncs the file, records its times and renames it to final
// (a segment name, or a .partial.<OFFSET> name for a timeline's end), then
// syncs the directory. The receiver runs it in its finisher goroutine for
// complete segments.
func (s *spool) finish(sf *segmentFile, final string) error {
	if err := sf.f.Sync(); err != nil {
		sf.f.Close()
		return fmt.Errorf("fsync %s: %w", sf.f.Name(), diskErr(err))
	}
	sf.synced = sf.written
	if err := sf.f.Close(); err != nil {
		return err
	}
	if err := s.writeTimes(final, sf.times()); err != nil {
		return err
	}
	if err := os.Rename(sf.f.Name(), s.path(final)); err != nil {
		return err
	}
	_ = os.Remove(s.path(sf.seg.Name() + ".partial.json")) // the open file's times
	return syncDir(s.dir)
}

// diskErr makes ENOSPC say what it means.
func diskErr(err error) error {
	if errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("the WAL spool's disk is full (free space under state_dir; nothing is acknowledged to PostgreSQL until it can be written): %w", err)
	}
	return err
}

// writeFileSync writes a small spool file (an open segment's times)
// atomically; the spool's directory is synced when the segment is finished.
func writeFileSync(p string, b []byte) error {
	return diskErr(durable.Write(p, durable.Options{SkipDirSync: true}, func(f *os.File) error {
		_, err := f.Write(b)
		return err
	}))
}

func syncDir(dir string) error { return durable.SyncDir(dir) }
