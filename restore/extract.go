// Package restore turns a base backup in the repository back into a
// PostgreSQL data directory and prepares it for recovery (restore_command,
// recovery target, recovery.signal).
package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo"
)

// Owner is the OS user and group restored files are given (the user that
// will run the restored server).
type Owner struct{ UID, GID int }

// ExtractOptions adjust Extract.
type ExtractOptions struct {
	// TablespaceDirs maps a tablespace OID to the directory its files go
	// to. A tablespace not in the map goes to <pgdata>_tablespaces/<OID>.
	// Directories must be missing or empty and outside pgdata.
	TablespaceDirs map[uint32]string
	// Owner, when not nil, is given every directory, file and symlink
	// written (which needs root).
	Owner *Owner
	// Progress, when not nil, is called with the number of archive bytes
	// read so far (of the backup's Size()) as extraction goes on.
	Progress func(done int64)
	// ReadWorkers is how many goroutines decode archives stored as
	// parallel zstd frames (basebackup.Options.CompressWorkers); 0 means
	// one per CPU, 1 the streaming decoder.
	ReadWorkers int
}

// ErrNotEmpty marks a restore target that already has files in it.
var ErrNotEmpty = errors.New("restore target is not empty")

// IsNotEmpty reports whether err says that a target directory is not empty.
func IsNotEmpty(err error) bool { return errors.Is(err, ErrNotEmpty) }

// TablespaceDir returns where Extract puts tablespace oid by default.
func TablespaceDir(pgdata string, oid uint32) string {
	return filepath.Join(filepath.Clean(pgdata)+"_tablespaces", strconv.FormatUint(uint64(oid), 10))
}

// Extract writes backup b from r into pgdata (missing or empty; created
// with mode 0700), its tablespaces into their directories with
// pg_tblspc/<OID> symlinks to them and tablespace_map rewritten to the new
// locations, and the backup manifest as pgdata/backup_manifest. Every part
// is checksum-verified as it is read, and its size and sha256 are checked
// against the backup's metadata. Archives are streamed: nothing is
// held in memory or staged on disk.
func Extract(ctx context.Context, r *repo.Repo, b basebackup.Backup, pgdata string, opts ExtractOptions, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pgdata, err := filepath.Abs(pgdata)
	if err != nil {
		return err
	}
	x := &extractor{owner: opts.Owner, progress: opts.Progress, readWorkers: opts.ReadWorkers}
	if x.readWorkers <= 0 {
		x.readWorkers = runtime.NumCPU()
	}
	tsDirs := map[uint32]string{}
	for _, a := range b.Archives {
		if a.TablespaceOID == 0 {
			continue
		}
		dir := opts.TablespaceDirs[a.TablespaceOID]
		if dir == "" {
			dir = TablespaceDir(pgdata, a.TablespaceOID)
		}
		dir, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		if rel, err := filepath.Rel(pgdata, dir); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return fmt.Errorf("tablespace %d directory %s is inside the data directory %s: put tablespaces beside it, never inside (the next base backup would copy them twice)", a.TablespaceOID, dir, pgdata)
		}
		tsDirs[a.TablespaceOID] = dir
	}
	if err := x.prepareDir(pgdata); err != nil {
		return err
	}
	for _, dir := range tsDirs {
		if err := x.prepareDir(dir); err != nil {
			return err
		}
	}
	// Tablespaces first, the data directory last: a half-extracted data
	// directory is the more misleading leftover.
	var base *basebackup.Archive
	for i := range b.Archives {
		a := &b.Archives[i]
		if a.TablespaceOID == 0 {
			base = a
			continue
		}
		log.Info("extracting tablespace", "oid", a.TablespaceOID, "dir", tsDirs[a.TablespaceOID], "size", a.Size)
		if err := x.archive(ctx, r, b, *a, tsDirs[a.TablespaceOID], nil); err != nil {
			return err
		}
	}
	if base == nil {
		return fmt.Errorf("backup %s has no data directory archive (base.tar)", b.ID)
	}
	log.Info("extracting data directory", "dir", pgdata, "size", base.Size)
	if err := x.archive(ctx, r, b, *base, pgdata, tsDirs); err != nil {
		return err
	}
	for oid, dir := range tsDirs {
		link := filepath.Join(pgdata, "pg_tblspc", strconv.FormatUint(uint64(oid), 10))
		if err := x.mkdirAll(filepath.Dir(link)); err != nil {
			return err
		}
		if _, err := os.Lstat(link); err == nil {
			if err := os.Remove(link); err != nil {
				return err
			}
		}
		if err := os.Symlink(dir, link); err != nil {
			return fmt.Errorf("link tablespace %d: %w", oid, err)
		}
		if err := x.chown(link); err != nil {
			return err
		}
	}
	if err := x.copyObject(ctx, r, basebackup.ManifestName(b.ID), filepath.Join(pgdata, "backup_manifest")); err != nil {
		return err
	}
	// One syncfs per file system instead of an fsync per file.
	for _, dir := range append([]string{pgdata}, mapValues(tsDirs)...) {
		if err := syncFS(dir); err != nil {
			return err
		}
	}
	return nil
}

func mapValues(m map[uint32]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

type extractor struct {
	owner    *Owner
	progress func(int64)
	done     int64 // archive bytes read, for progress
	// readWorkers decode an archive's frames (ExtractOptions.ReadWorkers).
	readWorkers int
}

func (x *extractor) chown(path string) error {
	if x.owner == nil {
		return nil
	}
	if err := os.Lchown(path, x.owner.UID, x.owner.GID); err != nil {
		return fmt.Errorf("give %s to uid %d: %w", path, x.owner.UID, err)
	}
	return nil
}

// prepareDir creates dir (0700) or checks that it is an empty directory.
func (x *extractor) prepareDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create parent of %s: %w", dir, err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	case err != nil:
		return fmt.Errorf("restore target %s: %w (it must be a missing or empty directory)", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%w: %s holds %s and %d more entries: restore only writes into a missing or empty directory; choose another or empty it", ErrNotEmpty, dir, entries[0].Name(), len(entries)-1)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	return x.chown(dir)
}

func (x *extractor) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := x.mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return x.chown(dir)
}

// archive extracts one archive into dir. tsDirs, for the data directory,
// are the tablespaces' new locations for tablespace_map.
func (x *extractor) archive(ctx context.Context, r *repo.Repo, b basebackup.Backup, a basebackup.Archive, dir string, tsDirs map[uint32]string) error {
	var onRead func(int)
	if x.progress != nil {
		onRead = func(n int) {
			x.done += int64(n)
			x.progress(x.done)
		}
	}
	// Archives stored as parallel frames are decoded on every core.
	pr := r.OpenParts(ctx, func(n int) string { return basebackup.PartName(b.ID, a.Name, n) }, a.Parts, onRead,
		repo.WithReadWorkers(x.readWorkers))
	defer pr.Close()
	var src io.Reader = pr
	switch {
	case strings.HasSuffix(a.Name, ".tar"):
	case strings.HasSuffix(a.Name, ".tar.zst"):
		dec, err := zstd.NewReader(pr, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return err
		}
		defer dec.Close()
		src = dec
	case strings.HasSuffix(a.Name, ".tar.lz4"):
		src = lz4.NewReader(pr)
	default:
		return fmt.Errorf("backup %s: archive %s: synbak cannot extract this format (server compression %q); only plain tar, zstd and lz4 are supported", b.ID, a.Name, b.ServerCompression)
	}
	tr := tar.NewReader(src)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("backup %s: archive %s: %w", b.ID, a.Name, err)
		}
		if err := x.entry(tr, hdr, dir, tsDirs); err != nil {
			return fmt.Errorf("backup %s: archive %s: %s: %w", b.ID, a.Name, hdr.Name, err)
		}
	}
	// Read the tar's trailing padding so that every part's checksum and the
	// archive's are checked.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return fmt.Errorf("backup %s: archive %s: %w", b.ID, a.Name, err)
	}
	if _, err := io.Copy(io.Discard, pr); err != nil {
		return fmt.Errorf("backup %s: archive %s: %w", b.ID, a.Name, err)
	}
	if pr.N() != a.Size {
		return fmt.Errorf("backup %s: archive %s: %w: read %d bytes, the backup recorded %d", b.ID, a.Name, repo.ErrCorrupt, pr.N(), a.Size)
	}
	return nil
}

func (x *extractor) entry(tr *tar.Reader, hdr *tar.Header, dir string, tsDirs map[uint32]string) error {
	name := filepath.Clean(hdr.Name)
	if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("unsafe path in archive")
	}
	path := filepath.Join(dir, name)
	if name == "." {
		return nil
	}
	if err := x.mkdirAll(filepath.Dir(path)); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return x.chown(path)
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, path); err != nil {
			return err
		}
		return x.chown(path)
	case tar.TypeReg:
		if tsDirs != nil && name == "tablespace_map" {
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return err
			}
			return x.writeFile(path, []byte(tablespaceMap(tsDirs)), 0o600)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, os.FileMode(hdr.Mode)&0o700|0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return x.chown(path)
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
}

func (x *extractor) writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	return x.chown(path)
}

func (x *extractor) copyObject(ctx context.Context, r *repo.Repo, name, path string) error {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return err
	}
	defer rd.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rd); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return x.chown(path)
}

// tablespaceMap renders tablespace_map for the new locations, escaping as
// PostgreSQL does.
func tablespaceMap(dirs map[uint32]string) string {
	var sb strings.Builder
	for oid, dir := range dirs {
		sb.WriteString(strconv.FormatUint(uint64(oid), 10))
		sb.WriteByte(' ')
		for _, c := range []byte(dir) {
			if c == '\n' || c == '\r' || c == '\\' {
				sb.WriteByte('\\')
			}
			sb.WriteByte(c)
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}
