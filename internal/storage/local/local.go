// Package local implements storage.Backend on a local directory.
//
// Each object is a regular file at dir/<name>. A Put writes a temporary file
// in dir/.tmp, fsyncs it, and publishes it with link(2), which — unlike
// rename(2) — never replaces an existing file: when the name already exists,
// the contents are compared byte by byte instead. Then it fsyncs the
// directory the object was linked into, or, through a SyncGroup, leaves that
// to the group's Sync (one fsync per directory for many objects). Files are
// created 0600 and directories 0700 whatever the umask.
package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/internal/durable"
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
	// syncDir fsyncs the directory an object was linked into (a test
	// records the calls).
	syncDir func(dir string) error
	// owner, when not nil, is given every file and directory this process
	// creates in the repository: root writing into a repository that
	// belongs to another user (the agent's service user) keeps it that
	// user's, so that the agent can still read and prune what root wrote.
	owner *owner
}

// owner is a uid and gid to give new files and directories.
type owner struct{ uid, gid int }

// chown gives path to o (nothing when o is nil).
func (o *owner) chown(path string) error {
	if o == nil {
		return nil
	}
	if err := os.Lchown(path, o.uid, o.gid); err != nil {
		return fmt.Errorf("give %s to the repository's owner (uid %d): %w", path, o.uid, err)
	}
	return nil
}

// repoOwner returns the owner new objects must get: the repository
// directory's owner when this process runs as root and the directory
// belongs to someone else; nil otherwise (a non-root process can only
// create files as itself, and root's own repository stays root's).
func repoOwner(dir string) (*owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: dir, Err: err}
	}
	if st.Uid == 0 {
		return nil, nil
	}
	return &owner{uid: int(st.Uid), gid: int(st.Gid)}, nil
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
	if err := mkdirAll(abs, nil); err != nil {
		return nil, fmt.Errorf("local repository %s: %w", abs, err)
	}
	own, err := repoOwner(abs)
	if err != nil {
		return nil, fmt.Errorf("local repository %s: %w", abs, err)
	}
	b := &Backend{dir: abs, tmp: filepath.Join(abs, tmpDirName), syncDir: syncDir, owner: own}
	if err := mkdirAll(b.tmp, own); err != nil {
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
func (b *Backend) Put(ctx context.Context, name string, r io.Reader) error {
	return b.put(ctx, name, r, nil)
}

// bufPool holds the copy buffers of Put and of the content comparison.
var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// put stores r under name. With g nil, the directory the object is linked
// into is fsynced before it returns; otherwise that is left to g.Sync.
func (b *Backend) put(ctx context.Context, name string, r io.Reader, g *syncGroup) (err error) {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	f, tmpName, err := b.createTemp()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// The temp directory was removed behind our back; recreate it.
			if err2 := mkdirAll(b.tmp, b.owner); err2 == nil {
				f, tmpName, err = b.createTemp()
			}
		}
		if err != nil {
			return fmt.Errorf("put %s: create temporary file: %w", name, b.permissionHint(diskFull(b.dir, err)))
		}
	}
	defer func() {
		_ = f.Close()
		if tmpName != "" {
			_ = os.Remove(tmpName)
		}
	}()
	if err := f.Chmod(fileMode); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if b.owner != nil {
		if err := f.Chown(b.owner.uid, b.owner.gid); err != nil {
			return fmt.Errorf("put %s: give the object to the repository's owner (uid %d): %w", name, b.owner.uid, err)
		}
	}

	// No checksum on the way: the rare name that exists already is
	// compared byte by byte with the temporary file.
	// Writeback starts while the object is still arriving, so that the
	// fsync below waits for little.
	fb := durable.NewFlushBehind(f)
	size, err := copyCtx(ctx, fb, r)
	if err != nil {
		return fmt.Errorf("put %s in %s: %w", name, b.dir, diskFull(b.dir, err))
	}
	// The content is durable before it has a name: never a partial object
	// under a final name.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", name, diskFull(b.dir, err))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}

	final := b.path(name)
	finalDir := filepath.Dir(final)
	// The directory usually exists: link first, create it when missing. A
	// concurrent Delete may remove an empty parent directory between our
	// mkdir and link; retry a few times in that case.
	for attempt := 0; ; attempt++ {
		err = unix.Linkat(unix.AT_FDCWD, tmpName, unix.AT_FDCWD, final, 0)
		if err == nil {
			break
		}
		err = &fs.PathError{Op: "link", Path: final, Err: err}
		if errors.Is(err, fs.ErrExist) {
			same, cerr := sameContent(final, f, size)
			if cerr != nil {
				return fmt.Errorf("put %s: compare with existing object: %w", name, cerr)
			}
			if !same {
				return fmt.Errorf("put %s in %s: %w", name, b.dir, storage.ErrConflict)
			}
			// Another Put may have published it and not be done making
			// it durable.
			break
		}
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			if err := mkdirAll(finalDir, b.owner); err != nil {
				return fmt.Errorf("put %s: %w", name, diskFull(b.dir, err))
			}
			continue
		}
		return fmt.Errorf("put %s: publish: %w", name, diskFull(b.dir, err))
	}
	rerr := os.Remove(tmpName)
	tmpName = ""
	if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return fmt.Errorf("put %s: remove temporary file: %w", name, rerr)
	}
	if g != nil {
		g.add(finalDir)
		return nil
	}
	if err := b.syncDir(finalDir); err != nil {
		return fmt.Errorf("put %s: fsync directory: %w", name, err)
	}
	return nil
}

// createTemp creates the file a Put writes, in the temp directory, without
// registering it with Go's poller (regular files gain nothing from it, and
// it costs five system calls per file).
//
// Not O_TMPFILE: its inode is fsynced with no links, and link(2) raising
// the count to one is an inode change that the directory's fsync does not
// write on a file system without a journal (ext4 without one, as on this
// project's machines); after a crash the name would point at an inode
// recorded as deleted. A named temporary file is fsynced with one link.
func (b *Backend) createTemp() (*os.File, string, error) {
	for range 100 {
		name := filepath.Join(b.tmp, "put-"+strconv.FormatUint(rand.Uint64(), 36))
		fd, err := unix.Open(name, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR|unix.O_CLOEXEC, fileMode)
		if err == nil {
			return os.NewFile(uintptr(fd), name), name, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, "", &fs.PathError{Op: "open", Path: name, Err: err}
		}
	}
	return nil, "", fmt.Errorf("create a temporary file in %s: too many names taken", b.tmp)
}

// copyCtx copies r to w in chunks, checking ctx between chunks.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	if wt, ok := r.(io.WriterTo); ok {
		// In-memory content (the repository's framing of a small object)
		// goes straight to the file, without a copy.
		n, err := wt.WriteTo(ctxWriter{ctx, w})
		if err != nil {
			return n, fmt.Errorf("write: %w", err)
		}
		return n, nil
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
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

// ctxWriter checks ctx before every write.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// sameContent reports whether the file at path is a regular file with the
// same size and bytes as tmp (of the given size).
func sameContent(path string, tmp *os.File, size int64) (bool, error) {
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
	t := io.NewSectionReader(tmp, 0, size)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	half := len(*bp) / 2
	a, c := (*bp)[:half], (*bp)[half:]
	for {
		n, err := io.ReadFull(t, a)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return false, err
		}
		m, err2 := io.ReadFull(f, c[:n])
		if err2 != nil && !(n == 0 && err2 == io.EOF) {
			if err2 == io.EOF || err2 == io.ErrUnexpectedEOF {
				return false, nil // shrank meanwhile: objects never do
			}
			return false, err2
		}
		if !bytes.Equal(a[:n], c[:m]) {
			return false, nil
		}
		if n < len(a) {
			// The temporary file is at its end: so must the object be.
			k, _ := f.Read(c[:1])
			return k == 0, nil
		}
	}
}

// syncGroup defers the directory fsyncs of Puts (storage.SyncGroup).
type syncGroup struct {
	b *Backend
	// syncMu serializes Syncs: a Sync that finds nothing left to do must
	// still wait for one in progress that took its directories, or it
	// would return before they are durable.
	syncMu sync.Mutex
	mu     sync.Mutex
	dirs   map[string]struct{}
}

// NewSyncGroup implements storage.DeferredSyncer: Puts through the group
// fsync the object's file before linking it, as always, and leave the fsync
// of the directory it is linked into to Sync, which does it once per
// directory for all of them.
func (b *Backend) NewSyncGroup() storage.SyncGroup {
	return &syncGroup{b: b, dirs: map[string]struct{}{}}
}

var _ storage.DeferredSyncer = (*Backend)(nil)

func (g *syncGroup) add(dir string) {
	g.mu.Lock()
	g.dirs[dir] = struct{}{}
	g.mu.Unlock()
}

// Put implements storage.SyncGroup.
func (g *syncGroup) Put(ctx context.Context, name string, r io.Reader) error {
	return g.b.put(ctx, name, r, g)
}

// Include implements storage.SyncGroup.
func (g *syncGroup) Include(name string) {
	if checkName(name) != nil {
		return
	}
	g.add(filepath.Dir(g.b.path(name)))
}

// Sync implements storage.SyncGroup.
func (g *syncGroup) Sync(ctx context.Context) error {
	g.syncMu.Lock()
	defer g.syncMu.Unlock()
	g.mu.Lock()
	dirs := g.dirs
	g.dirs = map[string]struct{}{}
	g.mu.Unlock()
	var failed []string
	var first error
	for dir := range dirs {
		err := ctx.Err()
		if err == nil {
			err = g.b.syncDir(dir)
			if errors.Is(err, fs.ErrNotExist) {
				err = nil // emptied and removed by Delete: nothing left to sync
			}
		}
		if err != nil {
			failed = append(failed, dir)
			if first == nil {
				first = fmt.Errorf("sync %s: fsync directory %s: %w", g.b.dir, dir, err)
			}
		}
	}
	if len(failed) > 0 {
		g.mu.Lock()
		for _, d := range failed {
			g.dirs[d] = struct{}{}
		}
		g.mu.Unlock()
	}
	return first
}

// permissionHint adds to a permission error who owns the repository and who
// is asking, and what to do; other errors are returned as they are.
func (b *Backend) permissionHint(err error) error {
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	var st unix.Stat_t
	ownerDesc, ownerRoot := "another user", false
	if unix.Stat(b.dir, &st) == nil {
		ownerDesc, ownerRoot = userDesc(int(st.Uid)), st.Uid == 0
	}
	fix := "run this command as " + ownerDesc
	if !ownerRoot {
		fix += " or as root (root writes as the repository's owner)"
	}
	return fmt.Errorf("%w: synbak runs as %s and the repository belongs to %s; the user the agent runs as must own every file in it: %s",
		err, userDesc(os.Geteuid()), ownerDesc, fix)
}

// userDesc names a uid: "synbak (uid 998)".
func userDesc(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
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
	return fmt.Errorf("%s %s: %w", op, name, b.permissionHint(err))
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
		// err names the directory (a *fs.PathError); say it once.
		return fmt.Errorf("list: %w", b.permissionHint(err))
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
			return fmt.Errorf("list: %w", b.permissionHint(err))
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
// explicitly, so the umask does not matter) and, with own not nil, owned by
// own, fsyncing the parent of each directory it creates. A regular file in the way is reported by name. A
// concurrent Delete may remove a parent it has just created (Delete removes
// directories it empties): then it starts again.
func mkdirAll(dir string, own *owner) error {
	var err error
	for range 100 {
		if err = mkdirAllOnce(dir, own); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

func mkdirAllOnce(dir string, own *owner) error {
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
		if err := mkdirAllOnce(parent, own); err != nil {
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
	if err := own.chown(dir); err != nil {
		return err
	}
	return syncDir(parent)
}

// syncDir fsyncs a directory so that entries created or removed in it are
// durable.
func syncDir(dir string) error { return durable.SyncDir(dir) }
