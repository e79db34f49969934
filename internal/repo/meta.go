package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/storage"
)

// Repository metadata
//
// The metadata is a JSON object (Meta) framed like every object, with codec
// none, under increasing names meta/repo.<seq, 10 digits>.json. A change
// writes the next sequence number; a writer that loses the race for a number
// (conflict) re-reads and retries. The superseded version is deleted only
// after its successor is stored. Readers take the newest version that parses
// and whose checksum holds.

// FormatVersion is the repository format this package writes and reads.
const FormatVersion = 1

const (
	metaPrefix  = "meta/repo."
	metaSuffix  = ".json"
	maxMetaSize = 1 << 20
	maxRetries  = 20
)

// Meta is the repository's metadata.
type Meta struct {
	// FormatVersion is the repository format version.
	FormatVersion int `json:"format_version"`
	// Created is when the repository was initialized (UTC).
	Created time.Time `json:"created"`
	// SystemID is the PostgreSQL system identifier (decimal) of the cluster
	// the repository belongs to, "" until it is known.
	SystemID string `json:"system_id"`
	// Seq is the version number of this metadata.
	Seq int `json:"seq"`
	// Encrypted says that every object but the metadata is encrypted
	// (crypt.go); fixed when the repository is created.
	Encrypted bool `json:"encrypted,omitempty"`
}

func metaName(seq int) string { return fmt.Sprintf("%s%010d%s", metaPrefix, seq, metaSuffix) }

// Init opens the repository on b, creating its metadata if there is none.
// created reports whether this call created it. Init is idempotent. It
// never creates a repository over existing objects: a backend that holds
// objects but no metadata (deleted or lost) is an error for which
// IsMetadataMissing is true, and nothing is written.
func Init(ctx context.Context, b storage.Backend, opts Options) (r *Repo, created bool, err error) {
	r, err = newRepo(b, opts)
	if err != nil {
		return nil, false, err
	}
	for range maxRetries {
		m, err := r.loadMeta(ctx)
		if err == nil {
			if err := r.checkEncryption(m); err != nil {
				return nil, false, err
			}
			r.setMeta(m)
			return r, false, nil
		}
		if !IsNotInitialized(err) {
			return nil, false, err
		}
		m = Meta{FormatVersion: FormatVersion, Created: time.Now().UTC(), Seq: 1, Encrypted: len(r.recipients) > 0}
		err = r.putMeta(ctx, m)
		if err == nil {
			r.setMeta(m)
			r.log.Info("repository initialized", "path", b.String())
			return r, true, nil
		}
		if !IsConflict(err) {
			return nil, false, fmt.Errorf("initialize repository %s: %w", b, err)
		}
		// Someone else initialized it concurrently: read theirs.
	}
	return nil, false, fmt.Errorf("initialize repository %s: gave up after %d concurrent updates", b, maxRetries)
}

// Open opens an initialized repository on b. Without metadata the error
// satisfies IsNotInitialized.
func Open(ctx context.Context, b storage.Backend, opts Options) (*Repo, error) {
	r, err := newRepo(b, opts)
	if err != nil {
		return nil, err
	}
	m, err := r.loadMeta(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.checkEncryption(m); err != nil {
		return nil, err
	}
	r.setMeta(m)
	return r, nil
}

// Meta returns the metadata as last read or written.
func (r *Repo) Meta() Meta {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.meta
}

func (r *Repo) setMeta(m Meta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.Seq >= r.meta.Seq {
		r.meta = m
	}
}

// BindSystemID records the PostgreSQL system identifier id (decimal) in the
// metadata if none is recorded. If the same id is recorded it returns nil;
// if another one is, an error for which IsWrongCluster is true.
func (r *Repo) BindSystemID(ctx context.Context, id string) error {
	if id == "" || strings.TrimLeft(id, "0123456789") != "" {
		return fmt.Errorf("bind repository to system identifier %q: not a decimal number", id)
	}
	for range maxRetries {
		m, err := r.loadMeta(ctx)
		if err != nil {
			return err
		}
		r.setMeta(m)
		switch m.SystemID {
		case id:
			return nil
		case "":
		default:
			return fmt.Errorf("repository %s holds backups of the PostgreSQL cluster with system identifier %s, but this server's system identifier is %s: %w; use a new repository path for this cluster",
				r.b, m.SystemID, id, ErrWrongCluster)
		}
		next := m
		next.SystemID = id
		next.Seq = m.Seq + 1
		err = r.putMeta(ctx, next)
		if IsConflict(err) {
			continue // another writer took this number: re-read
		}
		if err != nil {
			return fmt.Errorf("record system identifier in repository %s: %w", r.b, err)
		}
		r.setMeta(next)
		r.log.Info("repository bound to PostgreSQL cluster", "system_id", id)
		if err := r.b.Delete(ctx, metaName(m.Seq)); err != nil {
			r.log.Warn("could not delete superseded repository metadata", "path", metaName(m.Seq), "err", err)
		}
		return nil
	}
	return fmt.Errorf("record system identifier in repository %s: gave up after %d concurrent updates", r.b, maxRetries)
}

func (r *Repo) putMeta(ctx context.Context, m Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	_, err = r.Put(ctx, metaName(m.Seq), bytes.NewReader(data), nil, Uncompressed())
	return err
}

// errMetaVanished says that every listed metadata version was deleted while
// being read (a concurrent update): list again.
var errMetaVanished = errors.New("repository metadata changed while reading")

// loadMeta returns the newest valid metadata version.
func (r *Repo) loadMeta(ctx context.Context) (Meta, error) {
	for i := range maxRetries {
		m, err := r.loadMetaOnce(ctx)
		// A directory listing is not atomic: one that runs while a new
		// version is linked and the old one deleted can see neither. An
		// empty listing is believed only when it repeats.
		if (IsNotInitialized(err) || IsMetadataMissing(err)) && i < 2 {
			continue
		}
		if !errors.Is(err, errMetaVanished) {
			return m, err
		}
	}
	return Meta{}, fmt.Errorf("read repository metadata in %s: %w; try again", r.b, errMetaVanished)
}

// listMeta returns the names of the metadata versions, oldest first.
func (r *Repo) listMeta(ctx context.Context) ([]string, error) {
	var names []string
	err := r.b.List(ctx, metaPrefix, func(oi storage.ObjectInfo) error {
		if seq, ok := parseMetaName(oi.Name); ok && seq > 0 {
			names = append(names, oi.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read repository metadata in %s: %w", r.b, err)
	}
	return names, nil
}

func (r *Repo) loadMetaOnce(ctx context.Context) (Meta, error) {
	names, err := r.listMeta(ctx)
	if err != nil {
		return Meta{}, err
	}
	if len(names) == 0 {
		n, err := r.countObjects(ctx)
		if err != nil {
			return Meta{}, fmt.Errorf("read repository metadata in %s: %w", r.b, err)
		}
		if n > 0 {
			// The objects may be the metadata a concurrent Init stored
			// after the listing above (TestConcurrentInit): look again
			// before calling the metadata lost.
			again, err := r.listMeta(ctx)
			if err != nil {
				return Meta{}, err
			}
			if len(again) > 0 {
				return Meta{}, errMetaVanished
			}
			what := fmt.Sprintf("%d objects", n)
			switch {
			case n == 1:
				what = "1 object"
			case n >= maxCounted:
				what = fmt.Sprintf("at least %d objects", n)
			}
			return Meta{}, fmt.Errorf("repository %s holds %s but no valid metadata (%s*%s): %w. It is an existing repository whose metadata was deleted or lost, not a new one, and synbak never creates a repository over existing objects (it would lose the cluster binding and the encryption setting). Restore %s from a copy of the repository, or point repository.path (or repository.url) at an empty directory or prefix",
				r.b, what, metaPrefix, metaSuffix, ErrMetadataMissing, strings.TrimSuffix(metaPrefix, "repo."))
		}
		return Meta{}, fmt.Errorf("%s: %w: run synbak init (or start the agent) to create it", r.b, ErrNotInitialized)
	}
	var firstErr error
	// Names sort by sequence (fixed width): newest last.
	for i := len(names) - 1; i >= 0; i-- {
		m, err := r.readMeta(ctx, names[i])
		if err == nil {
			if m.FormatVersion > FormatVersion {
				return Meta{}, fmt.Errorf("repository %s has format version %d, newer than this synbak supports (%d): upgrade synbak",
					r.b, m.FormatVersion, FormatVersion)
			}
			return m, nil
		}
		if IsNotExist(err) {
			continue // superseded and deleted meanwhile
		}
		if firstErr == nil {
			firstErr = err
		}
		r.log.Warn("skipping unreadable repository metadata", "path", names[i], "err", err)
	}
	if firstErr == nil {
		return Meta{}, errMetaVanished
	}
	return Meta{}, fmt.Errorf("no valid repository metadata in %s: %w", r.b, firstErr)
}

// maxCounted bounds how many objects countObjects counts.
const maxCounted = 100000

// errEnough stops countObjects' listing.
var errEnough = errors.New("counted enough")

// countObjects counts the stored objects (up to maxCounted).
func (r *Repo) countObjects(ctx context.Context) (int, error) {
	n := 0
	err := r.b.List(ctx, "", func(storage.ObjectInfo) error {
		n++
		if n >= maxCounted {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return n, err
	}
	return n, nil
}

func parseMetaName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, metaPrefix)
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, metaSuffix)
	if !ok || len(s) != 10 {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

func (r *Repo) readMeta(ctx context.Context, name string) (Meta, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return Meta{}, err
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, maxMetaSize+1))
	if err != nil {
		return Meta{}, err
	}
	if len(data) > maxMetaSize {
		return Meta{}, r.corrupt(name, fmt.Errorf("metadata larger than %d bytes", maxMetaSize))
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, r.corrupt(name, fmt.Errorf("metadata: %v", err))
	}
	seq, _ := parseMetaName(name)
	if m.Seq != seq || m.FormatVersion < 1 {
		return Meta{}, r.corrupt(name, fmt.Errorf("metadata says seq %d, format version %d", m.Seq, m.FormatVersion))
	}
	return m, nil
}
