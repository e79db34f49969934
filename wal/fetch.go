package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/synbak/synbak/internal/durable"
	"github.com/synbak/synbak/internal/repo"
)

// ErrNotFound means the requested file is not in the archive: for
// restore_command the normal end of the archive.
var ErrNotFound = errors.New("not in the archive")

// IsNotFound reports whether err says the file is not archived.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Fetcher serves PostgreSQL's restore_command from the repository.
type Fetcher struct {
	repo     *repo.Repo
	settings Settings
	cacheDir string // "" disables prefetching
	prefetch int
	log      *slog.Logger
}

// NewFetcher reads the archive's settings. cacheDir is where prefetched
// segments wait (state_dir/wal-fetch-cache); prefetch is how many segments
// after the requested one are fetched in parallel.
func NewFetcher(ctx context.Context, rp *repo.Repo, cacheDir string, prefetch int, log *slog.Logger) (*Fetcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, err := LoadSettings(ctx, rp)
	if err != nil {
		if repo.IsNotExist(err) {
			return nil, fmt.Errorf("the repository holds no WAL archive yet (no %s)", settingsObject)
		}
		return nil, fmt.Errorf("read %s: %w", settingsObject, err)
	}
	f := &Fetcher{repo: rp, settings: s, prefetch: prefetch, log: log}
	if cacheDir != "" && prefetch > 0 {
		dir := filepath.Join(cacheDir, s.SystemID)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			log.Warn("prefetching disabled: cannot create the cache directory", "path", dir, "err", err)
		} else {
			f.cacheDir = dir
		}
	}
	return f, nil
}

// Fetch writes the archived file (a segment name, or N.history) to dest
// atomically, after checking its checksum.
func (f *Fetcher) Fetch(ctx context.Context, file, dest string) error {
	if tli, ok := ParseHistoryName(file); ok {
		return f.copyObject(ctx, HistoryObjectName(tli), dest)
	}
	seg, err := ParseSegmentName(file, f.settings.SegmentSize)
	if err != nil {
		// .backup files and anything else: not archived by synbak.
		return fmt.Errorf("%s: %w", file, ErrNotFound)
	}

	// Prefetches finish (bounded) before Fetch returns: the process ends then.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if f.cacheDir != "" {
		f.cleanCache(seg)
		next := seg
		for i := 0; i < f.prefetch; i++ {
			next = next.Next()
			n := next
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.prefetchOne(pctx, n)
			}()
		}

		if err := f.fromCache(seg, dest); err == nil {
			return nil
		}
	}

	err = f.copySegment(ctx, seg, dest)
	if !repo.IsNotExist(err) {
		return err
	}
	return f.fetchPartial(ctx, seg, dest)
}

// fetchPartial serves the newest partial copy of seg under its plain name,
// but only when no complete copy of that segment exists on a later timeline
// (PostgreSQL then wants that one).
func (f *Fetcher) fetchPartial(ctx context.Context, seg Segment, dest string) error {
	later, err := f.laterTimelineHas(ctx, seg)
	if err != nil {
		return err
	}
	if later {
		return fmt.Errorf("%s: %w", seg.Name(), ErrNotFound)
	}
	objs, err := ReadSegment(ctx, f.repo, seg)
	if err != nil {
		return err
	}
	if objs.Partial == nil {
		return fmt.Errorf("%s: %w", seg.Name(), ErrNotFound)
	}
	newest, valid := objs.Partial.Name, objs.Partial.Valid
	f.log.Info("serving the newest partial segment (end of the archive)", "object", newest)
	rd, err := f.repo.Get(ctx, newest)
	if err != nil {
		return err
	}
	defer rd.Close()
	// Partial objects hold the valid bytes only; PostgreSQL wants a
	// segment of full size, zero-padded like pg_receivewal's .partial.
	body := &countReader{r: f.checked(seg, rd, true)}
	padded := io.MultiReader(body, &zeros{n: int64(f.settings.SegmentSize - valid)})
	if err := writeAtomic(dest, padded); err != nil {
		return err
	}
	if uint64(body.n) != valid {
		os.Remove(dest)
		return fmt.Errorf("%w: %s holds %d bytes, its name says %d", repo.ErrCorrupt, newest, body.n, valid)
	}
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// zeros reads n zero bytes.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	m := min(int64(len(p)), z.n)
	clear(p[:m])
	z.n -= m
	return int(m), nil
}

func (f *Fetcher) laterTimelineHas(ctx context.Context, seg Segment) (bool, error) {
	found := false
	err := f.repo.List(ctx, historyPrefix, func(oi objectInfo) error {
		tli, ok := ParseHistoryName(filepath.Base(oi.Name))
		if !ok || tli <= seg.TLI {
			return nil
		}
		s := seg
		s.TLI = tli
		if _, err := f.repo.Stat(ctx, s.ObjectName()); err == nil {
			found = true
		} else if !repo.IsNotExist(err) {
			return err
		}
		return nil
	})
	return found, err
}

// copySegment is copyObject for a complete segment, whose first page
// header must match its name and the archive (CheckSegmentHeader).
func (f *Fetcher) copySegment(ctx context.Context, seg Segment, dest string) error {
	rd, err := f.repo.Get(ctx, seg.ObjectName())
	if err != nil {
		if repo.IsNotExist(err) {
			return fmt.Errorf("%s: %w: %w", seg.ObjectName(), ErrNotFound, err)
		}
		return err
	}
	defer rd.Close()
	if err := writeAtomic(dest, f.checked(seg, rd, false)); err != nil {
		return fmt.Errorf("object %s: %w", seg.ObjectName(), err)
	}
	return nil
}

// checked returns a reader of seg's bytes from r that fails with a
// SegmentMismatchError as soon as the first page header is read and does
// not match seg and the archive. short allows fewer bytes than the header
// (a partial segment that small is passed unchecked).
func (f *Fetcher) checked(seg Segment, r io.Reader, short bool) io.Reader {
	return &headerCheck{r: r, seg: seg, st: f.settings, short: short}
}

type headerCheck struct {
	r     io.Reader
	seg   Segment
	st    Settings
	short bool
	buf   []byte
	done  bool
}

func (h *headerCheck) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if !h.done {
		need := LongPageHeaderSize - len(h.buf)
		h.buf = append(h.buf, p[:min(n, need)]...)
		if len(h.buf) == LongPageHeaderSize {
			h.done = true
			if cerr := CheckSegmentHeader(h.buf, h.seg, h.st); cerr != nil {
				return 0, cerr
			}
		} else if err == io.EOF && !h.short {
			h.done = true
			return 0, CheckSegmentHeader(h.buf, h.seg, h.st)
		}
	}
	return n, err
}

// copyObject streams an object to dest through a temp file, verifying its
// checksum before the rename.
func (f *Fetcher) copyObject(ctx context.Context, name, dest string) error {
	rd, err := f.repo.Get(ctx, name)
	if err != nil {
		if repo.IsNotExist(err) {
			return fmt.Errorf("%s: %w: %w", name, ErrNotFound, err)
		}
		return err
	}
	defer rd.Close()
	return writeAtomic(dest, rd)
}

// writeAtomic writes what r holds to dest durably (restore_command's
// file: PostgreSQL may read it at once).
func writeAtomic(dest string, r io.Reader) error {
	return durable.Write(dest, durable.Options{}, func(f *os.File) error {
		_, err := io.Copy(f, r)
		return err
	})
}

func (f *Fetcher) cachePath(seg Segment) string {
	return filepath.Join(f.cacheDir, seg.Name())
}

// fromCache moves a prefetched segment to dest.
func (f *Fetcher) fromCache(seg Segment, dest string) error {
	p := f.cachePath(seg)
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil || uint64(st.Size()) != f.settings.SegmentSize {
		os.Remove(p)
		return fmt.Errorf("bad cache entry %s", p)
	}
	if err := writeAtomic(dest, f.checked(seg, in, false)); err != nil {
		os.Remove(p)
		return err
	}
	os.Remove(p)
	return nil
}

// prefetchOne stores a complete segment (never a partial) in the cache.
func (f *Fetcher) prefetchOne(ctx context.Context, seg Segment) {
	p := f.cachePath(seg)
	if _, err := os.Stat(p); err == nil {
		return
	}
	rd, err := f.repo.Get(ctx, seg.ObjectName())
	if err != nil {
		return
	}
	defer rd.Close()
	tmp := p + ".tmp" + strconv.Itoa(os.Getpid())
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return
	}
	_, err = io.Copy(out, f.checked(seg, rd, false))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		if repo.IsCorrupt(err) {
			f.log.Error("corrupt segment in the repository", "object", seg.ObjectName(), "err", err)
		}
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
	}
}

// cleanCache removes cached segments before seg and stale temp files, so
// that the cache never holds more than about prefetch segments.
func (f *Fetcher) cleanCache(seg Segment) {
	des, err := os.ReadDir(f.cacheDir)
	if err != nil {
		return
	}
	for _, de := range des {
		name := de.Name()
		p := filepath.Join(f.cacheDir, name)
		s, err := ParseSegmentName(name, f.settings.SegmentSize)
		if err != nil {
			if info, err := de.Info(); err == nil && time.Since(info.ModTime()) > 10*time.Minute {
				os.Remove(p)
			}
			continue
		}
		if s.TLI != seg.TLI || s.No < seg.No || s.No > seg.No+uint64(f.prefetch) {
			os.Remove(p)
		}
	}
}
