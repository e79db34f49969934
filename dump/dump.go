// Package dump takes logical dumps of the Synapse database(s) with the real
// pg_dump — the method Synapse's backup documentation describes,
// `pg_dump -Fc --exclude-table-data e2e_one_time_keys_json` — and streams
// them into the repository; and restores them with the real pg_restore into
// a new database created as Synapse's docs say (UTF8, locale C, template0).
//
// A dump is the one backup that survives a PostgreSQL major-version upgrade
// or a move to another server: physical backups (basebackup/, wal/) restore
// only into the same major version.
//
// Repository layout:
//
//	dumps/<ID>/<database>.dump.<part 4 digits>   pg_dump's custom-format output (pg_dump -Z 0;
//	                                             the repository compresses and encrypts it)
//	dumps/<ID>/dump.json                         metadata, written last: a dump without it is
//	                                             incomplete (interrupted or running)
//
// ID is the start time (UTC, 20060102T150405Z) and a random suffix, like a
// base backup's.
package dump

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

// Prefix is where dumps live in the repository.
const Prefix = "dumps/"

const (
	metaFile = "dump.json"
	idLayout = "20060102T150405Z"
)

// OneTimeKeysTable is the table whose data a dump excludes and a restore
// empties: restored one-time keys would be handed out a second time.
const OneTimeKeysTable = "e2e_one_time_keys_json"

// ObjectPrefix returns the prefix of every object of dump id.
func ObjectPrefix(id string) string { return Prefix + id + "/" }

// MetaName returns the object whose existence makes dump id complete.
func MetaName(id string) string { return ObjectPrefix(id) + metaFile }

// PartName returns the object name of part n of database db's dump.
func PartName(id, db string, n int) string {
	return fmt.Sprintf("%s%s.dump.%04d", ObjectPrefix(id), db, n)
}

// NewID returns a dump id for time t.
func NewID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format(idLayout) + "-" + hex.EncodeToString(b[:])
}

// FactMedia is the fact that says how current the repository's media were
// when the dump started: "synced <RFC 3339 time>" (`synbak dump` copied the
// media store first), "watched" (the agent's media watcher keeps them
// current), or "not synced (<why>)"; a restore with --media-dir warns about
// the last.
const FactMedia = "media"

// Dump is a dump's metadata (dumps/<ID>/dump.json).
type Dump struct {
	ID string `json:"id"`
	// StartTime is when the first pg_dump started (its snapshot is taken
	// then); media and config are restored as of this time. EndTime is when
	// the last one finished.
	StartTime time.Time `json:"start_time"`
	EndTime   time.Time `json:"end_time"`
	// Databases are the dumped databases, the one holding Synapse's main
	// data store first.
	Databases []Database `json:"databases"`
	// Facts are what the caller recorded (server name ...; FactMedia).
	Facts map[string]string `json:"facts,omitempty"`
}

// Database is one database's dump.
type Database struct {
	// Name is the database's name on the source server.
	Name string `json:"name"`
	// Stores are the Synapse data stores it holds ("main", "state").
	Stores []string `json:"stores"`
	// StartTime and EndTime bracket this database's pg_dump.
	StartTime time.Time `json:"start_time"`
	EndTime   time.Time `json:"end_time"`
	// ServerVersion is the server's version string; ServerVersionNum its
	// server_version_num (e.g. 150014).
	ServerVersion    string `json:"server_version"`
	ServerVersionNum int    `json:"server_version_num"`
	// SystemID is the source cluster's system identifier when the role may
	// read it ("" otherwise).
	SystemID string `json:"system_id,omitempty"`
	// Owner, Encoding, Collate and Ctype describe the source database.
	Owner    string `json:"owner"`
	Encoding string `json:"encoding"`
	Collate  string `json:"collate"`
	Ctype    string `json:"ctype"`
	// DatabaseSize is pg_database_size() when the dump started.
	DatabaseSize int64 `json:"database_size"`
	// PgDump is pg_dump's --version output; Command its arguments (the
	// connection string without any password, which went through the
	// environment).
	PgDump  string   `json:"pg_dump"`
	Command []string `json:"command"`
	// ExcludedTableData are the tables whose rows the dump leaves out.
	ExcludedTableData []string `json:"excluded_table_data"`
	// Compression says how the stored bytes are compressed.
	Compression string `json:"compression"`
	// Size is the length of pg_dump's output; StoredSize the stored bytes.
	Size       int64           `json:"size"`
	StoredSize int64           `json:"stored_size"`
	Parts      []repo.PartInfo `json:"parts"`
}

// Main returns the database holding Synapse's main data store (the first).
func (d Dump) Main() Database { return d.Databases[0] }

// Size returns the dumps' total plaintext size.
func (d Dump) Size() int64 {
	var n int64
	for _, db := range d.Databases {
		n += db.Size
	}
	return n
}

// StoredSize returns the stored bytes of the dump's parts.
func (d Dump) StoredSize() int64 {
	var n int64
	for _, db := range d.Databases {
		n += db.StoredSize
	}
	return n
}

// Load reads dump id's metadata; repo.IsNotExist holds for an incomplete
// or unknown dump.
func Load(ctx context.Context, r *repo.Repo, id string) (Dump, error) {
	rd, err := r.Get(ctx, MetaName(id))
	if err != nil {
		return Dump{}, fmt.Errorf("dump %s: %w", id, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, 16<<20))
	if err != nil {
		return Dump{}, fmt.Errorf("dump %s: read %s: %w", id, MetaName(id), err)
	}
	var d Dump
	if err := json.Unmarshal(data, &d); err != nil {
		return Dump{}, fmt.Errorf("dump %s: %s is not valid dump metadata: %w", id, MetaName(id), err)
	}
	if d.ID != id || len(d.Databases) == 0 {
		return Dump{}, fmt.Errorf("dump %s: %s names dump %q with %d databases", id, MetaName(id), d.ID, len(d.Databases))
	}
	return d, nil
}

func storeMeta(ctx context.Context, r *repo.Repo, d Dump) error {
	data, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if _, err := r.Put(ctx, MetaName(d.ID), bytes.NewReader(data), map[string]string{"kind": "dump", "dump_id": d.ID}); err != nil {
		return fmt.Errorf("store %s: %w", MetaName(d.ID), err)
	}
	return nil
}

// Incomplete is a dump with objects but no metadata.
type Incomplete struct {
	ID           string    `json:"id"`
	Objects      int       `json:"objects"`
	StoredSize   int64     `json:"stored_size"`
	LastModified time.Time `json:"last_modified"`
	// Objs are its objects, in name order.
	Objs []storage.ObjectInfo `json:"-"`
}

// Scan lists the repository's dumps: the complete ones (oldest first) and
// the incomplete ones with their objects.
func Scan(ctx context.Context, r *repo.Repo) (complete []Dump, incomplete []Incomplete, err error) {
	byID := map[string]*Incomplete{}
	done := map[string]bool{}
	var ids []string
	err = r.List(ctx, Prefix, func(oi storage.ObjectInfo) error {
		id, file, ok := strings.Cut(strings.TrimPrefix(oi.Name, Prefix), "/")
		if !ok {
			return nil
		}
		inc := byID[id]
		if inc == nil {
			inc = &Incomplete{ID: id}
			byID[id] = inc
			ids = append(ids, id)
		}
		inc.Objects++
		inc.StoredSize += oi.Size
		inc.Objs = append(inc.Objs, oi)
		if oi.ModTime.After(inc.LastModified) {
			inc.LastModified = oi.ModTime
		}
		if file == metaFile {
			done[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list dumps: %w", err)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if !done[id] {
			incomplete = append(incomplete, *byID[id])
			continue
		}
		d, err := Load(ctx, r, id)
		if err != nil {
			return nil, nil, err
		}
		complete = append(complete, d)
	}
	// Oldest first by start time: IDs name the second only, so two dumps
	// of one second would otherwise be ordered by their random suffix.
	sort.SliceStable(complete, func(i, j int) bool {
		if !complete[i].StartTime.Equal(complete[j].StartTime) {
			return complete[i].StartTime.Before(complete[j].StartTime)
		}
		return complete[i].ID < complete[j].ID
	})
	return complete, incomplete, nil
}

// List returns the complete dumps, oldest first.
func List(ctx context.Context, r *repo.Repo) ([]Dump, error) {
	c, _, err := Scan(ctx, r)
	return c, err
}

// Find returns dump id, or the newest complete dump for "latest".
func Find(ctx context.Context, r *repo.Repo, id string) (Dump, error) {
	if id != "latest" {
		d, err := Load(ctx, r, id)
		if repo.IsNotExist(err) {
			return Dump{}, fmt.Errorf("%w: there is no complete dump %q in %s: `synbak list` shows the dumps", ErrNoDump, id, r)
		}
		return d, err
	}
	all, err := List(ctx, r)
	if err != nil {
		return Dump{}, err
	}
	if len(all) == 0 {
		return Dump{}, fmt.Errorf("%w: %s holds no complete dump: take one with `synbak dump` (or set dump.interval for the agent)", ErrNoDump, r)
	}
	return all[len(all)-1], nil
}
