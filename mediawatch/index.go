package mediawatch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
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

// ReadIndex calls fn for every event of the media index in order, and
// returns the sequence number of the last batch (0 when there is none).
// A damaged batch is an error (repo.IsCorrupt), not skipped: it may hold
// the only record of a file.
func ReadIndex(ctx context.Context, r *repo.Repo, fn func(Event) error) (uint64, error) {
	var names []string
	var last uint64
	err := r.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		if seq, ok := parseIndexName(oi.Name); ok {
			names = append(names, oi.Name)
			last = max(last, seq)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list media index in %s: %w", r, err)
	}
	for _, name := range names {
		if err := readBatch(ctx, r, name, fn); err != nil {
			return 0, err
		}
	}
	return last, nil
}

func readBatch(ctx context.Context, r *repo.Repo, name string, fn func(Event) error) error {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return fmt.Errorf("read media index: %w", err)
	}
	defer rd.Close()
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var ev Event
		if err := json.Unmarshal(b, &ev); err != nil {
			return fmt.Errorf("media index %s line %d: %w", name, line, err)
		}
		if err := validEvent(ev); err != nil {
			return fmt.Errorf("media index %s line %d: %w", name, line, err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read media index %s: %w", name, err)
	}
	return nil
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
