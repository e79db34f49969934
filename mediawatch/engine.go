package mediawatch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/internal/repo"
)

// Trees Synapse writes local media to. remote_content, remote_thumbnail,
// url_cache and url_cache_thumbnails are caches of other servers' media and
// are never backed up.
const (
	LocalContent    = "local_content"
	LocalThumbnails = "local_thumbnails"
)

// Options configure a Watcher or a Sync. Zero values mean the defaults.
type Options struct {
	// Trees are the media store's subdirectories to back up; nil means
	// local_content, plus local_thumbnails unless DynamicThumbnails.
	Trees []string
	// DynamicThumbnails is Synapse's dynamic_thumbnails: thumbnails are
	// generated on request and not worth backing up.
	DynamicThumbnails bool
	// QuietPeriod is how long a file must be unmodified before it is
	// copied (default 2 s).
	QuietPeriod time.Duration
	// ScanInterval is the period of the reconciling full scan (default
	// 1 h; negative disables it).
	ScanInterval time.Duration
	// Workers is the number of parallel copies (default 8: a copy mostly
	// waits for fsync, which the file system commits in groups).
	Workers int
	// CopyMemory bounds the buffers of the copies read into memory, in
	// use or kept for the next ones, whatever the number of Workers
	// (default 16 MiB); they are given up when the copying is done.
	CopyMemory int64
	// BatchInterval and BatchSize bound how long and how many events wait
	// before an index batch is stored (defaults 1 s and 1000); a batch is
	// stored at once when no other copy is in flight.
	BatchInterval time.Duration
	BatchSize     int
	// MaxLeafWatches bounds the inotify watches on leaf directories
	// (default 10,000).
	MaxLeafWatches int
	// Lengths, when set, is asked for local_media_repository.media_length
	// before a recently modified local_content file is copied; a matching
	// row makes the file complete without waiting for QuietPeriod. If it
	// is also a DigestChecker, a row's sha256 (when not NULL) must match
	// the file's too; if it is a ThumbnailChecker, local_thumbnails files
	// are checked against local_media_repository_thumbnails.thumbnail_length
	// the same way. *DBLengths is all three.
	Lengths LengthChecker
	// DBGrace is how long after its last modification a file waits for a
	// matching database row before it is copied anyway (default 1 min).
	DBGrace time.Duration
	// CompactAfter is the number of index batches outside the newest
	// snapshot from which the index is compacted (see Compact): after
	// Sync, and after the Watcher's full scans (default 1000; negative
	// disables).
	CompactAfter int
	// Logger receives progress and warnings; nil discards them.
	Logger *slog.Logger
	// Progress, when set, is called about twice a second during Sync.
	Progress func(Stats)
	// OnStored, when set, is called for every index event once it is
	// durable in the repository (the agent measures the latency from a
	// file's completion, Event.MTime, to its durable copy).
	OnStored func(Event)
}

func (o Options) withDefaults() Options {
	if o.Trees == nil {
		o.Trees = []string{LocalContent}
		if !o.DynamicThumbnails {
			o.Trees = append(o.Trees, LocalThumbnails)
		}
	}
	if o.QuietPeriod <= 0 {
		o.QuietPeriod = time.Second
	}
	if o.ScanInterval == 0 {
		o.ScanInterval = time.Hour
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.CopyMemory <= 0 {
		o.CopyMemory = 16 << 20
	}
	// Room for at least one copy of each kind.
	o.CopyMemory = max(o.CopyMemory, bigFile+minBufClass)
	if o.BatchInterval <= 0 {
		o.BatchInterval = time.Second
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.MaxLeafWatches <= 0 {
		o.MaxLeafWatches = 10000
	}
	if o.DBGrace <= 0 {
		o.DBGrace = time.Minute
	}
	if o.CompactAfter == 0 {
		o.CompactAfter = 1000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Stats count what a Watcher or Sync did.
type Stats struct {
	// Scanned is the number of files looked at by scans.
	Scanned int64 `json:"scanned"`
	// Pending is the number of files waiting to be complete or copied.
	Pending int64 `json:"pending"`
	// Added and Deleted count index events recorded.
	Added   int64 `json:"added"`
	Deleted int64 `json:"deleted"`
	// Uploaded counts objects written; Deduplicated files whose content
	// was in the repository already.
	Uploaded     int64 `json:"uploaded"`
	Deduplicated int64 `json:"deduplicated"`
	// Bytes is the plaintext size of the files added.
	Bytes int64 `json:"bytes"`
	// ScanDone is true once the first full scan has finished.
	ScanDone bool `json:"scan_done"`
	// FailingFiles counts the files that cannot be read or copied (each is
	// retried); Failing names the longest-failing few, with their errors.
	FailingFiles int64         `json:"failing_files"`
	Failing      []FileFailure `json:"failing,omitempty"`
}

// FileFailure is a media file synbak keeps failing to read or copy.
type FileFailure struct {
	// Path is relative to the media store.
	Path string `json:"path"`
	// Err is the last error; Since when the file first failed; Attempts
	// how many times in a row.
	Err      string    `json:"error"`
	Since    time.Time `json:"since"`
	Attempts int       `json:"attempts"`
}

// failingShown is how many failing files Stats names.
const failingShown = 5

// failureLogEvery is how often a file that keeps failing is logged again
// (its first failure always is).
const failureLogEvery = 10 * time.Minute

// fileFailure is the engine's record of a failing file.
type fileFailure struct {
	err      string
	since    time.Time
	lastLog  time.Time
	attempts int
}

// failed records that path failed with err and reports whether to log it
// (the first time, then every failureLogEvery). e.mu must be held.
func (e *engine) failed(path string, err error, now time.Time) (logIt bool) {
	f := e.failing[path]
	if f == nil {
		f = &fileFailure{since: now}
		e.failing[path] = f
	}
	f.err = err.Error()
	f.attempts++
	if f.lastLog.IsZero() || now.Sub(f.lastLog) >= failureLogEvery {
		f.lastLog = now
		return true
	}
	return false
}

// entry is the backed-up state of one path.
type entry struct {
	sha     [32]byte
	size    int64
	mtime   int64 // UnixNano
	deleted bool
	gen     uint32 // full scan generation that last saw it
}

// pend is a pending path's times, as UnixNano (0: none): 16 bytes, not
// two time.Time's 48, since the pending set holds every file of a store
// during its initial scan.
type pend struct {
	first     int64 // when first noticed
	notBefore int64 // not examined again before then
}

func mkPend(firstSeen, notBefore time.Time) pend {
	p := pend{first: firstSeen.UnixNano()}
	if !notBefore.IsZero() {
		p.notBefore = notBefore.UnixNano()
	}
	return p
}

func (p pend) firstSeen() time.Time { return time.Unix(0, p.first).UTC() }

func (p pend) due(now time.Time) bool { return p.notBefore <= now.UnixNano() }

type job struct {
	path      string
	size      int64
	mtime     time.Time
	firstSeen time.Time
	deleted   bool
	// wantSHA, when set, is the sha256 the database recorded: content
	// that differs is not complete (yet).
	wantSHA string
}

// engine owns the state, the pending set and the copy pipeline; Watcher
// and Sync feed it paths.
type engine struct {
	r     *repo.Repo
	store string
	opts  Options
	log   *slog.Logger

	mu       sync.Mutex
	state    map[string]*entry
	arena    stateArena // the state's keys and entries
	pending  map[string]pend
	inflight map[string]bool
	failing  map[string]*fileFailure
	gen      uint32
	seq      uint64 // next index batch
	loose    int    // index batches not in a snapshot (see Compact)
	stats    Stats

	// failFast (Sync) makes the first copy error end the pass.
	failFast bool
	firstErr error

	wake    chan struct{}
	jobs    chan job
	results chan Event

	// bufs holds the buffers of the in-memory copies (see bufPool).
	bufs *bufPool
	// enc keeps the compressors of compressed copies: at most
	// GOMAXPROCS compress at once (it is CPU-bound), and no more
	// compressors exist. maybeRelease replaces it with an empty one.
	encMu sync.Mutex
	enc   *repo.EncoderCache
	// bulk is set by work that leaves memory behind (a full scan, many
	// copies; under mu): once the engine is idle, maybeRelease gives it
	// back. copied counts the events committed since the last release.
	bulk   bool
	copied int
	// freeOS returns freed memory to the operating system
	// (freeOSMemory); releases counts maybeRelease's releases.
	freeOS   func()
	releases int

	// objects defers the durability of the objects the workers store
	// (one directory fsync for many objects on a local repository); the
	// batcher syncs it before storing an index batch naming them.
	objects *repo.SyncGroup
}

func newEngine(r *repo.Repo, store string, opts Options) *engine {
	opts = opts.withDefaults()
	return &engine{
		r: r, store: store, opts: opts, log: opts.Logger,
		state: map[string]*entry{}, pending: map[string]pend{}, inflight: map[string]bool{}, failing: map[string]*fileFailure{},
		wake: make(chan struct{}, 1), jobs: make(chan job, 64), results: make(chan Event, 256),
		objects: r.NewSyncGroup(), bufs: newBufPool(opts.CopyMemory),
		enc: repo.NewEncoderCache(compressors()), freeOS: freeOSMemory,
	}
}

// freeOSMemory collects garbage twice, then returns the free memory to the
// operating system: the first collection only moves what sync.Pools hold
// (the repository's copy buffers and compressors of streamed and encrypted
// copies) to their victim caches, the second frees it, and an idle agent
// allocates too little for another collection to come soon.
func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// compressors is how many copies compress at once: one per CPU.
func compressors() int { return runtime.GOMAXPROCS(0) }

// encoders returns the current compressor cache.
func (e *engine) encoders() *repo.EncoderCache {
	e.encMu.Lock()
	defer e.encMu.Unlock()
	return e.enc
}

// releaseAfter is how many copied files make the engine give memory back
// once it is idle (a full scan always does).
const releaseAfter = 1000

// maybeRelease gives memory back when the engine is idle after bulk work:
// the free copy buffers, the compressors, the pending set's table (a map
// never shrinks), and then the freed heap to the operating system, so that
// an idle agent holds little more than its per-file state.
func (e *engine) maybeRelease() {
	e.mu.Lock()
	if !e.stats.ScanDone || len(e.pending) > 0 || len(e.inflight) > 0 || !(e.bulk || e.copied >= releaseAfter) {
		e.mu.Unlock()
		return
	}
	e.bulk, e.copied = false, 0
	e.pending, e.inflight = map[string]pend{}, map[string]bool{}
	e.releases++
	e.mu.Unlock()
	e.bufs.drop()
	e.encMu.Lock()
	e.enc = repo.NewEncoderCache(compressors())
	e.encMu.Unlock()
	e.freeOS()
}

// load rebuilds the state from the index.
func (e *engine) load(ctx context.Context) error {
	n := 0
	err := loadIndex(ctx, e.r, func() error {
		n = 0
		e.state = map[string]*entry{}
		e.arena.reset()
		return nil
	}, func(ev Event) error {
		n++
		applyEvent(e.state, &e.arena, ev)
		return nil
	}, func(info indexInfo) {
		e.seq = info.last + 1
		e.loose = len(info.loose) + len(info.foreign)
	})
	if err != nil {
		return err
	}
	e.log.Debug("media index loaded", "events", n, "paths", len(e.state), "batches_outside_snapshot", e.loose)
	return nil
}

// applyEvent records ev in state, with new paths and entries from a (nil:
// allocated one by one).
func applyEvent(state map[string]*entry, a *stateArena, ev Event) {
	st := state[ev.Path]
	if st == nil {
		if a != nil {
			st = a.entry()
			state[a.name(ev.Path)] = st
		} else {
			st = &entry{}
			state[ev.Path] = st
		}
	}
	if ev.Event == Deleted {
		st.deleted = true
		return
	}
	// Without hex.DecodeString's allocation: this runs for every event
	// of the index at start.
	var h [64]byte
	n := copy(h[:], ev.SHA256)
	_, _ = hex.Decode(st.sha[:], h[:n])
	st.size, st.mtime, st.deleted = ev.Size, ev.MTime.UnixNano(), false
}

func (e *engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// notice marks rel (relative to the store) as worth a look.
func (e *engine) notice(rel string) {
	e.mu.Lock()
	if !e.inflight[rel] {
		if _, ok := e.pending[rel]; !ok {
			e.pending[rel] = mkPend(time.Now(), time.Time{})
		}
	}
	e.mu.Unlock()
	e.poke()
}

// observe is notice for a file found by a scan with gen, skipping files the
// state has with the same size and mtime.
func (e *engine) observe(rel string, fi fs.FileInfo, gen uint32) {
	e.mu.Lock()
	e.stats.Scanned++
	st := e.state[rel]
	if st != nil && !st.deleted && st.size == fi.Size() && st.mtime == fi.ModTime().UnixNano() {
		st.gen = gen
		e.mu.Unlock()
		return
	}
	if !e.inflight[rel] {
		if _, ok := e.pending[rel]; !ok {
			e.pending[rel] = mkPend(time.Now(), time.Time{})
		}
	}
	e.mu.Unlock()
	e.poke()
}

// scanTrees walks every tree, observing files, and calls onDir (when not
// nil) for each directory before its contents are read. If a tree was
// scanned completely, files of the state under it that the scan did not
// see are queued for a check (deleted ones are then recorded).
func (e *engine) scanTrees(ctx context.Context, onDir func(rel string, level int, fi fs.FileInfo)) error {
	e.mu.Lock()
	e.gen++
	gen := e.gen
	e.mu.Unlock()
	var complete []string
	for _, tree := range e.opts.Trees {
		err := e.scanDir(ctx, tree, gen, onDir)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, fs.ErrNotExist) && tree == unwrapRoot(err) {
				e.log.Debug("media tree does not exist yet", "tree", filepath.Join(e.store, tree))
			} else {
				e.log.Warn("media scan incomplete: deletions under this tree are not checked until the next scan", "tree", filepath.Join(e.store, tree), "err", err)
			}
			continue
		}
		complete = append(complete, tree+"/")
	}
	e.mu.Lock()
	now := time.Now().UTC()
	for p, st := range e.state {
		if st.deleted || st.gen == gen || e.inflight[p] {
			continue
		}
		for _, pre := range complete {
			if strings.HasPrefix(p, pre) {
				if _, ok := e.pending[p]; !ok {
					e.pending[p] = mkPend(now, time.Time{})
				}
				break
			}
		}
	}
	e.stats.ScanDone = true
	e.bulk = true
	e.mu.Unlock()
	e.poke()
	return nil
}

type rootError struct {
	rel string
	err error
}

func (r rootError) Error() string { return r.err.Error() }
func (r rootError) Unwrap() error { return r.err }

func unwrapRoot(err error) string {
	var re rootError
	if errors.As(err, &re) {
		return re.rel
	}
	return ""
}

// scanDir walks rel (relative to the store).
func (e *engine) scanDir(ctx context.Context, rel string, gen uint32, onDir func(rel string, level int, fi fs.FileInfo)) error {
	root := filepath.Join(e.store, rel)
	if _, err := os.Lstat(root); err != nil {
		return rootError{rel, err}
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != root && errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		r, rerr := filepath.Rel(e.store, p)
		if rerr != nil {
			return rerr
		}
		r = filepath.ToSlash(r)
		if d.IsDir() {
			if onDir != nil {
				if fi, err := d.Info(); err == nil {
					onDir(r, level(r), fi)
				}
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed while walking: an event or the next scan
		}
		e.observe(r, fi, gen)
		return nil
	})
}

// level is the depth of rel below its tree: 0 for the tree itself.
func level(rel string) int { return strings.Count(rel, "/") }

// tick is how often the pending set is examined.
func (e *engine) tick() time.Duration {
	return min(max(e.opts.QuietPeriod/4, 20*time.Millisecond), 250*time.Millisecond)
}

// runChecker moves complete files from pending to the copy workers until
// ctx ends.
func (e *engine) runChecker(ctx context.Context) {
	t := time.NewTicker(e.tick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.wake:
		}
		for e.checkPending(ctx) && ctx.Err() == nil {
		}
		e.maybeRelease()
	}
}

// checkBatch bounds the paths examined in one pass, so that memory stays
// flat when a scan queues a million files.
const checkBatch = 4096

// checkPending examines pending paths that are due and sends the complete
// ones to the workers; it returns true when more were due than it took.
func (e *engine) checkPending(ctx context.Context) (more bool) {
	now := time.Now()
	e.mu.Lock()
	var paths []string
	for p, pd := range e.pending {
		if pd.due(now) {
			if len(paths) == checkBatch {
				more = true
				break
			}
			paths = append(paths, p)
		}
	}
	e.mu.Unlock()

	var ready, dbCheck []job
	for _, p := range paths {
		fi, err := os.Lstat(filepath.Join(e.store, filepath.FromSlash(p)))
		e.mu.Lock()
		pd, ok := e.pending[p]
		if !ok {
			e.mu.Unlock()
			continue
		}
		st := e.state[p]
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			delete(e.pending, p)
			delete(e.failing, p)
			if st != nil && !st.deleted {
				e.inflight[p] = true
				ready = append(ready, job{path: p, firstSeen: pd.firstSeen(), deleted: true})
			}
		case err != nil:
			if e.failed(p, err, now) {
				e.log.Warn("cannot stat media file; retrying every 5s (logged again in 10m if it still fails)", "file", p, "err", err)
			}
			pd.notBefore = now.Add(5 * time.Second).UnixNano()
			e.pending[p] = pd
		case !fi.Mode().IsRegular():
			delete(e.pending, p)
			delete(e.failing, p)
		case st != nil && !st.deleted && st.size == fi.Size() && st.mtime == fi.ModTime().UnixNano():
			delete(e.pending, p)
		case now.Sub(fi.ModTime()) < e.opts.QuietPeriod && e.dbEligible(p):
			// The row is inserted once the file is complete: no need to
			// wait for the quiet period when it says so.
			j := job{path: p, size: fi.Size(), mtime: fi.ModTime(), firstSeen: pd.firstSeen()}
			delete(e.pending, p)
			e.inflight[p] = true
			dbCheck = append(dbCheck, j)
		case now.Sub(fi.ModTime()) < e.opts.QuietPeriod:
			mt := fi.ModTime()
			if mt.After(now) {
				mt = now
			}
			pd.notBefore = mt.Add(e.opts.QuietPeriod).UnixNano()
			e.pending[p] = pd
		default:
			j := job{path: p, size: fi.Size(), mtime: fi.ModTime(), firstSeen: pd.firstSeen()}
			delete(e.pending, p)
			e.inflight[p] = true
			if now.Sub(fi.ModTime()) < e.opts.DBGrace && e.dbEligible(p) {
				dbCheck = append(dbCheck, j)
			} else {
				ready = append(ready, j)
			}
		}
		e.mu.Unlock()
	}
	for _, j := range dbCheck {
		quiet := now.Sub(j.mtime) >= e.opts.QuietPeriod
		ok, sha, err := e.dbComplete(ctx, j)
		if err != nil {
			// Database errors do not hold copies back beyond the quiet
			// period, nor make a file complete before it.
			e.log.Debug("media length query failed; copying on the quiet period alone", "file", j.path, "err", err)
			ok, sha = quiet, ""
		}
		if ok {
			j.wantSHA = sha
			ready = append(ready, j)
			continue
		}
		// In the quiet period, ask again soon (or, after an error, when it
		// ends); after it (waiting for a row until DBGrace), every second.
		notBefore := now.Add(e.tick())
		switch {
		case err != nil:
			notBefore = j.mtime.Add(e.opts.QuietPeriod)
		case quiet:
			notBefore = now.Add(max(e.tick(), time.Second))
		}
		e.mu.Lock()
		delete(e.inflight, j.path)
		e.pending[j.path] = mkPend(j.firstSeen, notBefore)
		e.mu.Unlock()
	}
	for _, j := range ready {
		select {
		case e.jobs <- j:
		case <-ctx.Done():
			return false
		}
	}
	return more
}

// dbEligible says whether the database can tell whether p is complete.
func (e *engine) dbEligible(p string) bool {
	if e.opts.Lengths == nil {
		return false
	}
	if _, ok := contentMediaID(p); ok {
		return true
	}
	if _, ok := e.opts.Lengths.(ThumbnailChecker); ok {
		_, _, ok := thumbnailOf(p)
		return ok
	}
	return false
}

// dbComplete asks the database whether j is complete: its size is the
// recorded media_length (or thumbnail_length). For content, it also
// returns the recorded sha256 when there is one, which the copy then
// checks.
func (e *engine) dbComplete(ctx context.Context, j job) (complete bool, sha256hex string, err error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var n int64
	var found bool
	if id, ok := contentMediaID(j.path); ok {
		if dc, ok := e.opts.Lengths.(DigestChecker); ok {
			n, sha256hex, found, err = dc.MediaDigest(qctx, id)
		} else {
			n, found, err = e.opts.Lengths.MediaLength(qctx, id)
		}
	} else if id, th, ok := thumbnailOf(j.path); ok {
		tc, ok := e.opts.Lengths.(ThumbnailChecker)
		if !ok {
			return true, "", nil
		}
		n, found, err = tc.ThumbnailLength(qctx, id, th)
	} else {
		return true, "", nil
	}
	if err != nil {
		return false, "", err
	}
	if len(sha256hex) != 64 {
		sha256hex = "" // not a sha256 hex digest: not comparable
	}
	return found && n == j.size, sha256hex, nil
}

// runWorker copies files until jobs is closed or ctx ends.
func (e *engine) runWorker(ctx context.Context) {
	for {
		var j job
		select {
		case <-ctx.Done():
			return
		case j = <-e.jobs:
		}
		ev, ok, err := e.copyFile(ctx, j)
		if errors.Is(err, errDigestMismatch) {
			// Not the content the database describes (yet): like a
			// length mismatch, wait; after DBGrace it is copied as is.
			e.log.Debug("media file differs from local_media_repository.sha256; waiting", "file", j.path, "err", err)
			e.mu.Lock()
			delete(e.inflight, j.path)
			e.pending[j.path] = mkPend(j.firstSeen, time.Now().Add(time.Second))
			e.mu.Unlock()
			continue
		}
		if err != nil || !ok {
			e.mu.Lock()
			delete(e.inflight, j.path)
			if err != nil {
				if ctx.Err() == nil {
					if e.failFast && e.firstErr == nil {
						e.firstErr = err
					}
					if e.failed(j.path, err, time.Now()) {
						e.log.Warn("media copy failed; retrying every 5s (logged again in 10m if it still fails)", "file", j.path, "err", err)
					}
				}
				e.pending[j.path] = mkPend(j.firstSeen, time.Now().Add(5*time.Second))
			} else {
				// Changed or vanished meanwhile: look again.
				e.pending[j.path] = mkPend(j.firstSeen, time.Time{})
			}
			e.mu.Unlock()
			continue
		}
		e.mu.Lock()
		if f := e.failing[j.path]; f != nil {
			delete(e.failing, j.path)
			e.log.Info("media file copied after failing", "file", j.path, "attempts", f.attempts, "failing_seconds", time.Since(f.since).Seconds())
		}
		e.mu.Unlock()
		select {
		case e.results <- ev:
		case <-ctx.Done():
			return
		}
	}
}

// errDigestMismatch: the file's sha256 is not the one the database recorded.
var errDigestMismatch = errors.New("sha256 differs from the database's")

// smallFile is the size up to which a file is copied from memory.
const smallFile = 1 << 20

// Files up to bigFile are copied from memory too when the copy buffers'
// budget (Options.CopyMemory) has room, and streamed otherwise: a streamed
// file is read and hashed twice (once for its name, once as it is stored).
const bigFile = 4 << 20

// copyFile stores j's file as a content-addressed object and returns its
// index event; ok is false when the file changed or vanished (look again).
func (e *engine) copyFile(ctx context.Context, j job) (Event, bool, error) {
	now := time.Now().UTC()
	if j.deleted {
		e.mu.Lock()
		st := e.state[j.path]
		var ev Event
		if st != nil {
			ev = Event{Path: j.path, SHA256: hex.EncodeToString(st.sha[:]), Size: st.size, MTime: time.Unix(0, st.mtime).UTC(),
				FirstSeen: j.firstSeen, Event: Deleted, At: now}
		}
		e.mu.Unlock()
		return ev, st != nil, nil
	}
	full := filepath.Join(e.store, filepath.FromSlash(j.path))
	// Not os.Open: it registers the file with Go's poller, five system
	// calls that a regular file gains nothing from.
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Event{}, false, nil
		}
		return Event{}, false, &fs.PathError{Op: "open", Path: full, Err: err}
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Event{}, false, err
	}
	if fi.Size() != j.size || !fi.ModTime().Equal(j.mtime) {
		return Event{}, false, nil
	}
	// Files up to smallFile (most media), and up to bigFile while a big
	// buffer is free, are read once, into memory, and hashed once
	// (repo.Content: the object's trailer takes that checksum); larger ones
	// are hashed first and then streamed, and the repository checks on the
	// way that it reads the same content (repo.WantSHA256).
	var small []byte
	var content repo.Content
	var sum [32]byte
	var head []byte
	var buf []byte
	switch {
	case j.size <= smallFile:
		if buf, err = e.bufs.get(ctx, int(j.size)+1); err != nil {
			return Event{}, false, err
		}
	case j.size <= bigFile:
		buf = e.bufs.tryGet(int(j.size) + 1)
	}
	if buf != nil {
		defer e.bufs.put(buf)
		// One byte more than expected, usually in one read: a read of a
		// regular file that returns less than asked for ends at its end.
		n := 0
		for n < len(buf) {
			m, err := f.Read(buf[n:])
			n += m
			if err == io.EOF || (m > 0 && n == int(j.size)) {
				break
			}
			if err != nil {
				return Event{}, false, fmt.Errorf("read %s: %w", full, err)
			}
		}
		if n != int(j.size) {
			return Event{}, false, nil // shrank or grew meanwhile
		}
		small = buf[:n]
		content = repo.NewContent(small)
		sum = content.Sum()
		head = small[:min(512, len(small))]
	} else {
		h := sha256.New()
		head = make([]byte, 512)
		hn, _ := io.ReadFull(f, head)
		head = head[:hn]
		h.Write(head)
		if _, err := io.Copy(h, f); err != nil {
			return Event{}, false, fmt.Errorf("read %s: %w", full, err)
		}
		h.Sum(sum[:0])
	}
	shaHex := hex.EncodeToString(sum[:])
	if j.wantSHA != "" && j.wantSHA != shaHex {
		return Event{}, false, fmt.Errorf("%s: file %s, database %s: %w", j.path, shaHex, j.wantSHA, errDigestMismatch)
	}
	name := ObjectName(shaHex)
	info, err := e.r.Stat(ctx, name)
	switch {
	case err == nil && info.SHA256 == shaHex && info.Size == j.size:
		// Stored before, or just now by another worker or writer whose
		// Put may not be durable yet: the index batch waits for it too.
		e.objects.Include(name)
		e.mu.Lock()
		e.stats.Deduplicated++
		e.mu.Unlock()
	case err != nil && !repo.IsNotExist(err) && !repo.IsCorrupt(err):
		return Event{}, false, err
	default:
		opts := []repo.PutOption{repo.InSyncGroup(e.objects)}
		if incompressible(head) {
			opts = append(opts, repo.Uncompressed())
		} else {
			opts = append(opts, repo.WithEncoderCache(e.encoders()))
		}
		if small != nil {
			_, err = e.r.PutContent(ctx, name, content, nil, opts...)
		} else {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return Event{}, false, err
			}
			_, err = e.r.Put(ctx, name, f, nil, append(opts, repo.WantSHA256(sum))...)
		}
		if err != nil {
			if repo.IsUnexpectedContent(err) {
				return Event{}, false, nil // changed while it was copied
			}
			return Event{}, false, err
		}
		e.mu.Lock()
		e.stats.Uploaded++
		e.mu.Unlock()
	}
	return Event{Path: j.path, SHA256: shaHex, Size: j.size, MTime: j.mtime.UTC(), FirstSeen: j.firstSeen, Event: Added, At: now}, true, nil
}

// incompressible says whether content starting with head is already
// compressed (images, video, audio, archives).
func incompressible(head []byte) bool {
	ct := http.DetectContentType(head)
	for _, pre := range []string{"image/jpeg", "image/png", "image/gif", "image/webp", "video/", "audio/",
		"application/zip", "application/x-gzip", "application/x-rar-compressed", "application/wasm"} {
		if strings.HasPrefix(ct, pre) {
			return true
		}
	}
	return false
}

// runBatcher stores events in index batches, then commits them to the
// state, until results is closed; then it stores the rest with a fresh
// context.
func (e *engine) runBatcher(ctx context.Context) {
	var batch []Event
	t := time.NewTicker(e.opts.BatchInterval)
	defer t.Stop()
	flush := func(ctx context.Context) {
		for len(batch) > 0 {
			// Every object the batch names was stored before its event
			// reached us: make them durable, then the batch.
			err := e.objects.Sync(ctx)
			var seq uint64
			if err == nil {
				seq, err = storeBatch(ctx, e.r, e.seq, batch)
			}
			if err == nil {
				e.commit(seq, batch)
				batch = nil
				return
			}
			e.log.Error("cannot store media index batch; retrying", "err", err)
			e.mu.Lock()
			if e.failFast && e.firstErr == nil {
				e.firstErr = err
			}
			e.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}
	for {
		select {
		case ev, ok := <-e.results:
			if !ok {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				flush(fctx)
				cancel()
				return
			}
			batch = append(batch, ev)
			if len(batch) >= e.opts.BatchSize || e.nothingElseInFlight(len(batch)) {
				flush(ctx)
			}
		case <-t.C:
			flush(ctx)
		}
	}
}

// nothingElseInFlight says whether the n events of the batch are all that
// is being copied: then waiting for more only delays them.
func (e *engine) nothingElseInFlight(n int) bool {
	if len(e.results) > 0 {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.inflight) <= n
}

func (e *engine) commit(seq uint64, batch []Event) {
	e.commitLocked(seq, batch)
	if e.opts.OnStored != nil {
		for _, ev := range batch {
			e.opts.OnStored(ev)
		}
	}
}

func (e *engine) commitLocked(seq uint64, batch []Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq = seq + 1
	e.loose++
	e.copied += len(batch)
	for _, ev := range batch {
		applyEvent(e.state, &e.arena, ev)
		if st := e.state[ev.Path]; st != nil {
			st.gen = e.gen
		}
		delete(e.inflight, ev.Path)
		if ev.Event == Added {
			e.stats.Added++
			e.stats.Bytes += ev.Size
		} else {
			e.stats.Deleted++
		}
	}
}

// maybeCompact compacts the index when CompactAfter batches are outside
// the newest snapshot. Failures are logged: the index stays loadable.
func (e *engine) maybeCompact(ctx context.Context) {
	e.mu.Lock()
	n := e.loose
	e.mu.Unlock()
	if e.opts.CompactAfter < 0 || n < e.opts.CompactAfter {
		return
	}
	start := time.Now()
	rep, err := Compact(ctx, e.r)
	if err != nil {
		if ctx.Err() == nil {
			e.log.Warn("media index compaction failed; the index is unchanged and still complete", "err", err)
		}
		return
	}
	e.mu.Lock()
	e.loose = max(e.loose-n, 0)
	e.mu.Unlock()
	e.log.Info("media index compacted", "snapshot", rep.Snapshot, "batches", rep.Batches, "events", rep.Events,
		"removed", rep.Removed, "duration", time.Since(start).Round(time.Millisecond))
}

// Stats returns the counters so far.
func (e *engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Pending = int64(len(e.pending) + len(e.inflight))
	s.FailingFiles = int64(len(e.failing))
	for p, f := range e.failing {
		s.Failing = append(s.Failing, FileFailure{Path: p, Err: f.err, Since: f.since, Attempts: f.attempts})
	}
	sort.Slice(s.Failing, func(i, j int) bool {
		a, b := s.Failing[i], s.Failing[j]
		return a.Since.Before(b.Since) || (a.Since.Equal(b.Since) && a.Path < b.Path)
	})
	if len(s.Failing) > failingShown {
		s.Failing = s.Failing[:failingShown]
	}
	return s
}

func (e *engine) failure() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.firstErr
}

func (e *engine) idle() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats.ScanDone && len(e.pending) == 0 && len(e.inflight) == 0
}

// pipeline runs the checker, the workers and the batcher until ctx ends;
// the returned function waits for them (and the final index batch).
func (e *engine) pipeline(ctx context.Context) (wait func()) {
	var wg, workers sync.WaitGroup
	wg.Go(func() { e.runChecker(ctx) })
	for range e.opts.Workers {
		workers.Go(func() { e.runWorker(ctx) })
	}
	wg.Go(func() {
		workers.Wait()
		close(e.results)
	})
	wg.Go(func() { e.runBatcher(ctx) })
	return wg.Wait
}
