package confsnap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
)

// Options configure a Watcher.
type Options struct {
	// Files are the files to hold (synapse.Homeserver.BackupFiles()).
	Files []synapse.File
	// Refresh, when set, is called at every check for the current list
	// (e.g. synapse.Load(...).BackupFiles()), so that files the
	// configuration starts or stops naming are followed. On error the
	// previous list is kept and the error logged once.
	Refresh func(ctx context.Context) ([]synapse.File, error)
	// Debounce is how long the watched files must be quiet after an event
	// before a check (default 1 s). A check happens at the latest 10
	// debounce periods after the first event, however busy the directory.
	Debounce time.Duration
	// RecheckInterval is the period of the checks made whatever inotify
	// says (default 5 min; negative disables them).
	RecheckInterval time.Duration
	// RetryInterval is how soon a check that failed on the repository is
	// tried again (default 30 s).
	RetryInterval time.Duration
	// Logger receives changes and warnings (never file contents); nil
	// discards them.
	Logger *slog.Logger
	// Now is the clock snapshots are dated by; nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Debounce <= 0 {
		o.Debounce = time.Second
	}
	if o.RecheckInterval == 0 {
		o.RecheckInterval = 5 * time.Minute
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Status is the Watcher's state for status pages and metrics.
type Status struct {
	// LastCheck is when the files were last compared with the repository
	// (the snapshot clock); zero before the first check.
	LastCheck time.Time
	// LastChange is the time of the newest stored snapshot batch, from
	// this run or an earlier one; zero when there is none.
	LastChange time.Time
	// Files is the number of files tracked; Missing how many of them do
	// not exist.
	Files, Missing int
	// Watches is the number of directories watched with inotify.
	Watches int
	// Checks and Stored count checks and stored batches since Run started.
	Checks, Stored uint64
	// LastError is the error of the last check (a repository error, or
	// files that could not be read), nil when it succeeded; LastErrorAt
	// is when the last error happened.
	LastError   error
	LastErrorAt time.Time
}

// Watcher keeps config snapshots up to date (see the package comment).
type Watcher struct {
	opts Options
	s    *snapshotter
	log  *slog.Logger

	mu    sync.Mutex
	st    Status
	files []synapse.File

	// Owned by Run's goroutine.
	fw         *fsnotify.Watcher
	watched    map[string]bool   // directories with a watch
	dirLogged  map[string]string // directory → last logged problem
	names      map[string]bool   // paths whose events matter
	refreshErr string

	// dropEvents makes the watcher ignore inotify events (tests).
	dropEvents atomic.Bool
}

// NewWatcher returns a Watcher that snapshots opts.Files into r.
func NewWatcher(r *repo.Repo, opts Options) *Watcher {
	opts = opts.withDefaults()
	log := opts.Logger
	return &Watcher{
		opts:      opts,
		s:         newSnapshotter(r, log, opts.Now),
		log:       log,
		files:     opts.Files,
		watched:   map[string]bool{},
		dirLogged: map[string]string{},
		names:     map[string]bool{},
	}
}

// Status returns the current status.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

// Run reads the index, makes a snapshot, and then keeps the snapshots up
// to date until ctx ends; it returns nil then. It returns an error only
// when the index cannot be read at start or a path of Options.Files is not
// absolute. Failed checks are logged,
// reported by Status and retried.
func (w *Watcher) Run(ctx context.Context) error {
	if _, err := trackedList(w.opts.Files); err != nil {
		return fmt.Errorf("config snapshots: %w", err)
	}
	if err := w.s.load(ctx); err != nil {
		return fmt.Errorf("config snapshots: %w", err)
	}
	w.mu.Lock()
	w.st.LastChange = w.s.lastTime
	w.mu.Unlock()

	fw, err := fsnotify.NewWatcher()
	if err != nil {
		w.log.Warn("inotify unavailable: config files are checked every recheck interval only", "interval", w.opts.RecheckInterval, "err", err)
	} else {
		w.fw = fw
		defer func() {
			fw.Close()
			w.fw = nil
			w.watched = map[string]bool{}
		}()
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.fw != nil {
		events, errs = w.fw.Events, w.fw.Errors
	}

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	pending := false
	var pendingSince time.Time
	schedule := func(d time.Duration, debounce bool) {
		now := time.Now()
		if !pending {
			pending, pendingSince = true, now
		}
		due := now.Add(d)
		if latest := pendingSince.Add(10 * w.opts.Debounce); debounce && due.After(latest) {
			due = latest
		}
		timer.Reset(time.Until(due))
	}
	check := func() {
		pending = false
		timer.Stop()
		if retry := w.check(ctx); retry > 0 && ctx.Err() == nil {
			schedule(retry, false)
		}
	}

	var tick <-chan time.Time
	if w.opts.RecheckInterval > 0 {
		t := time.NewTicker(w.opts.RecheckInterval)
		defer t.Stop()
		tick = t.C
	}
	check()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if w.relevant(ev) {
				schedule(w.opts.Debounce, true)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("inotify event queue overflowed; checking the config files")
				schedule(w.opts.Debounce, true)
				continue
			}
			w.log.Warn("inotify error", "err", err)
		case <-timer.C:
			check()
		case <-tick:
			check()
		}
	}
}

// check refreshes the list, the watches, and makes a snapshot. It returns
// how soon to check again (0: at the next event or tick).
func (w *Watcher) check(ctx context.Context) time.Duration {
	if w.opts.Refresh != nil {
		files, err := w.opts.Refresh(ctx)
		if err != nil {
			if msg := err.Error(); msg != w.refreshErr {
				w.refreshErr = msg
				w.log.Warn("cannot re-read the homeserver configuration; keeping the previous file list", "err", err)
			}
		} else {
			w.refreshErr = ""
			w.mu.Lock()
			w.files = files
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	files := w.files
	w.mu.Unlock()
	w.syncWatches(files)

	res, ferrs, err := w.s.snapshot(ctx, files)
	if ctx.Err() != nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.Checks++
	w.st.Watches = len(w.watched)
	if err != nil {
		w.st.LastError, w.st.LastErrorAt = err, w.opts.Now().UTC()
		w.log.Error("config snapshot failed; retrying", "in", w.opts.RetryInterval, "err", err)
		return w.opts.RetryInterval
	}
	w.st.LastCheck = res.Time
	w.st.Files, w.st.Missing = res.Files, res.Missing
	if res.Stored {
		w.st.Stored++
		w.st.LastChange = res.Time
	}
	w.st.LastError = errors.Join(ferrs...)
	if w.st.LastError != nil {
		w.st.LastErrorAt = res.Time
	}
	for _, e := range ferrs {
		if errors.Is(e, errChanging) {
			return w.opts.Debounce
		}
	}
	return 0
}

// syncWatches watches the directories of files (and of their symlink
// targets) and drops watches no longer needed.
func (w *Watcher) syncWatches(files []synapse.File) {
	want := map[string]bool{}
	names := map[string]bool{}
	for _, f := range files {
		p := filepath.Clean(f.Path)
		names[p] = true
		want[filepath.Dir(p)] = true
		if t, err := filepath.EvalSymlinks(p); err == nil && t != p {
			if !filepath.IsAbs(t) {
				t, _ = filepath.Abs(t)
			}
			names[t] = true
			want[filepath.Dir(t)] = true
		}
	}
	w.names = names
	if w.fw == nil {
		return
	}
	for d := range w.watched {
		if !want[d] {
			_ = w.fw.Remove(d)
			delete(w.watched, d)
		}
	}
	for d := range want {
		if w.watched[d] {
			continue
		}
		err := w.fw.Add(d)
		if err == nil {
			w.watched[d] = true
			if _, ok := w.dirLogged[d]; ok {
				delete(w.dirLogged, d)
				w.log.Info("watching config directory again", "dir", d)
			}
			continue
		}
		msg := err.Error()
		if w.dirLogged[d] == msg {
			continue
		}
		w.dirLogged[d] = msg
		if errors.Is(err, fs.ErrNotExist) {
			w.log.Warn("config directory does not exist; checked again every recheck interval", "dir", d, "interval", w.opts.RecheckInterval)
		} else {
			w.log.Warn("cannot watch config directory; checked every recheck interval", "dir", d, "interval", w.opts.RecheckInterval, "err", err)
		}
	}
}

// relevant says whether an event may concern a tracked file.
func (w *Watcher) relevant(ev fsnotify.Event) bool {
	if w.dropEvents.Load() {
		return false
	}
	name := filepath.Clean(ev.Name)
	if w.names[name] {
		return true
	}
	if w.watched[name] && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
		// The directory itself went away: its watch is gone or stale.
		_ = w.fw.Remove(name)
		delete(w.watched, name)
		return true
	}
	base := filepath.Base(name)
	if strings.HasPrefix(base, "..") {
		return true // Kubernetes' atomic writer swaps a ..data symlink
	}
	// A new file of a conf.d directory (Synapse's *.yaml, PostgreSQL's
	// include_dir *.conf): the refreshed list may name it.
	return w.opts.Refresh != nil && (strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".conf"))
}
