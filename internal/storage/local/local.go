// Package local implements storage.Backend on a local directory.
//
// Each object is a regular file at dir/<name>. A Put writes a temporary file
// in dir/.tmp, fsyncs it, and publishes it with link(2), which — unlike
// rename(2) — never replaces an existing file: when the name already exists,
// the contents are compared instead. Files are created 0600 and directories
// 0700 whatever the umask.
package local

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/synbak/synbak/internal/storage"
)

const (
	tmpDirName = ".tmp"
	fileMode   = 0o600
	dirMode    = 0o700
	copyBuf    = 256 << 10
	// staleAge is the age after which New removes leftover temporary files.
	staleAge = time.Hour
)

// Backend stores objects as files under a directory.
type Backend struct {
	dir string
	tmp string
}

var _ storage.Backend = (*Backend)(nil)

// New opens the repository directory dir, creating it (and missing parents)
// with mode 0700 if needed, and removes temporary files older than an hour
// that an interrupted Put left behind.
func New(dir string) (*Backend, error) {
	if dir == "" {
		return nil, errors.New("local repository: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local repository %s: %w", dir, err)
	}
	if err := mkdirAll(abs); err != nil {
		return nil, fmt.Errorf("local repository %s: %w", abs, err)
	}
	b := &Backend{dir: abs, tmp: filepath.Join(abs, tmpDirName)}
	if err := mkdirAll(b.tmp); err != nil {
		return nil, fmt.Errorf("local repository %s: %w", abs, err)
	}
	b.removeStaleTemp(time.Now().Add(-staleAge))
	return b, nil
}

// Dir returns the repository directory (absolute).
func (b *Backend) Dir() string { return b.dir }

// String returns the repository directory.
func (b *Backend) String() string { return b.dir }

func (b *Backend) removeStaleTemp(before time.Time) {
	entries, err := os.ReadDir(b.tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || info.IsDir() || !info.ModTime().Before(before) {
			continue
		}
		_ = os.Remove(filepath.Join(b.tmp, e.Name()))
	}
}

// checkName applies storage.ValidName and reserves the temp directory.
func checkName(name string) error {
	if err := storage.ValidName(name); err != nil {
		return err
	}
	if name == tmpDirName || strings.HasPrefix(name, tmpDirName+"/") {
		return fmt.Errorf("%w: %q (%s is reserved by the local backend)", storage.ErrBadName, name, tmpDirName)
	}
	return nil
}

func (b *Backend) path(name string) string {
	return filepath.Join(b.dir, filepath.FromSlash(name))
}

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader) (err error) {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	f, err := os.CreateTemp(b.tmp, "put-*")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// The temp directory was removed behind our back; recreate it.
			if err2 := mkdirAll(b.tmp); err2 == nil {
				f, err = os.CreateTemp(b.tmp, "put-*")
			}
		}
		if err != nil {
			return fmt.Errorf("put %s: create temporary file in %s: %w", name, b.tmp, diskFull(b.dir, err))
		}
	}
	tmpName := f.Name()
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		_ = os.Remove(tmpName)
	}()
	if err := f.Chmod(fileMode); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}

	h := sha256.New()
	size, err := copyCtx(ctx, io.MultiWriter(f, h), r)
	if err != nil {
		return fmt.Errorf("put %s in %s: %w", name, b.dir, diskFull(b.dir, err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", name, diskFull(b.dir, err))
	}
	err = f.Close()
	f = nil
	if err != nil {
		return fmt.Errorf("put %s: close: %w", name, diskFull(b.dir, err))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])

	final := b.path(name)
	finalDir := filepath.Dir(final)
	// A concurrent Delete may remove an empty parent directory between our
	// mkdir and link; retry a few times in that case.
	for attempt := 0; ; attempt++ {
		if err := mkdirAll(finalDir); err != nil {
			return fmt.Errorf("put %s: %w", name, diskFull(b.dir, err))
		}
		err = os.Link(tmpName, final)
		if err == nil {
			break
		}
		if errors.Is(err, fs.ErrExist) {
			same, cerr := sameContent(final, size, sum)
			if cerr != nil {
				return fmt.Errorf("put %s: compare with existing object: %w", name, cerr)
			}
			if !same {
				return fmt.Errorf("put %s in %s: %w", name, b.dir, storage.ErrConflict)
			}
			return nil
		}
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			continue
		}
		return fmt.Errorf("put %s: publish: %w", name, diskFull(b.dir, err))
	}
	if err := os.Remove(tmpName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("put %s: remove temporary file: %w", name, err)
	}
	if err := syncDir(finalDir); err != nil {
		return fmt.Errorf("put %s: fsync directory: %w", name, err)
	}
	return nil
}

// copyCtx copies r to w in chunks, checking ctx between chunks.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, copyBuf)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, fmt.Errorf("write: %w", werr)
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

// sameContent reports whether the file at path has the given size and sha256.
func sameContent(path string, size int64, sum [sha256.Size]byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return false, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	var got [sha256.Size]byte
	h.Sum(got[:0])
	return got == sum, nil
}

// diskFull turns ENOSPC and EDQUOT into an error that says so.
func diskFull(dir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("the repository's disk is full (%s): free space or move the repository: %w", dir, err)
	}
	return err
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", name, offset)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	f, err := os.Open(b.path(name))
	if err != nil {
		return nil, b.notExist("get", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get %s in %s: %w", name, b.dir, storage.ErrNotExist)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("get %s: seek: %w", name, err)
		}
	}
	if length < 0 {
		return f, nil
	}
	return &limitedFile{Reader: io.LimitReader(f, length), f: f}, nil
}

type limitedFile struct {
	io.Reader
	f *os.File
}

func (l *limitedFile) Close() error { return l.f.Close() }

// notExist maps "missing" errors (including a file where a directory is
// expected) to storage.ErrNotExist.
func (b *Backend) notExist(op, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%s %s in %s: %w", op, name, b.dir, storage.ErrNotExist)
	}
	return fmt.Errorf("%s %s: %w", op, name, err)
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := checkName(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	fi, err := os.Stat(b.path(name))
	if err != nil {
		return storage.ObjectInfo{}, b.notExist("stat", name, err)
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s in %s: %w", name, b.dir, storage.ErrNotExist)
	}
	return storage.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements storage.Backend. It descends only into directories whose
// names can lead to a match for prefix.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return b.listDir(ctx, "", prefix, fn)
}

// listDir lists the directory whose object-name prefix is rel ("" for the
// root, else "a/b/").
func (b *Backend) listDir(ctx context.Context, rel, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", b.dir, err)
	}
	entries, err := os.ReadDir(filepath.Join(b.dir, filepath.FromSlash(rel)))
	if err != nil {
		if rel != "" && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
			return nil // removed concurrently
		}
		return fmt.Errorf("list %s: %w", b.dir, err)
	}
	type item struct {
		key string // full name, with a trailing "/" for directories
		dir bool
	}
	items := make([]item, 0, len(entries))
	for _, e := range entries {
		if rel == "" && e.Name() == tmpDirName {
			continue
		}
		full := rel + e.Name()
		switch {
		case e.IsDir():
			full += "/"
			// Descend only if the directory's names can start with prefix.
			if !strings.HasPrefix(full, prefix) && !strings.HasPrefix(prefix, full) {
				continue
			}
			items = append(items, item{full, true})
		case e.Type().IsRegular():
			if strings.HasPrefix(full, prefix) {
				items = append(items, item{full, false})
			}
		}
	}
	// Sorting by key (directories with a trailing slash) yields the lexical
	// order of full object names.
	sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
	for _, it := range items {
		if it.dir {
			if err := b.listDir(ctx, it.key, prefix, fn); err != nil {
				return err
			}
			continue
		}
		fi, err := os.Lstat(filepath.Join(b.dir, filepath.FromSlash(it.key)))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted concurrently
			}
			return fmt.Errorf("list %s: %w", b.dir, err)
		}
		if err := fn(storage.ObjectInfo{Name: it.key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Backend. It also removes parent directories
// left empty.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	p := b.path(name)
	fi, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if fi.IsDir() {
		return nil // no object of that name
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	dir := filepath.Dir(p)
	if err := syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: fsync directory: %w", name, err)
	}
	// Remove parent directories that are now empty; failure is harmless.
	for dir != b.dir && strings.HasPrefix(dir, b.dir+string(filepath.Separator)) {
		if os.Remove(dir) != nil {
			break
		}
		dir = filepath.Dir(dir)
		_ = syncDir(dir)
	}
	return nil
}

// mkdirAll creates dir and its missing parents with mode 0700 (chmod'ed
// explicitly, so the umask does not matter), fsyncing the parent of each
// directory it creates. A regular file in the way is reported by name. A
// concurrent Delete may remove a parent it has just created (Delete removes
// directories it empties): then it starts again.
func mkdirAll(dir string) error {
	var err error
	for range 100 {
		if err = mkdirAllOnce(dir); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

func mkdirAllOnce(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		return fmt.Errorf("%s exists but is not a directory", dir)
	}
	if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllOnce(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
				return nil // created concurrently
			}
			return fmt.Errorf("%s exists but is not a directory", dir)
		}
		return fmt.Errorf("create directory: %w", err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return err
	}
	return syncDir(parent)
}

// syncDir fsyncs a directory so that entries created or removed in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
