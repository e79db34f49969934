package basebackup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

// Object names.
const (
	prefix       = "backups/"
	metaFile     = "backup.json"
	manifestFile = "backup_manifest"
	idLayout     = "20060102T150405Z"
)

// ObjectPrefix returns the prefix of every object of backup id.
func ObjectPrefix(id string) string { return prefix + id + "/" }

// PartName returns the object name of part n of an archive.
func PartName(id, archive string, n int) string {
	return fmt.Sprintf("%s%s.%04d", ObjectPrefix(id), archive, n)
}

// ManifestName returns the object name of a backup's manifest.
func ManifestName(id string) string { return ObjectPrefix(id) + manifestFile }

// MetaName returns the object name of a backup's metadata, the object whose
// existence makes the backup complete.
func MetaName(id string) string { return ObjectPrefix(id) + metaFile }

// NewID returns a backup id for time t: UTC, sortable by time, with a random
// suffix so that two backups in the same second differ.
func NewID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format(idLayout) + "-" + hex.EncodeToString(b[:])
}

// MarshalJSON writes the backup's metadata with its LSNs as PostgreSQL's
// X/X (pglogrepl.LSN has no text marshalling): the outer fields shadow the
// embedded ones of the same name, every other field is written as is.
func (b Backup) MarshalJSON() ([]byte, error) {
	type plain Backup
	return json.Marshal(struct {
		plain
		StartLSN string `json:"start_lsn"`
		EndLSN   string `json:"end_lsn"`
	}{plain(b), b.StartLSN.String(), b.EndLSN.String()})
}

// UnmarshalJSON reads what MarshalJSON writes (and what every earlier
// version wrote).
func (b *Backup) UnmarshalJSON(data []byte) error {
	type plain Backup
	v := struct {
		*plain
		StartLSN string `json:"start_lsn"`
		EndLSN   string `json:"end_lsn"`
	}{plain: (*plain)(b)}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	var err error
	if b.StartLSN, err = pglogrepl.ParseLSN(v.StartLSN); err != nil {
		return fmt.Errorf("start_lsn: %w", err)
	}
	if b.EndLSN, err = pglogrepl.ParseLSN(v.EndLSN); err != nil {
		return fmt.Errorf("end_lsn: %w", err)
	}
	return nil
}

// Backup is a base backup's metadata, stored as backups/<ID>/backup.json.
type Backup struct {
	ID    string `json:"id"`
	Label string `json:"label"`
	// StartLSN is where recovery starts (the checkpoint's redo point);
	// EndLSN is the minimum recovery point: WAL from StartLSN to EndLSN is
	// needed to make the restored cluster consistent.
	StartLSN pglogrepl.LSN `json:"start_lsn"`
	EndLSN   pglogrepl.LSN `json:"end_lsn"`
	// Timeline is the timeline at the start, EndTimeline at the end.
	// StartTime is when the backup started, EndTime when the server had
	// sent everything (before the wait for the WAL), both client clock.
	Timeline    uint32    `json:"timeline"`
	EndTimeline uint32    `json:"end_timeline"`
	StartTime   time.Time `json:"start_time"`
	EndTime     time.Time `json:"end_time"`
	// PGVersion is server_version_num, e.g. 150018.
	PGVersion   int    `json:"pg_version_num"`
	SystemID    string `json:"system_id"`
	SegmentSize uint64 `json:"wal_segment_size"`
	// ServerCompression is the server-side compression the archives were
	// taken with ("" for none). Archive objects then hold the compressed
	// stream as is.
	ServerCompression string       `json:"server_compression,omitempty"`
	Archives          []Archive    `json:"archives"`
	Manifest          Object       `json:"manifest"`
	Tablespaces       []Tablespace `json:"tablespaces"`
	// Facts are what the caller recorded with the backup (Synapse database
	// names, server name ...), for a restore on a new machine.
	Facts map[string]string `json:"facts,omitempty"`
	// Kind is KindFull or KindIncremental; empty (backups taken before
	// incremental backups existed) means a full backup.
	Kind string `json:"kind,omitempty"`
	// Parent is the ID of the backup an incremental backup was taken on
	// top of (its direct parent); empty for a full backup.
	Parent string `json:"parent,omitempty"`
	// Chain lists the IDs of the backups an incremental backup depends on,
	// oldest first: the full backup first, Parent last. Empty for a full
	// backup.
	Chain []string `json:"chain,omitempty"`
	// IncrementalRefused says why an incremental backup was asked for but
	// this full backup was taken instead (empty when none was asked for).
	IncrementalRefused string `json:"incremental_refused,omitempty"`
}

// Backup kinds (Backup.Kind).
const (
	KindFull        = "full"
	KindIncremental = "incremental"
)

// Incremental reports whether b is an incremental backup: its archives hold
// INCREMENTAL.<relfile> files that need the older backups of its Chain.
func (b Backup) Incremental() bool { return b.Kind == KindIncremental }

// KindName returns b's kind for people: "full" or "incremental".
func (b Backup) KindName() string {
	if b.Incremental() {
		return KindIncremental
	}
	return KindFull
}

// Object describes a stored stream: plaintext size and checksum (sha256,
// or xxh3 for a version 3 object), stored size.
type Object = repo.PartInfo

// Archive is one tar stream of the backup (the data directory or one
// tablespace), stored in len(Parts) objects named PartName(id, Name, i).
// Size is the whole stream's length as the server sent it.
type Archive struct {
	Name string `json:"name"`
	// TablespaceOID is 0 for the data directory.
	TablespaceOID uint32 `json:"tablespace_oid,omitempty"`
	// Path is the tablespace's location on the server ("" for the data
	// directory).
	Path       string `json:"path,omitempty"`
	Size       int64  `json:"size"`
	StoredSize int64  `json:"stored_size"`
	Parts      []Part `json:"parts"`
}

// Part is one stored object of an archive: plaintext size and checksum (as
// its repository trailer records them), stored size.
type Part = Object

// Tablespace is a row of BASE_BACKUP's tablespace result set.
type Tablespace struct {
	// OID is 0 for the data directory.
	OID      uint32 `json:"oid"`
	Location string `json:"location"`
	// Size is the server's estimate in bytes (0 when not asked for).
	Size int64 `json:"size"`
}

// Size returns the sum of the archives' plaintext sizes.
func (b Backup) Size() int64 {
	var n int64
	for _, a := range b.Archives {
		n += a.Size
	}
	return n + b.Manifest.Size
}

// StoredSize returns the sum of the archives' stored sizes.
func (b Backup) StoredSize() int64 {
	var n int64
	for _, a := range b.Archives {
		n += a.StoredSize
	}
	return n + b.Manifest.StoredSize
}

// Load reads backup id's metadata. A backup without metadata (interrupted,
// or still running) is an error for which repo.IsNotExist is true.
func Load(ctx context.Context, r *repo.Repo, id string) (Backup, error) {
	rd, err := r.Get(ctx, MetaName(id))
	if err != nil {
		return Backup{}, fmt.Errorf("backup %s: %w", id, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, 64<<20))
	if err != nil {
		return Backup{}, fmt.Errorf("backup %s: read %s: %w", id, MetaName(id), err)
	}
	var b Backup
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&b); err != nil {
		return Backup{}, fmt.Errorf("backup %s: %s is not valid backup metadata: %w", id, MetaName(id), err)
	}
	if b.ID != id {
		return Backup{}, fmt.Errorf("backup %s: %s names backup %q", id, MetaName(id), b.ID)
	}
	return b, nil
}

// Incomplete is a backup that has objects but no metadata: interrupted, or
// still running.
type Incomplete struct {
	ID string
	// Objects and StoredSize count what it left in the repository.
	Objects    int
	StoredSize int64
	// LastModified is the newest object's modification time.
	LastModified time.Time
}

type scan struct {
	complete   map[string]bool
	incomplete map[string]*Incomplete
}

func scanBackups(ctx context.Context, r *repo.Repo) (scan, error) {
	s := scan{complete: map[string]bool{}, incomplete: map[string]*Incomplete{}}
	err := r.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		rest := strings.TrimPrefix(oi.Name, prefix)
		id, file, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		inc := s.incomplete[id]
		if inc == nil {
			inc = &Incomplete{ID: id}
			s.incomplete[id] = inc
		}
		inc.Objects++
		inc.StoredSize += oi.Size
		if oi.ModTime.After(inc.LastModified) {
			inc.LastModified = oi.ModTime
		}
		if file == metaFile {
			s.complete[id] = true
		}
		return nil
	})
	return s, err
}

// List returns the complete backups (those with metadata), oldest first.
func List(ctx context.Context, r *repo.Repo) ([]Backup, error) {
	s, err := scanBackups(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	var out []Backup
	for id := range s.complete {
		b, err := Load(ctx, r, id)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	// Oldest first by start time: IDs name the second only, so two backups
	// of one second would otherwise be ordered by their random suffix.
	sort.Slice(out, func(i, j int) bool {
		if !out[i].StartTime.Equal(out[j].StartTime) {
			return out[i].StartTime.Before(out[j].StartTime)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// ListIncomplete returns the backups that left objects but no metadata,
// oldest first. They are never used by a restore.
func ListIncomplete(ctx context.Context, r *repo.Repo) ([]Incomplete, error) {
	s, err := scanBackups(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	var out []Incomplete
	for id, inc := range s.incomplete {
		if !s.complete[id] {
			out = append(out, *inc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// storeMeta writes backup.json, the object that makes the backup complete.
func storeMeta(ctx context.Context, r *repo.Repo, b *Backup) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	if _, err := r.Put(ctx, MetaName(b.ID), bytes.NewReader(data), map[string]string{"kind": "basebackup"}); err != nil {
		return fmt.Errorf("store %s: %w", MetaName(b.ID), err)
	}
	return nil
}

// errNoWAL marks a backup whose WAL did not reach the repository in time.
var errNoWAL = errors.New("the WAL the backup needs was not archived")

// IsWALTimeout reports whether err says that the WAL a backup needs did not
// reach the repository within Options.WALTimeout.
func IsWALTimeout(err error) bool { return errors.Is(err, errNoWAL) }

type storageInfo = storage.ObjectInfo
