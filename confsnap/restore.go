package confsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/durable"
	"github.com/synbak/synbak/internal/repo"
)

// ErrNoSnapshot says that the repository holds no config snapshot at or
// before the time asked for.
var ErrNoSnapshot = errors.New("no config snapshot")

// IsNoSnapshot reports whether err says that there was no config snapshot
// at the time asked for.
func IsNoSnapshot(err error) bool { return errors.Is(err, ErrNoSnapshot) }

// ManifestName is the manifest's file name in a restore directory.
const ManifestName = "synbak-manifest.json"

// stageDir is the staging directory's subdirectory that becomes the
// restore directory's tree.
const stageDir = "tree"

// State is the config snapshot in effect at a time.
type State struct {
	// Seq and Time identify the newest batch at or before the time.
	Seq  uint64
	Time time.Time
	// Files are the tracked files in list order, each as its last record
	// (Time: when its content was first seen or it was found missing);
	// Role and Secret are the list's.
	Files []Record
}

// StateAt returns the config snapshot in effect at at (the newest batch
// dated at or before it, in index order; zero at means the newest). With
// no such batch the error satisfies IsNoSnapshot.
func StateAt(ctx context.Context, r *repo.Repo, at time.Time) (State, error) {
	var (
		st    State
		found bool
		first time.Time
		last  = map[string]Record{}
	)
	_, err := ReadIndex(ctx, r, func(b Batch) error {
		if first.IsZero() || b.Time.Before(first) {
			first = b.Time
		}
		if !at.IsZero() && b.Time.After(at) {
			return nil
		}
		found = true
		st.Seq, st.Time = b.Seq, b.Time
		st.Files = nil
		for _, f := range b.Files {
			st.Files = append(st.Files, Record{Path: f.Path, Role: f.Role, Secret: f.Secret})
		}
		for _, rec := range b.Records {
			last[rec.Path] = rec
		}
		return nil
	})
	if err != nil {
		return State{}, err
	}
	if !found {
		if first.IsZero() {
			return State{}, fmt.Errorf("%w: the repository %s holds none", ErrNoSnapshot, r)
		}
		return State{}, fmt.Errorf("%w at %s: the first one in %s is from %s",
			ErrNoSnapshot, at.UTC().Format(time.RFC3339), r, first.UTC().Format(time.RFC3339))
	}
	for i, f := range st.Files {
		rec, ok := last[f.Path]
		if !ok {
			rec = Record{Time: st.Time, Path: f.Path, Deleted: true}
		}
		rec.Role, rec.Secret = f.Role, f.Secret
		st.Files[i] = rec
	}
	return st, nil
}

// Manifest describes a restore directory (dir/synbak-manifest.json).
type Manifest struct {
	// Format is the manifest's format version (1).
	Format int `json:"format"`
	// At is the time asked for (zero: the newest snapshot).
	At time.Time `json:"at,omitzero"`
	// SnapshotTime is the time of the snapshot batch restored (the newest
	// at or before At).
	SnapshotTime time.Time `json:"snapshot_time"`
	// Root is the directory the restore directory stands for: "/" (every
	// file is written to dir/<its original absolute path>).
	Root string `json:"root"`
	// Files are the restored files, in list order (config files in
	// Synapse's read order).
	Files []ManifestFile `json:"files"`
	// Missing are the files the configuration named that did not exist at
	// the time (not written).
	Missing []ManifestFile `json:"missing,omitempty"`
	// SigningKeyReplaced is set by NewSigningKey.
	SigningKeyReplaced *KeyChange `json:"signing_key_replaced,omitempty"`
}

// ManifestFile is one file of a Manifest.
type ManifestFile struct {
	// File is where it was written, relative to the restore directory
	// (slash-separated, "etc/matrix-synapse/homeserver.yaml"); "" for
	// missing files.
	File string `json:"file,omitempty"`
	// Path is the original absolute path.
	Path   string `json:"path"`
	Role   string `json:"role"`
	Secret bool   `json:"secret"`
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size"`
	// Mode, UID and GID are the original file's. The restored file gets
	// them when the restore runs as root; otherwise it belongs to whoever
	// restored it, with Mode (without group and other bits when Secret).
	Mode string `json:"mode,omitempty"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// SnapshotTime is when this content was first seen (for a missing
	// file: when it was found missing).
	SnapshotTime time.Time `json:"snapshot_time"`
}

// Restore writes the config files as of at (see StateAt; zero at means the
// newest) into dir, which must be missing or empty, as dir/<original
// absolute path>, with dir/synbak-manifest.json describing them, and
// returns the manifest. Every file's checksum is verified. Nothing is left
// in dir when it fails.
func Restore(ctx context.Context, r *repo.Repo, at time.Time, dir string) (Manifest, error) {
	exists, err := checkEmptyDir(dir)
	if err != nil {
		return Manifest{}, err
	}
	st, err := StateAt(ctx, r, at)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{Format: 1, At: at.UTC(), SnapshotTime: st.Time, Files: []ManifestFile{}}
	if at.IsZero() {
		m.At = time.Time{}
	}
	var present []Record
	for _, f := range st.Files {
		mf := ManifestFile{Path: f.Path, Role: f.Role, Secret: f.Secret, SnapshotTime: f.Time}
		if f.Deleted {
			m.Missing = append(m.Missing, mf)
			continue
		}
		present = append(present, f)
	}
	m.Root = "/"

	if !exists {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return Manifest{}, fmt.Errorf("create restore directory: %w", err)
		}
	}
	staging, err := os.MkdirTemp(dir, ".synbak-restore-")
	if err != nil {
		return Manifest{}, fmt.Errorf("restore config: %w", err)
	}
	done := false
	var moved []string // top-level entries already moved into dir
	defer func() {
		if done {
			return
		}
		os.RemoveAll(staging)
		for _, p := range moved {
			os.RemoveAll(p)
		}
		if !exists {
			os.Remove(dir)
		}
	}()

	for _, f := range present {
		rel := strings.TrimPrefix(filepath.Clean(f.Path), "/")
		if !filepath.IsAbs(f.Path) || !filepath.IsLocal(rel) || rel == ManifestName {
			return Manifest{}, fmt.Errorf("config file %q: not an absolute path", f.Path)
		}
		if err := restoreFile(ctx, r, filepath.Join(staging, stageDir, rel), f); err != nil {
			return Manifest{}, fmt.Errorf("restore config file %s: %w", f.Path, err)
		}
		m.Files = append(m.Files, ManifestFile{
			File: filepath.ToSlash(rel), Path: f.Path, Role: f.Role, Secret: f.Secret,
			SHA256: f.SHA256, Size: f.Size, Mode: f.Mode, UID: f.UID, GID: f.GID, SnapshotTime: f.Time,
		})
	}
	if err := writeManifest(staging, m); err != nil {
		return Manifest{}, err
	}
	if len(present) > 0 {
		tops, err := os.ReadDir(filepath.Join(staging, stageDir))
		if err != nil {
			return Manifest{}, fmt.Errorf("restore config: %w", err)
		}
		for _, e := range tops {
			to := filepath.Join(dir, e.Name())
			if err := os.Rename(filepath.Join(staging, stageDir, e.Name()), to); err != nil {
				return Manifest{}, fmt.Errorf("restore config: %w", err)
			}
			moved = append(moved, to)
		}
		if err := os.Remove(filepath.Join(staging, stageDir)); err != nil {
			return Manifest{}, fmt.Errorf("restore config: %w", err)
		}
	}
	if err := os.Rename(filepath.Join(staging, ManifestName), filepath.Join(dir, ManifestName)); err != nil {
		return Manifest{}, fmt.Errorf("restore config: %w", err)
	}
	if err := os.Remove(staging); err != nil {
		return Manifest{}, fmt.Errorf("restore config: %w", err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return Manifest{}, err
	}
	done = true
	return m, nil
}

// checkEmptyDir reports whether dir exists, and fails unless it is a
// missing or empty directory.
func checkEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("restore directory: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("restore directory: %w", err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("restore directory %s is not a directory: give a missing or empty directory", dir)
	}
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return false, fmt.Errorf("restore directory %s: %w (give a missing or empty directory)", dir, err)
	}
	if len(names) > 0 {
		return false, fmt.Errorf("restore directory %s is not empty: a config restore never writes over existing files; give a missing or empty directory", dir)
	}
	return true, nil
}

func restoreFile(ctx context.Context, r *repo.Repo, dst string, f Record) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	rd, err := r.Get(ctx, ObjectName(f.SHA256))
	if err != nil {
		return err
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, MaxFileSize+1))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != f.SHA256 || int64(len(data)) != f.Size {
		return fmt.Errorf("object %s holds %d bytes with sha256 %s, the index says %d bytes: the repository is damaged",
			ObjectName(f.SHA256), len(data), got, f.Size)
	}
	// Staged, never over an existing file; the staging directory is
	// renamed into place as a whole.
	if err := durable.Write(dst, durable.Options{NoOverwrite: true, SkipDirSync: true}, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}); err != nil {
		return err
	}
	owned := false
	if os.Geteuid() == 0 {
		if err := os.Lchown(dst, f.UID, f.GID); err != nil {
			return fmt.Errorf("give %s its recorded owner %d:%d: %w", dst, f.UID, f.GID, err)
		}
		owned = true
	}
	if err := os.Chmod(dst, restoredMode(f, owned)); err != nil {
		return err
	}
	if !f.MTime.IsZero() {
		if err := os.Chtimes(dst, f.MTime, f.MTime); err != nil {
			return err
		}
	}
	return nil
}

// restoredMode is the mode a restored file gets: its recorded mode, except
// that a secret file whose recorded owner could not be given (not run as
// root) is readable by its owner alone, since the owner and group are the
// restorer's. Without a recorded mode: 0600 for secrets, else 0644.
func restoredMode(f Record, owned bool) os.FileMode {
	var m uint64
	if _, err := fmt.Sscanf(f.Mode, "%o", &m); err != nil || f.Mode == "" {
		if f.Secret {
			return 0o600
		}
		return 0o644
	}
	mode := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	if f.Secret && !owned {
		mode &^= 0o077 | os.ModeSetuid | os.ModeSetgid
	}
	return mode
}

// replaceFile writes data to path durably (a temporary file in the same
// directory, renamed over it), with exactly mode.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	return durable.WriteFile(path, data, mode)
}

func writeManifest(dir string, m Manifest) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return err
	}
	if err := replaceFile(filepath.Join(dir, ManifestName), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", ManifestName, err)
	}
	return nil
}

// ReadManifest reads dir/synbak-manifest.json of a restore directory.
func ReadManifest(dir string) (Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return Manifest{}, fmt.Errorf("read config restore manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("config restore manifest %s: %w", filepath.Join(dir, ManifestName), err)
	}
	if m.Format != 1 {
		return Manifest{}, fmt.Errorf("config restore manifest %s: unknown format %d", filepath.Join(dir, ManifestName), m.Format)
	}
	for _, f := range m.Files {
		if !filepath.IsLocal(filepath.FromSlash(f.File)) {
			return Manifest{}, fmt.Errorf("config restore manifest: file %q is not inside the directory", f.File)
		}
	}
	return m, nil
}
