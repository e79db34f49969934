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
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/durable"
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
	// Chain, when set, is the restored backup's chain as
	// basebackup.LoadChain returns it (oldest first, ending with the
	// backup); Extract loads it otherwise.
	Chain []basebackup.Backup
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
// locations. Every part is checksum-verified as it is read, its size and
// sha256 are checked against the backup's metadata, and every file
// against the backup's manifest. Archives are streamed: nothing is held in
// memory or staged on disk.
//
// An incremental backup is rebuilt from its chain (opts.Chain, else
// loaded from r): the full backup is extracted, then each incremental
// applied on top (see incremental.go), and the result checked against the
// newest manifest. A full backup's manifest is written as
// pgdata/backup_manifest.
func Extract(ctx context.Context, r *repo.Repo, b basebackup.Backup, pgdata string, opts ExtractOptions, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pgdata, err := filepath.Abs(pgdata)
	if err != nil {
		return err
	}
	x := &extractor{owner: opts.Owner, progress: opts.Progress, readWorkers: opts.ReadWorkers, buf: make([]byte, 1<<20), heapChanged: map[string]int{}, vmWhole: map[string]int{}}
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
	chain := opts.Chain
	if len(chain) == 0 {
		if chain, err = basebackup.LoadChain(ctx, r, b); err != nil {
			return err
		}
	}
	if last := chain[len(chain)-1]; last.ID != b.ID {
		return fmt.Errorf("backup %s: the chain given ends with %s", b.ID, last.ID)
	}
	var newest manifest
	for i, m := range chain {
		man, err := loadManifest(ctx, r, m)
		if err != nil {
			return err
		}
		x.apply, x.index = i > 0, i
		if len(chain) > 1 {
			log.Info("extracting chain member", "backup", m.ID, "kind", m.KindName(), "member", i+1, "of", len(chain))
		}
		if err := x.member(ctx, r, m, man, pgdata, tsDirs, log); err != nil {
			return err
		}
		newest = man
	}
	// The final file set is the newest manifest's (INCREMENTAL. stripped):
	// files of older members that it lacks were deleted on the server.
	if err := x.finish(newest, pgdata, tsDirs, len(chain) > 1, log); err != nil {
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
	// A chain's newest manifest lists INCREMENTAL. files, not what was
	// rebuilt: no backup_manifest then (the server never reads it).
	if len(chain) == 1 {
		if err := x.copyObject(ctx, r, basebackup.ManifestName(b.ID), filepath.Join(pgdata, "backup_manifest")); err != nil {
			return err
		}
	}
	// One syncfs per file system instead of an fsync per file.
	for _, dir := range append([]string{pgdata}, mapValues(tsDirs)...) {
		if err := syncFS(dir); err != nil {
			return err
		}
	}
	return nil
}

// member extracts one backup of the chain: its tablespaces first, the data
// directory last (a half-extracted data directory is the more misleading
// leftover). A tablespace the newest backup no longer has is skipped:
// nothing of it survives.
func (x *extractor) member(ctx context.Context, r *repo.Repo, b basebackup.Backup, man manifest, pgdata string, tsDirs map[uint32]string, log *slog.Logger) error {
	x.man, x.seen, x.dirs, x.links = man, map[string]bool{}, map[string]bool{}, map[string]bool{}
	var skipped []string
	var base *basebackup.Archive
	for i := range b.Archives {
		a := &b.Archives[i]
		if a.TablespaceOID == 0 {
			base = a
			continue
		}
		dir, ok := tsDirs[a.TablespaceOID]
		if !ok {
			log.Info("skipping a tablespace the newer backups no longer have", "backup", b.ID, "oid", a.TablespaceOID)
			skipped = append(skipped, "pg_tblspc/"+strconv.FormatUint(uint64(a.TablespaceOID), 10)+"/")
			continue
		}
		log.Info("extracting tablespace", "backup", b.ID, "oid", a.TablespaceOID, "dir", dir, "size", a.Size)
		x.prefix = "pg_tblspc/" + strconv.FormatUint(uint64(a.TablespaceOID), 10) + "/"
		if err := x.archive(ctx, r, b, *a, dir, nil); err != nil {
			return err
		}
	}
	if base == nil {
		return fmt.Errorf("backup %s has no data directory archive (base.tar)", b.ID)
	}
	log.Info("extracting data directory", "backup", b.ID, "dir", pgdata, "size", base.Size)
	x.prefix = ""
	if err := x.archive(ctx, r, b, *base, pgdata, tsDirs); err != nil {
		return err
	}
	// Every file the manifest lists was in the archives.
	var missing []string
	for p := range man {
		if !x.seen[p] && !slices.ContainsFunc(skipped, func(pre string) bool { return strings.HasPrefix(p, pre) }) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("backup %s: %w: %d files its manifest lists are not in its archives, e.g. %s", b.ID, repo.ErrCorrupt, len(missing), missing[0])
	}
	return nil
}

// loadManifest reads backup b's backup_manifest (checksum-verified).
func loadManifest(ctx context.Context, r *repo.Repo, b basebackup.Backup) (manifest, error) {
	rd, err := r.Get(ctx, basebackup.ManifestName(b.ID))
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", b.ID, err)
	}
	defer rd.Close()
	m, err := parseManifest(rd)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", b.ID, err)
	}
	// Read to the end so that the object's checksum is checked.
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return nil, fmt.Errorf("backup %s: %w", b.ID, err)
	}
	return m, nil
}

// Stale visibility maps. PostgreSQL (17 and 18 as released when this was
// written) clears visibility map bits as a side effect of heap inserts,
// updates and deletes without naming the map's block in the WAL record, so
// the WAL summarizer never sees the change and an incremental backup sends
// the map page only when something else (VACUUM setting bits) touched it:
// a rebuilt map can claim pages all-visible that are not, which makes
// index-only scans skip rows' visibility checks and VACUUM skip the pages
// for good, and amcheck's verify_heapam does not notice (pgsql-hackers,
// "Why clearing the VM doesn't require registering vm buffer in wal
// record", March 2026; TestRestoreIncrementalChain showed it on 17.10 and
// 18.4). Such a clear always comes with a change of the heap page, which
// is WAL-logged and summarized. So a map is trusted when its relation's
// main fork did not change (no block written, same length, in every
// segment) in any member after the last one that sent the map whole (the
// full backup sends every file whole); otherwise the map is removed. A
// missing map is always correct (no page is known all-visible; the next
// VACUUM rebuilds it, WAL replay creates it as needed). The cost: the
// first VACUUM after the restore reads the changed tables in full.

// finish makes the restored file set the newest manifest's: every file it
// lists exists with the length the chain gave it, and files it does not
// list (left by older members of a chain) are removed, as are directories
// the newest backup no longer has.
func (x *extractor) finish(newest manifest, pgdata string, tsDirs map[uint32]string, chain bool, log *slog.Logger) error {
	want := map[string]bool{}
	for p := range newest {
		name, _ := isIncremental(p)
		want[name] = true
	}
	// A visibility map is stale when its relation's main fork changed in a
	// member after the last one that sent the map whole.
	staleVM := func(name string) bool {
		m := relFile.FindStringSubmatch(name)
		if !chain || m == nil || m[3] != "_vm" {
			return false
		}
		changed, ok := x.heapChanged[m[1]+m[2]]
		return ok && changed > x.vmWhole[m[1]+m[2]]
	}
	roots := map[string]string{pgdata: ""}
	for oid, dir := range tsDirs {
		roots[dir] = "pg_tblspc/" + strconv.FormatUint(uint64(oid), 10) + "/"
	}
	var removed, vmRemoved int
	for root, prefix := range roots {
		var dirs []string
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, path)
			if err != nil || rel == "." {
				return err
			}
			name := prefix + filepath.ToSlash(rel)
			switch {
			case d.IsDir():
				if chain && !x.dirs[name] {
					dirs = append(dirs, path)
				}
			case d.Type()&fs.ModeSymlink != 0:
				// An older member's pg_tblspc/<OID> link to a tablespace
				// dropped since, still pointing at the server's location.
				if chain && !x.links[name] {
					removed++
					return os.Remove(path)
				}
			case d.Type().IsRegular():
				if want[name] {
					delete(want, name)
					if staleVM(name) {
						vmRemoved++
						return os.Remove(path)
					}
					return nil
				}
				if !chain {
					return fmt.Errorf("%s: %w: the backup's manifest does not list it", name, repo.ErrCorrupt)
				}
				removed++
				return os.Remove(path)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Deepest first; a directory that still holds files is the
		// newest backup's (its archive only lacked the directory entry).
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
				return err
			}
		}
	}
	if len(want) > 0 {
		var missing []string
		for p := range want {
			missing = append(missing, p)
		}
		sort.Strings(missing)
		return fmt.Errorf("%w: %d files the backup's manifest lists are not in its archives, e.g. %s", repo.ErrCorrupt, len(missing), missing[0])
	}
	if chain {
		log.Info("chain reconstructed", "incremental_files", x.rebuilt, "removed_files", removed, "visibility_maps_dropped", vmRemoved)
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
	buf         []byte

	// The chain member being extracted: its manifest, the prefix of the
	// current archive's paths in it ("" or pg_tblspc/<OID>/), the
	// manifest paths, directories and symlinks seen in its archives.
	man    manifest
	prefix string
	seen   map[string]bool
	dirs   map[string]bool
	links  map[string]bool
	// apply is set for the incrementals of a chain: files replace or
	// update what the older members wrote.
	apply bool
	// rebuilt counts the INCREMENTAL. files applied.
	rebuilt int
	// index is the position in the chain of the backup being extracted;
	// heapChanged maps a relation (directory and relfilenode, as in the
	// manifest) to the last member that changed its main fork, vmWhole to
	// the last member that sent its visibility map whole (see
	// "Stale visibility maps").
	index       int
	heapChanged map[string]int
	vmWhole     map[string]int
}

// relFile matches a relation's segment files: directory, relfilenode,
// fork, segment.
var relFile = regexp.MustCompile(`^(.*/)?([0-9]+)(_vm|_fsm|_init)?(\.[0-9]+)?$`)

// relationWritten records that the file name (a manifest path without
// INCREMENTAL.) was written by the current member, whole or changed by an
// INCREMENTAL. file.
func (x *extractor) relationWritten(name string, whole bool) {
	m := relFile.FindStringSubmatch(name)
	if m == nil {
		return
	}
	key := m[1] + m[2]
	switch m[3] {
	case "":
		if x.index > 0 {
			x.heapChanged[key] = x.index
		}
	case "_vm":
		if whole {
			x.vmWhole[key] = x.index
		}
	}
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
	mname := x.prefix + filepath.ToSlash(name)
	switch hdr.Typeflag {
	case tar.TypeDir:
		x.dirs[mname] = true
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return x.chown(path)
	case tar.TypeSymlink:
		x.links[mname] = true
		if x.apply {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if err := os.Symlink(hdr.Linkname, path); err != nil {
			return err
		}
		return x.chown(path)
	case tar.TypeReg:
		x.seen[mname] = true
		check, err := x.man.check(mname)
		if err != nil {
			return err
		}
		src := io.TeeReader(tr, check)
		if target, ok := isIncremental(name); ok && x.apply {
			changed, err := x.applyFile(src, hdr.Size, filepath.Join(dir, target))
			if err != nil {
				return err
			}
			if changed {
				x.relationWritten(x.prefix+filepath.ToSlash(target), false)
			}
			return check.done()
		} else if ok {
			return fmt.Errorf("an INCREMENTAL. file in a full backup (or the first backup of a chain)")
		}
		switch {
		case tsDirs != nil && name == "tablespace_map":
			if _, err := io.Copy(io.Discard, src); err != nil {
				return err
			}
			if err := check.done(); err != nil {
				return err
			}
			return x.writeFile(path, []byte(tablespaceMap(tsDirs)), 0o600)
		case tsDirs != nil && name == "backup_label":
			label, err := io.ReadAll(io.LimitReader(src, 1<<20))
			if err != nil {
				return err
			}
			if err := check.done(); err != nil {
				return err
			}
			return x.writeFile(path, stripIncrementalLabel(label), os.FileMode(hdr.Mode)&0o700|0o600)
		}
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if x.apply {
			flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		f, err := os.OpenFile(path, flags, os.FileMode(hdr.Mode)&0o700|0o600)
		if err != nil {
			return err
		}
		fb := durable.NewFlushBehind(f)
		if _, err := io.CopyBuffer(fb, src, x.buf); err != nil {
			f.Close()
			return err
		}
		fb.Flush()
		if err := f.Close(); err != nil {
			return err
		}
		if err := check.done(); err != nil {
			return err
		}
		x.relationWritten(mname, true)
		return x.chown(path)
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
}

// applyFile applies an INCREMENTAL. file of size bytes, read from src, to
// path, the file the older members of the chain rebuilt.
func (x *extractor) applyFile(src io.Reader, size int64, path string) (changed bool, err error) {
	h, err := readIncrementalHeader(src, size)
	if err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("%w: no older backup of the chain has %s (the server sends a file incrementally only when the parent backup has it)", basebackup.ErrChainBroken, filepath.Base(path))
	}
	if err != nil {
		return false, err
	}
	changed, err = applyIncremental(f, h, src, x.buf)
	if err != nil {
		f.Close()
		return false, err
	}
	x.rebuilt++
	return changed, f.Close()
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
