package confsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/internal/wait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestRepo(t *testing.T) *repo.Repo {
	t.Helper()
	return repotest.New(t, t.TempDir(), repo.Options{})
}

var waitFor = wait.For

// clock is a settable clock for Snapshot.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// logSink collects log output (to check it never holds secrets) and
// forwards it to the test log.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
	t   *testing.T
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	s.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (s *logSink) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.buf.String() }

func newLog(t *testing.T) (*slog.Logger, *logSink) {
	s := &logSink{t: t}
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug})), s
}

// homeserver is a fake Synapse configuration on disk.
type homeserver struct {
	root  string // the test's temp dir
	files []synapse.File
}

const (
	secretPassword = "hunter2-database-password"
	secretForm     = "form-secret-c0ffee"
)

func newHomeserver(t *testing.T) *homeserver {
	root := t.TempDir()
	etc := filepath.Join(root, "etc", "matrix-synapse")
	h := &homeserver{root: root}
	add := func(rel, role string, secret bool, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		h.files = append(h.files, synapse.File{Path: p, Role: role, Secret: secret})
	}
	add("etc/matrix-synapse/homeserver.yaml", "config", true, "server_name: example.com\n# the password\ndatabase: {name: psycopg2, args: {password: "+secretPassword+"}}\n")
	add("etc/matrix-synapse/conf.d/extra.yaml", "config", true, "enable_registration: false\n")
	add("etc/matrix-synapse/log.yaml", "log_config", false, "version: 1\n")
	add("etc/matrix-synapse/example.com.signing.key", "signing_key", true, "ed25519 a_abcd "+strings.Repeat("A", 43)+"\n")
	add("run/secrets/form_secret", "secret:form_secret_path", true, secretForm+"\n")
	_ = etc
	return h
}

func (h *homeserver) path(rel string) string { return filepath.Join(h.root, rel) }

// replaceByRename writes content the way editors and config managers do:
// a temporary file renamed over the original.
func replaceByRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// contents reads the current content of every tracked file (missing ones
// are left out).
func (h *homeserver) contents(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range h.files {
		b, err := os.ReadFile(f.Path)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		m[f.Path] = string(b)
	}
	return m
}

// checkRestore restores as of at into a new directory and checks that it
// holds exactly want (original path → content), with the right modes and
// manifest.
func checkRestore(t *testing.T, r *repo.Repo, h *homeserver, at time.Time, want map[string]string) Manifest {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "restore")
	m, err := Restore(context.Background(), r, at, dir)
	if err != nil {
		t.Fatalf("restore at %s: %v", at, err)
	}
	disk, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, disk); diff != "" {
		t.Errorf("synbak-manifest.json differs from the returned manifest (-returned +file):\n%s", diff)
	}
	secret := map[string]bool{}
	for _, f := range h.files {
		secret[f.Path] = f.Secret
	}
	got := map[string]string{}
	for _, f := range m.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.File))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got[f.Path] = string(b)
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(b)) != f.Size {
			t.Errorf("%s: manifest sha256/size do not match the file", f.File)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		// The recorded mode (0640); as root also the recorded owner; a
		// secret restored by another user is its owner's alone.
		wantMode := fs.FileMode(0o640)
		if secret[f.Path] && os.Geteuid() != 0 {
			wantMode = 0o600
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && ok && (int(st.Uid) != f.UID || int(st.Gid) != f.GID) {
			t.Errorf("%s: owner %d:%d, recorded %d:%d", f.File, st.Uid, st.Gid, f.UID, f.GID)
		}
		if fi.Mode().Perm() != wantMode || f.Secret != secret[f.Path] {
			t.Errorf("%s: mode %v secret %v, want %v %v", f.File, fi.Mode().Perm(), f.Secret, wantMode, secret[f.Path])
		}
		if f.Mode != "0640" {
			t.Errorf("%s: recorded original mode %q, want 0640", f.File, f.Mode)
		}
		if strings.TrimPrefix(f.Path, "/") != f.File {
			t.Errorf("%s written as %s, root %s", f.Path, f.File, m.Root)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("restore at %s (-want +got):\n%s", at.Format(time.RFC3339Nano), diff)
	}
	// Nothing else in the directory.
	n := 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(m.Files)+1 {
		t.Errorf("restore directory holds %d files, want %d and the manifest", n, len(m.Files))
	}
	return m
}

func countObjects(t *testing.T, r *repo.Repo, prefix string) int {
	t.Helper()
	n := 0
	if err := r.List(context.Background(), prefix, func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSnapshotSequenceAndRestore(t *testing.T) {
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHomeserver(t)
	log, sink := newLog(t)
	clk := &clock{}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	snap := func(at time.Time, wantChanged int) Result {
		t.Helper()
		clk.set(at)
		res, err := Snapshot(ctx, r, h.files, log, clk.now)
		if err != nil {
			t.Fatalf("snapshot at %s: %v", at, err)
		}
		if res.Changed != wantChanged || res.Stored != (wantChanged > 0) {
			t.Fatalf("snapshot at %s: %d changed (stored %v), want %d", at, res.Changed, res.Stored, wantChanged)
		}
		return res
	}
	states := map[time.Time]map[string]string{}

	t1 := t0.Add(time.Hour)
	snap(t1, 5)
	states[t1] = h.contents(t)
	snap(t1.Add(time.Minute), 0) // nothing changed: nothing stored

	t2 := t1.Add(time.Hour)
	replaceByRename(t, h.path("etc/matrix-synapse/homeserver.yaml"), "server_name: example.com\nsuppress_key_server_warning: true\n")
	snap(t2, 1)
	states[t2] = h.contents(t)

	t3 := t2.Add(time.Hour)
	if err := os.WriteFile(h.path("etc/matrix-synapse/log.yaml"), []byte("version: 1\nroot: {level: INFO}\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	snap(t3, 1)
	states[t3] = h.contents(t)

	t4 := t3.Add(time.Hour)
	if err := os.Remove(h.path("run/secrets/form_secret")); err != nil {
		t.Fatal(err)
	}
	snap(t4, 1) // recorded missing
	states[t4] = h.contents(t)
	snap(t4.Add(time.Minute), 0) // still missing: not recorded again

	t5 := t4.Add(time.Hour)
	if err := os.WriteFile(h.path("run/secrets/form_secret"), []byte("another secret\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	// Back to an earlier content: a new record, no new object.
	replaceByRename(t, h.path("etc/matrix-synapse/log.yaml"), "version: 1\n")
	res := snap(t5, 2)
	states[t5] = h.contents(t)
	if res.Files != 5 || res.Missing != 0 {
		t.Errorf("result %+v", res)
	}

	if n := countObjects(t, r, "config/objects/"); n != 8 {
		t.Errorf("%d objects stored, want 8 (one per distinct content)", n)
	}
	if n := countObjects(t, r, "config/index/"); n != 5 {
		t.Errorf("%d index batches, want 5", n)
	}

	for _, at := range []time.Time{t1, t2, t3, t4, t5} {
		m := checkRestore(t, r, h, at, states[at])
		if !m.SnapshotTime.Equal(at) {
			t.Errorf("restore at %s: snapshot time %s", at, m.SnapshotTime)
		}
		// Any time until the next snapshot gives the same files.
		checkRestore(t, r, h, at.Add(59*time.Minute), states[at])
	}
	m := checkRestore(t, r, h, time.Time{}, states[t5])
	if m.Root != "/" {
		t.Errorf("root %s, want /", m.Root)
	}
	m = checkRestore(t, r, h, t4, states[t4])
	if len(m.Missing) != 1 || m.Missing[0].Path != h.path("run/secrets/form_secret") || !m.Missing[0].SnapshotTime.Equal(t4) {
		t.Errorf("missing at t4: %+v", m.Missing)
	}
	for _, f := range m.Files {
		if f.Path == h.path("etc/matrix-synapse/homeserver.yaml") && !f.SnapshotTime.Equal(t2) {
			t.Errorf("homeserver.yaml as of t4 was first seen at %s, want %s", f.SnapshotTime, t2)
		}
	}

	// Before the first snapshot: a clear error, nothing created.
	dir := filepath.Join(t.TempDir(), "restore")
	_, err := Restore(ctx, r, t0, dir)
	if !IsNoSnapshot(err) || !strings.Contains(err.Error(), t1.Format(time.RFC3339)) {
		t.Errorf("restore before the first snapshot: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("restore before the first snapshot created %s", dir)
	}
	if _, err := Restore(ctx, newTestRepo(t), time.Time{}, dir); !IsNoSnapshot(err) {
		t.Errorf("restore from an empty repository: %v", err)
	}

	for _, s := range []string{secretPassword, secretForm, "another secret"} {
		if strings.Contains(sink.String(), s) {
			t.Errorf("the log holds the secret %q", s)
		}
	}
}

func TestSnapshotListChangesAndUnreadable(t *testing.T) {
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHomeserver(t)
	log, _ := newLog(t)
	clk := &clock{}
	t1 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk.set(t1)
	if _, err := Snapshot(ctx, r, h.files, log, clk.now); err != nil {
		t.Fatal(err)
	}
	all := h.contents(t)

	// The configuration stops naming the log config: a batch with the
	// shorter list, and a restore after it does not write the file.
	t2 := t1.Add(time.Hour)
	clk.set(t2)
	fewer := append([]synapse.File{}, h.files[:2]...)
	fewer = append(fewer, h.files[3:]...)
	res, err := Snapshot(ctx, r, fewer, log, clk.now)
	if err != nil || !res.Stored || res.Changed != 0 {
		t.Fatalf("snapshot with a shorter list: %+v, %v", res, err)
	}
	want := h.contents(t)
	delete(want, h.path("etc/matrix-synapse/log.yaml"))
	checkRestore(t, r, h, t2, want)
	checkRestore(t, r, h, t1, all)

	// A file that cannot be read (a directory where a file should be) is
	// an error, not a deletion.
	t3 := t2.Add(time.Hour)
	clk.set(t3)
	p := h.path("run/secrets/form_secret")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	res, err = Snapshot(ctx, r, fewer, log, clk.now)
	if err == nil || !strings.Contains(err.Error(), "not a regular file") || res.Stored {
		t.Fatalf("snapshot with an unreadable file: %+v, %v", res, err)
	}
	checkRestore(t, r, h, t3, want)
}

func TestRestoreRefusesNonEmptyDir(t *testing.T) {
	ctx := context.Background()
	r := newTestRepo(t)
	h := newHomeserver(t)
	if _, err := Snapshot(ctx, r, h.files, nil, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keep := filepath.Join(dir, "keep.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(ctx, r, time.Time{}, dir)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a non-empty directory: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory changed: %v", entries)
	}
	if b, _ := os.ReadFile(keep); string(b) != "mine" {
		t.Errorf("keep.txt changed")
	}
	if _, err := Restore(ctx, r, time.Time{}, keep); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("restore into a file: %v", err)
	}
	// An existing empty directory is fine.
	empty := t.TempDir()
	if _, err := Restore(ctx, r, time.Time{}, empty); err != nil {
		t.Errorf("restore into an empty directory: %v", err)
	}
}

// runWatcher starts w and returns a function that stops it and waits for Run.
func runWatcher(t *testing.T, w *Watcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// newest returns the path → sha256 of the newest snapshot (missing: "").
func newest(t *testing.T, r *repo.Repo) (State, map[string]string) {
	t.Helper()
	st, err := StateAt(context.Background(), r, time.Time{})
	if err != nil {
		if IsNoSnapshot(err) {
			return State{}, nil
		}
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range st.Files {
		m[f.Path] = f.SHA256
	}
	return st, m
}

func shaOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestWatcherFollowsChanges(t *testing.T) {
	r := newTestRepo(t)
	h := newHomeserver(t)
	log, sink := newLog(t)
	w := NewWatcher(r, Options{Files: h.files, Debounce: 50 * time.Millisecond, RecheckInterval: time.Hour, Logger: log})
	runWatcher(t, w)
	waitFor(t, 10*time.Second, "the first snapshot", func() bool { return w.Status().Checks >= 1 })
	st := w.Status()
	if st.Files != 5 || st.Stored != 1 || st.LastError != nil || st.Watches != 3 || st.LastCheck.IsZero() {
		t.Fatalf("status after the first snapshot: %+v", st)
	}
	states := map[time.Time]map[string]string{}
	s, _ := newest(t, r)
	states[s.Time] = h.contents(t)

	// step changes the files, waits for the watcher to record it, and
	// remembers the state of that snapshot.
	step := func(what string, change func(), path, content string) {
		t.Helper()
		before := w.Status().Stored
		change()
		waitFor(t, 10*time.Second, what, func() bool {
			_, m := newest(t, r)
			return m[path] == content
		})
		waitFor(t, 5*time.Second, "status", func() bool { return w.Status().Stored > before })
		s, _ := newest(t, r)
		states[s.Time] = h.contents(t)
	}
	hs := h.path("etc/matrix-synapse/homeserver.yaml")
	step("replace by rename", func() { replaceByRename(t, hs, "server_name: example.com\nv: 2\n") }, hs, shaOf("server_name: example.com\nv: 2\n"))
	step("a second rename", func() { replaceByRename(t, hs, "server_name: example.com\nv: 3\n") }, hs, shaOf("server_name: example.com\nv: 3\n"))
	lg := h.path("etc/matrix-synapse/log.yaml")
	step("write in place", func() {
		if err := os.WriteFile(lg, []byte("version: 1\nchanged: true\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}, lg, shaOf("version: 1\nchanged: true\n"))
	fs := h.path("run/secrets/form_secret")
	step("delete", func() {
		if err := os.Remove(fs); err != nil {
			t.Fatal(err)
		}
	}, fs, "")
	step("create again", func() {
		if err := os.WriteFile(fs, []byte("new form secret\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}, fs, shaOf("new form secret\n"))
	if st := w.Status(); st.Missing != 0 || st.LastError != nil {
		t.Errorf("status: %+v", st)
	}

	for at, want := range states {
		checkRestore(t, r, h, at, want)
	}
	if strings.Contains(sink.String(), secretPassword) || strings.Contains(sink.String(), "new form secret") {
		t.Error("the log holds a secret")
	}
}

func TestWatcherRestartLosesNothingStoresNothingTwice(t *testing.T) {
	r := newTestRepo(t)
	h := newHomeserver(t)
	log, _ := newLog(t)
	opts := Options{Files: h.files, Debounce: 50 * time.Millisecond, RecheckInterval: time.Hour, Logger: log}

	w := NewWatcher(r, opts)
	stop := runWatcher(t, w)
	waitFor(t, 10*time.Second, "the first snapshot", func() bool { return w.Status().Checks >= 1 })
	stop()
	batches, objects := countObjects(t, r, "config/index/"), countObjects(t, r, "config/objects/")
	if batches != 1 || objects != 5 {
		t.Fatalf("after the first run: %d batches, %d objects", batches, objects)
	}

	// Nothing changed: a restart stores nothing.
	w = NewWatcher(r, opts)
	stop = runWatcher(t, w)
	waitFor(t, 10*time.Second, "the start-up check", func() bool { return w.Status().Checks >= 1 })
	if st := w.Status(); st.Stored != 0 || st.LastChange.IsZero() {
		t.Errorf("status after an idle restart: %+v", st)
	}
	stop()
	if b, o := countObjects(t, r, "config/index/"), countObjects(t, r, "config/objects/"); b != batches || o != objects {
		t.Errorf("an idle restart stored something: %d batches, %d objects", b, o)
	}

	// Changes made while it was not running are found at start.
	hs := h.path("etc/matrix-synapse/homeserver.yaml")
	replaceByRename(t, hs, "server_name: example.com\nwhile_down: true\n")
	if err := os.Remove(h.path("etc/matrix-synapse/log.yaml")); err != nil {
		t.Fatal(err)
	}
	w = NewWatcher(r, opts)
	stop = runWatcher(t, w)
	waitFor(t, 10*time.Second, "the start-up check", func() bool { return w.Status().Checks >= 1 })
	stop()
	if st := w.Status(); st.Stored != 1 || st.Missing != 1 {
		t.Errorf("status after a restart with changes: %+v", st)
	}
	if b, o := countObjects(t, r, "config/index/"), countObjects(t, r, "config/objects/"); b != batches+1 || o != objects+1 {
		t.Errorf("after a restart with changes: %d batches, %d objects, want %d and %d", b, o, batches+1, objects+1)
	}
	checkRestore(t, r, h, time.Time{}, h.contents(t))
}

func TestWatcherMissingDirectoryAndLostEvents(t *testing.T) {
	r := newTestRepo(t)
	h := newHomeserver(t)
	later := h.path("etc/later/app.yaml")
	files := append(h.files, synapse.File{Path: later, Role: "appservice", Secret: true})
	log, sink := newLog(t)
	w := NewWatcher(r, Options{Files: files, Debounce: 50 * time.Millisecond, RecheckInterval: 200 * time.Millisecond, Logger: log})
	runWatcher(t, w)
	waitFor(t, 10*time.Second, "the first snapshot", func() bool { return w.Status().Checks >= 1 })
	if st := w.Status(); st.Missing != 1 || st.Files != 6 {
		t.Fatalf("status: %+v", st)
	}
	waitFor(t, 10*time.Second, "a few rechecks", func() bool { return w.Status().Checks >= 4 })
	if n := strings.Count(sink.String(), "config directory does not exist"); n != 1 {
		t.Errorf("the missing directory was logged %d times, want once", n)
	}

	// The directory appears: found by a recheck, then watched.
	if err := os.MkdirAll(filepath.Dir(later), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(later, []byte("id: bridge\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new directory's file", func() bool {
		_, m := newest(t, r)
		return m[later] == shaOf("id: bridge\n")
	})
	waitFor(t, 10*time.Second, "the new directory's watch", func() bool { return w.Status().Watches == 4 })

	// Lost events: the periodic recheck still finds the change.
	w.dropEvents.Store(true)
	hs := h.path("etc/matrix-synapse/homeserver.yaml")
	replaceByRename(t, hs, "server_name: example.com\nunnoticed: true\n")
	waitFor(t, 10*time.Second, "the recheck", func() bool {
		_, m := newest(t, r)
		return m[hs] == shaOf("server_name: example.com\nunnoticed: true\n")
	})
}

func TestWatcherRefresh(t *testing.T) {
	r := newTestRepo(t)
	h := newHomeserver(t)
	log, _ := newLog(t)
	var mu sync.Mutex
	list := h.files[:1]
	refresh := func(context.Context) ([]synapse.File, error) {
		mu.Lock()
		defer mu.Unlock()
		return list, nil
	}
	w := NewWatcher(r, Options{Refresh: refresh, Debounce: 50 * time.Millisecond, RecheckInterval: time.Hour, Logger: log})
	runWatcher(t, w)
	waitFor(t, 10*time.Second, "the first snapshot", func() bool { return w.Status().Checks >= 1 })
	if st := w.Status(); st.Files != 1 {
		t.Fatalf("status: %+v", st)
	}
	// The config now names more files; an edit of homeserver.yaml (as
	// the change that names them would be) triggers the check.
	mu.Lock()
	list = h.files
	mu.Unlock()
	replaceByRename(t, h.files[0].Path, "server_name: example.com\napp_service_config_files: []\n")
	waitFor(t, 10*time.Second, "the longer list", func() bool {
		st, _ := newest(t, r)
		return len(st.Files) == 5
	})
	checkRestore(t, r, h, time.Time{}, h.contents(t))
}

func TestWatcherSymlinkSwap(t *testing.T) {
	// Kubernetes mounts a ConfigMap as name -> ..data/name, ..data ->
	// ..<timestamp>/, and updates it by swapping the ..data symlink.
	r := newTestRepo(t)
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "homeserver.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01", "server_name: one\n")
	p := filepath.Join(dir, "homeserver.yaml")
	if err := os.Symlink("..data/homeserver.yaml", p); err != nil {
		t.Fatal(err)
	}
	log, _ := newLog(t)
	w := NewWatcher(r, Options{Files: []synapse.File{{Path: p, Role: "config", Secret: true}}, Debounce: 50 * time.Millisecond, RecheckInterval: time.Hour, Logger: log})
	runWatcher(t, w)
	waitFor(t, 10*time.Second, "the first snapshot", func() bool { return w.Status().Checks >= 1 })
	version("..2026_02", "server_name: two\n")
	waitFor(t, 10*time.Second, "the swapped content", func() bool {
		_, m := newest(t, r)
		return m[p] == shaOf("server_name: two\n")
	})
	// An in-place write in the target directory is seen too.
	if err := os.WriteFile(filepath.Join(dir, "..2026_02", "homeserver.yaml"), []byte("server_name: three\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the target's change", func() bool {
		_, m := newest(t, r)
		return m[p] == shaOf("server_name: three\n")
	})
}
