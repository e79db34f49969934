package confsnap

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/synapse"
)

const (
	objectPrefix = "config/objects/"
	indexPrefix  = "config/index/"
)

// Tracked is a file of a snapshot's list.
type Tracked struct {
	// Path is the file, absolute.
	Path string `json:"path"`
	// Role is synapse.File.Role ("config", "signing_key", "secret:...").
	Role string `json:"role"`
	// Secret is true for files holding credentials or keys.
	Secret bool `json:"secret"`
}

// Record is what a snapshot saw of one file that changed.
type Record struct {
	// Time is when the snapshot saw the change (UTC).
	Time time.Time `json:"time"`
	// Path, Role and Secret describe the file (see Tracked).
	Path   string `json:"path"`
	Role   string `json:"role"`
	Secret bool   `json:"secret"`
	// SHA256 names the object holding the content (lowercase hex); "" when
	// Deleted.
	SHA256 string `json:"sha256,omitempty"`
	// Size is the content's length in bytes.
	Size int64 `json:"size"`
	// Mode is the file's permission bits in octal ("0640"); "" when Deleted.
	Mode string `json:"mode,omitempty"`
	// MTime is the file's modification time (informative only).
	MTime time.Time `json:"mtime,omitzero"`
	// UID and GID are the file's owner.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Deleted says that the file was missing.
	Deleted bool `json:"deleted"`
}

// Batch is one stored snapshot: the list of tracked files and the records
// of those that changed.
type Batch struct {
	// Seq is the batch's sequence number (from its name; not stored in it).
	Seq uint64 `json:"-"`
	// Time is the snapshot's time (UTC).
	Time time.Time `json:"time"`
	// Files is every tracked file, in BackupFiles order.
	Files []Tracked `json:"files"`
	// Records are the files that changed.
	Records []Record `json:"records"`
}

// ObjectName is the repository name of the config object with this sha256.
func ObjectName(sha256hex string) string { return objectPrefix + sha256hex }

func indexName(seq uint64) string { return fmt.Sprintf("%s%012d.json", indexPrefix, seq) }

func parseIndexName(name string) (uint64, bool) {
	base := strings.TrimPrefix(name, indexPrefix)
	num, ok := strings.CutSuffix(base, ".json")
	if !ok || len(num) != 12 || strings.Contains(base, "/") {
		return 0, false
	}
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil
}

// ReadIndex calls fn for every snapshot batch in order and returns the
// sequence number of the last one (0 when there is none). A damaged batch
// is an error (repo.IsCorrupt), never skipped.
func ReadIndex(ctx context.Context, r *repo.Repo, fn func(Batch) error) (uint64, error) {
	type named struct {
		name string
		seq  uint64
	}
	var names []named
	err := r.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		if seq, ok := parseIndexName(oi.Name); ok {
			names = append(names, named{oi.Name, seq})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list config index in %s: %w", r, err)
	}
	var last uint64
	for _, n := range names {
		b, err := readBatch(ctx, r, n.name)
		if err != nil {
			return 0, err
		}
		b.Seq = n.seq
		if err := fn(b); err != nil {
			return 0, err
		}
		last = max(last, n.seq)
	}
	return last, nil
}

func readBatch(ctx context.Context, r *repo.Repo, name string) (Batch, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return Batch{}, fmt.Errorf("read config index: %w", err)
	}
	defer rd.Close()
	data, err := io.ReadAll(rd)
	if err != nil {
		return Batch{}, fmt.Errorf("read config index %s: %w", name, err)
	}
	var b Batch
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&b); err != nil {
		return Batch{}, fmt.Errorf("config index %s: %w", name, err)
	}
	if err := validBatch(b); err != nil {
		return Batch{}, fmt.Errorf("config index %s: %w", name, err)
	}
	return b, nil
}

func validPath(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("invalid path %q (not absolute and clean)", p)
	}
	return nil
}

func validBatch(b Batch) error {
	if b.Time.IsZero() {
		return errors.New("batch without time")
	}
	for _, f := range b.Files {
		if err := validPath(f.Path); err != nil {
			return err
		}
	}
	for _, rec := range b.Records {
		if err := validPath(rec.Path); err != nil {
			return err
		}
		if rec.Deleted {
			continue
		}
		if _, err := hex.DecodeString(rec.SHA256); err != nil || len(rec.SHA256) != 64 {
			return fmt.Errorf("invalid sha256 %q for %s", rec.SHA256, rec.Path)
		}
		if _, err := parseMode(rec.Mode); err != nil {
			return fmt.Errorf("%s: %w", rec.Path, err)
		}
	}
	return nil
}

func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("invalid mode %q", s)
	}
	return uint32(m), nil
}

// storeBatch stores b as batch seq, or the next free number if seq is
// taken by another writer, and returns the number used.
func storeBatch(ctx context.Context, r *repo.Repo, seq uint64, b Batch) (uint64, error) {
	data, err := json.Marshal(b)
	if err != nil {
		return seq, err
	}
	data = append(data, '\n')
	attrs := map[string]string{"time": b.Time.Format(time.RFC3339Nano), "records": strconv.Itoa(len(b.Records))}
	for range 1000 {
		_, err := r.Put(ctx, indexName(seq), bytes.NewReader(data), attrs)
		if err == nil {
			return seq, nil
		}
		if !repo.IsConflict(err) {
			return seq, fmt.Errorf("store config snapshot: %w", err)
		}
		seq++
	}
	return seq, fmt.Errorf("store config snapshot: 1000 names taken after %s", indexName(seq))
}

// trackedList turns BackupFiles' list into a snapshot's list: paths
// cleaned, each once (the first wins), all absolute.
func trackedList(files []synapse.File) ([]Tracked, error) {
	out := make([]Tracked, 0, len(files))
	seen := map[string]bool{}
	for _, f := range files {
		p := filepath.Clean(f.Path)
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("config file path %q is not absolute", f.Path)
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, Tracked{Path: p, Role: f.Role, Secret: f.Secret})
	}
	return out, nil
}

func sameList(a, b []Tracked) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
