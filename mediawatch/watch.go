package mediawatch

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/synbak/synbak/internal/repo"
)

// recentDir is how recently a leaf directory found by a full scan must have
// changed to get a watch.
const recentDir = 10 * time.Minute

// Watcher backs up a media store continuously (see the package comment).
type Watcher struct {
	e  *engine
	fw *fsnotify.Watcher

	wmu         sync.Mutex
	upper       map[string]bool
	leaves      *list.List // of string, most recent first
	leafIndex   map[string]*list.Element
	limitLogged bool
	rescans     []rescan

	scanReq chan struct{}

	// dropEvents makes the watcher ignore inotify events (tests).
	dropEvents atomic.Bool
}

type rescan struct {
	at  time.Time
	rel string
}

// New returns a Watcher of the media store at mediaStore (Synapse's
// media_store_path) that backs up into r.
func New(r *repo.Repo, mediaStore string, opts Options) *Watcher {
	return &Watcher{
		e:     newEngine(r, mediaStore, opts),
		upper: map[string]bool{}, leaves: list.New(), leafIndex: map[string]*list.Element{},
		scanReq: make(chan struct{}, 1),
	}
}

// Stats returns the counters so far.
func (w *Watcher) Stats() Stats { return w.e.Stats() }

func checkStore(store string) error {
	fi, err := os.Stat(store)
	if err != nil {
		return fmt.Errorf("media store %s: %w (check media_store_path in homeserver.yaml)", store, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("media store %s is not a directory (check media_store_path in homeserver.yaml)", store)
	}
	return nil
}

// Run loads the index, scans the store, and then copies every new or
// changed file and records every deletion until ctx ends. It returns nil
// after a clean shutdown (the last index batch stored).
func (w *Watcher) Run(ctx context.Context) error {
	e := w.e
	if err := checkStore(e.store); err != nil {
		return err
	}
	if err := e.load(ctx); err != nil {
		return err
	}
	fw, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	defer fw.Close()
	w.fw = fw
	w.addWatch("", 0)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waitPipeline := e.pipeline(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		waitPipeline()
	}()
	w.requestScan()
	wg.Go(func() { w.scanLoop(ctx) })
	if rm, ok := e.opts.Lengths.(RecentMedia); ok {
		wg.Go(func() { w.pollRecent(ctx, rm) })
	}

	t := time.NewTicker(e.tick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("inotify watcher closed")
			}
			w.handle(ctx, ev)
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("inotify watcher closed")
			}
			w.handleError(err)
		case <-t.C:
			w.runRescans(ctx)
		}
	}
}

func (w *Watcher) requestScan() {
	select {
	case w.scanReq <- struct{}{}:
	default:
	}
}

// scanLoop runs full scans when asked and every ScanInterval.
func (w *Watcher) scanLoop(ctx context.Context) {
	var tick <-chan time.Time
	if w.e.opts.ScanInterval > 0 {
		t := time.NewTicker(w.e.opts.ScanInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.scanReq:
		case <-tick:
		}
		start := time.Now()
		if err := w.e.scanTrees(ctx, w.onScanDir); err != nil {
			return
		}
		st := w.e.Stats()
		w.e.log.Info("media scan done", "duration", time.Since(start).Round(time.Millisecond), "pending", st.Pending, "watches", w.watchCount())
		w.e.maybeCompact(ctx)
	}
}

// pollRecent asks the database every second for media created since the
// last poll and looks at their files and thumbnail directories: the
// signal for uploads into leaf directories that have no watch.
func (w *Watcher) pollRecent(ctx context.Context, rm RecentMedia) {
	since := time.Now().Add(-time.Minute).UnixMilli() // older: the initial scan
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ids, newest, err := rm.MediaSince(qctx, since)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				w.e.log.Debug("polling local_media_repository failed", "err", err)
			}
			continue
		}
		since = newest
		for _, id := range ids {
			if len(id) < 5 || strings.ContainsAny(id, "/.") {
				continue
			}
			w.e.notice(LocalContent + "/" + id[:2] + "/" + id[2:4] + "/" + id[4:])
			if _, ok := w.tree(LocalThumbnails + "/"); ok {
				w.newDir(ctx, LocalThumbnails+"/"+id[:2]+"/"+id[2:4]+"/"+id[4:])
			}
		}
	}
}

func (w *Watcher) handleError(err error) {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		w.e.log.Warn("inotify event queue overflowed; rescanning the media store (raise fs.inotify.max_queued_events if this recurs)")
		w.requestScan()
		return
	}
	w.e.log.Warn("inotify error", "err", err)
}

// maxDirLevel is the deepest directory level of a tree: ab/cd for content,
// ab/cd/<rest> for thumbnails.
func maxDirLevel(tree string) int {
	if tree == LocalContent {
		return 2
	}
	return 3
}

func (w *Watcher) tree(rel string) (string, bool) {
	tree, _, _ := strings.Cut(rel, "/")
	for _, t := range w.e.opts.Trees {
		if t == tree {
			return tree, true
		}
	}
	return "", false
}

func (w *Watcher) handle(ctx context.Context, ev fsnotify.Event) {
	if w.dropEvents.Load() {
		return
	}
	r, err := filepath.Rel(w.e.store, ev.Name)
	if err != nil || r == "." || strings.HasPrefix(r, "..") {
		return
	}
	rel := filepath.ToSlash(r)
	tree, ok := w.tree(rel)
	if !ok {
		return
	}
	lvl := level(rel)
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
			if lvl <= maxDirLevel(tree) {
				w.newDir(ctx, rel)
			}
			return
		}
	}
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		w.forget(rel)
	}
	if lvl >= 1 {
		w.touch(pathDir(rel))
		w.e.notice(rel)
	}
}

func pathDir(rel string) string {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i]
	}
	return ""
}

// newDir watches a new directory and scans it (and its subdirectories) at
// once and again after the quiet period.
func (w *Watcher) newDir(ctx context.Context, rel string) {
	w.scanNew(ctx, rel)
	w.wmu.Lock()
	w.rescans = append(w.rescans, rescan{at: time.Now().Add(2 * w.e.opts.QuietPeriod), rel: rel})
	w.wmu.Unlock()
}

func (w *Watcher) scanNew(ctx context.Context, rel string) {
	err := w.e.scanDir(ctx, rel, 0, func(r string, lvl int, _ fs.FileInfo) {
		tree, _ := w.tree(r)
		if lvl <= maxDirLevel(tree) {
			w.addWatch(r, lvl)
		}
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
		w.e.log.Warn("scan of new media directory failed; the next full scan covers it", "dir", rel, "err", err)
	}
}

func (w *Watcher) runRescans(ctx context.Context) {
	now := time.Now()
	w.wmu.Lock()
	var due []string
	keep := w.rescans[:0]
	for _, r := range w.rescans {
		if now.Before(r.at) {
			keep = append(keep, r)
		} else {
			due = append(due, r.rel)
		}
	}
	w.rescans = keep
	w.wmu.Unlock()
	for _, rel := range due {
		w.scanNew(ctx, rel)
	}
}

// onScanDir adds watches during full scans: upper levels always, leaf
// directories when recently changed.
func (w *Watcher) onScanDir(rel string, lvl int, fi fs.FileInfo) {
	tree, _ := w.tree(rel)
	if lvl <= 1 || (lvl <= maxDirLevel(tree) && time.Since(fi.ModTime()) < recentDir) {
		w.addWatch(rel, lvl)
	}
}

// addWatch watches rel: upper levels (the store, tree roots, ab/)
// permanently, deeper ones in the bounded LRU set.
func (w *Watcher) addWatch(rel string, lvl int) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if lvl <= 1 {
		if w.upper[rel] {
			return
		}
		if w.add(rel) {
			w.upper[rel] = true
		}
		return
	}
	if el, ok := w.leafIndex[rel]; ok {
		w.leaves.MoveToFront(el)
		return
	}
	for w.leaves.Len() >= w.e.opts.MaxLeafWatches {
		old := w.leaves.Remove(w.leaves.Back()).(string)
		delete(w.leafIndex, old)
		_ = w.fw.Remove(filepath.Join(w.e.store, old))
	}
	if w.add(rel) {
		w.leafIndex[rel] = w.leaves.PushFront(rel)
	}
}

// add adds an inotify watch; the caller holds wmu.
func (w *Watcher) add(rel string) bool {
	err := w.fw.Add(filepath.Join(w.e.store, filepath.FromSlash(rel)))
	if err == nil {
		return true
	}
	if errors.Is(err, syscall.ENOSPC) {
		if !w.limitLogged {
			w.limitLogged = true
			w.e.log.Warn("inotify watch limit reached: new media in unwatched directories is found by scans only (every scan interval); raise the limit with `sysctl -w fs.inotify.max_user_watches=1048576` and persist it in /etc/sysctl.d/",
				"watches", len(w.upper)+w.leaves.Len())
		}
		return false
	}
	if !errors.Is(err, fs.ErrNotExist) {
		w.e.log.Warn("cannot watch media directory; scans cover it", "dir", rel, "err", err)
	}
	return false
}

func (w *Watcher) touch(rel string) {
	w.wmu.Lock()
	if el, ok := w.leafIndex[rel]; ok {
		w.leaves.MoveToFront(el)
	}
	w.wmu.Unlock()
}

func (w *Watcher) forget(rel string) {
	w.wmu.Lock()
	delete(w.upper, rel)
	if el, ok := w.leafIndex[rel]; ok {
		w.leaves.Remove(el)
		delete(w.leafIndex, rel)
	}
	w.wmu.Unlock()
}

func (w *Watcher) watchCount() int {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return len(w.upper) + w.leaves.Len()
}

// Sync makes one full pass over the media store: it loads the index,
// scans every tree, copies what is new or changed (waiting for files still
// being written to be complete), records deletions, and returns when all
// of it is in the repository.
func Sync(ctx context.Context, r *repo.Repo, mediaStore string, opts Options) (Stats, error) {
	e := newEngine(r, mediaStore, opts)
	e.failFast = true
	if err := checkStore(e.store); err != nil {
		return Stats{}, err
	}
	if err := e.load(ctx); err != nil {
		return Stats{}, err
	}
	pctx, cancel := context.WithCancel(ctx)
	waitPipeline := e.pipeline(pctx)
	stop := func() Stats {
		cancel()
		waitPipeline()
		return e.Stats()
	}
	if err := e.scanTrees(pctx, nil); err != nil {
		return stop(), err
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	lastProgress := time.Now()
	for !e.idle() {
		select {
		case <-ctx.Done():
			return stop(), ctx.Err()
		case <-t.C:
		}
		if err := e.failure(); err != nil {
			return stop(), err
		}
		if e.opts.Progress != nil && time.Since(lastProgress) >= 500*time.Millisecond {
			lastProgress = time.Now()
			e.opts.Progress(e.Stats())
		}
	}
	st := stop()
	e.maybeCompact(ctx)
	if e.opts.Progress != nil {
		e.opts.Progress(st)
	}
	return st, nil
}
