package mediawatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/repo"
)

const (
	objectPrefix = "media/objects/"
	indexPrefix  = "media/index/"
)

// Event kinds in the index.
const (
	Added   = "added"
	Deleted = "deleted"
)

// Event is one line of the media index.
type Event struct {
	// Path is relative to the media store, e.g. "local_content/ab/cd/efgh…".
	Path string `json:"path"`
	// SHA256 names the object holding the content (lowercase hex).
	SHA256 string `json:"sha256"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// MTime is the file's modification time: when it was complete.
	MTime time.Time `json:"mtime"`
	// FirstSeen is when synbak first noticed the path (UTC).
	FirstSeen time.Time `json:"first_seen"`
	// Event is Added or Deleted.
	Event string `json:"event"`
	// At is when the event was recorded (for Deleted: when the file was
	// noticed gone).
	At time.Time `json:"at"`
}

// Date is the time the event takes effect for restores: MTime for Added,
// At for Deleted.
func (e Event) Date() time.Time {
	if e.Event == Added {
		return e.MTime
	}
	return e.At
}

// ObjectName is the repository name of the media object with this sha256.
func ObjectName(sha256hex string) string {
	return objectPrefix + sha256hex[:2] + "/" + sha256hex
}

func indexName(seq uint64) string { return fmt.Sprintf("%s%012d.jsonl", indexPrefix, seq) }

func parseIndexName(name string) (uint64, bool) {
	base := strings.TrimPrefix(name, indexPrefix)
	num, ok := strings.CutSuffix(base, ".jsonl")
	if !ok || len(num) != 12 || strings.Contains(base, "/") {
		return 0, false
	}
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil
}

// ReadIndex calls fn for every event of the media index in index order
// (by batch sequence number: the newest snapshot merged with the batches
// it does not hold; see readIndex and Compact), and returns the highest batch sequence number (0 when
// there is none). A damaged batch or snapshot is an error (repo.IsCorrupt),
// not skipped: it may hold the only record of a file. If a concurrent
// compaction removes an object before any event was delivered, ReadIndex
// starts again; later, it returns the error.
func ReadIndex(ctx context.Context, r *repo.Repo, fn func(Event) error) (uint64, error) {
	delivered := false
	var last uint64
	err := loadIndex(ctx, r, func() error {
		if delivered {
			return errors.New("media index changed while it was read (a concurrent compaction); read it again")
		}
		return nil
	}, func(ev Event) error {
		delivered = true
		return fn(ev)
	}, func(info indexInfo) { last = info.last })
	return last, err
}

// loadIndex reads the index with readIndex, starting again (after calling
// reset) when a concurrent compaction removed an object it was about to
// read (the objects it removes are in its snapshot, which the next listing
// finds), and calls done with what it found.
func loadIndex(ctx context.Context, r *repo.Repo, reset func() error, fn func(Event) error, done func(indexInfo)) error {
	for attempt := 0; ; attempt++ {
		info, err := readIndex(ctx, r, math.MaxUint64, func(u unit) error {
			for _, ev := range u.events {
				if err := fn(ev); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			if done != nil {
				done(info)
			}
			return nil
		}
		// A compaction removing objects makes progress: try again, a
		// little later each time (about 20 s in all).
		if !errors.Is(err, errVanished) || attempt == 100 {
			return err
		}
		if err := reset(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(attempt+1)*10*time.Millisecond, 200*time.Millisecond)):
		}
	}
}

func validEvent(ev Event) error {
	if ev.Event != Added && ev.Event != Deleted {
		return fmt.Errorf("unknown event %q", ev.Event)
	}
	if p := path.Clean(ev.Path); p != ev.Path || strings.HasPrefix(p, "/") || strings.HasPrefix(p, "..") || !strings.Contains(p, "/") {
		return fmt.Errorf("invalid path %q", ev.Path)
	}
	if len(ev.SHA256) != 64 {
		return fmt.Errorf("invalid sha256 %q for %s", ev.SHA256, ev.Path)
	}
	return nil
}

// storeBatch stores events as the next index batch, taking the next free
// sequence number if seq is taken by another writer. It returns the
// sequence number used.
func storeBatch(ctx context.Context, r *repo.Repo, seq uint64, events []Event) (uint64, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, ev := range events {
		if err := enc.Encode(ev); err != nil {
			return seq, err
		}
	}
	for range 1000 {
		_, err := r.Put(ctx, indexName(seq), bytes.NewReader(buf.Bytes()), map[string]string{"events": strconv.Itoa(len(events))})
		if err == nil {
			return seq, nil
		}
		if !repo.IsConflict(err) {
			return seq, fmt.Errorf("store media index batch: %w", err)
		}
		seq++
	}
	return seq, fmt.Errorf("store media index batch: 1000 names taken after %s", indexName(seq))
}
