package mediawatch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/wait"
)

const testQuiet = 200 * time.Millisecond

func newTestRepo(t *testing.T) *repo.Repo {
	t.Helper()
	return repotest.New(t, t.TempDir(), repo.Options{})
}

func testOptions(t *testing.T) Options {
	return Options{QuietPeriod: testQuiet, BatchInterval: 100 * time.Millisecond, Workers: 16, Logger: pgtest.Logger(t)}
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func mediaID(rng *rand.Rand) string {
	b := make([]byte, 24)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

func contentPath(id string) string { return "local_content/" + id[:2] + "/" + id[2:4] + "/" + id[4:] }
func thumbDir(id string) string    { return "local_thumbnails/" + id[:2] + "/" + id[2:4] + "/" + id[4:] }

// writeLikeSynapse writes content to rel the way Synapse does: makedirs,
// open (an empty file appears), several writes with small pauses, close.
func writeLikeSynapse(t *testing.T, store, rel string, content []byte) {
	t.Helper()
	p := filepath.Join(store, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Error(err)
		return
	}
	f, err := os.Create(p)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	chunk := max(len(content)/4, 1)
	for off := 0; off < len(content); off += chunk {
		if _, err := f.Write(content[off:min(off+chunk, len(content))]); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// randomContent returns n random bytes behind a PNG signature (media are
// mostly images, stored without compression).
func randomContent(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	copy(b, "\x89PNG\r\n\x1a\n")
	return b[:n]
}

var waitFor = wait.For

func readEvents(t *testing.T, r *repo.Repo) []Event {
	t.Helper()
	var evs []Event
	if _, err := ReadIndex(context.Background(), r, func(ev Event) error {
		evs = append(evs, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return evs
}

// current returns the newest event per path.
func current(evs []Event) map[string]Event {
	m := map[string]Event{}
	for _, ev := range evs {
		m[ev.Path] = ev
	}
	return m
}

func hasAll(t *testing.T, r *repo.Repo, want map[string][]byte) func() bool {
	return func() bool {
		cur := current(readEvents(t, r))
		for p, c := range want {
			ev, ok := cur[p]
			if !ok || ev.Event != Added || ev.Size != int64(len(c)) {
				return false
			}
		}
		return true
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// checkRepo checks that the index names only paths of want, each added
// exactly once, and that every object holds the right content.
func checkRepo(t *testing.T, r *repo.Repo, want map[string][]byte) {
	t.Helper()
	evs := readEvents(t, r)
	added := map[string]int{}
	for _, ev := range evs {
		if ev.Event == Added {
			added[ev.Path]++
		}
		if _, ok := want[ev.Path]; !ok {
			t.Errorf("index has %s %s, which was not expected", ev.Event, ev.Path)
		}
	}
	cur := current(evs)
	for p, c := range want {
		if added[p] != 1 {
			t.Errorf("%s: %d added events, want 1", p, added[p])
		}
		ev := cur[p]
		if ev.SHA256 != sha(c) || ev.Size != int64(len(c)) {
			t.Errorf("%s: index says sha256 %s size %d, want %s %d", p, ev.SHA256, ev.Size, sha(c), len(c))
			continue
		}
		rd, err := r.Get(context.Background(), ObjectName(ev.SHA256))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		got, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(got, c) {
			t.Errorf("%s: object content differs (err %v)", p, err)
		}
	}
}

type running struct {
	w      *Watcher
	cancel context.CancelFunc
	done   chan error
}

func startWatcher(t *testing.T, r *repo.Repo, store string, opts Options) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := New(r, store, opts)
	rw := &running{w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	t.Cleanup(func() { rw.stop(t) })
	waitFor(t, 10*time.Second, "the initial scan", func() bool { return w.Stats().ScanDone })
	return rw
}

func (rw *running) stop(t *testing.T) {
	t.Helper()
	if rw.cancel == nil {
		return
	}
	rw.cancel()
	rw.cancel = nil
	if err := <-rw.done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// writeExcluded writes files into every tree that must not be backed up.
func writeExcluded(t *testing.T, store string, rng *rand.Rand) {
	for _, rel := range []string{
		"remote_content/example.org/ab/cd/" + mediaID(rng),
		"remote_thumbnail/example.org/ab/cd/" + mediaID(rng) + "/32-32-image-png-crop",
		"url_cache/2026-11-25/" + mediaID(rng),
		"url_cache_thumbnails/2026-11-25/" + mediaID(rng) + "/32-32-image-png-crop",
	} {
		writeLikeSynapse(t, store, rel, randomContent(rng, 100))
	}
}

func TestWatchConcurrentUploads(t *testing.T) {
	t.Parallel()
	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string][]byte{}
	// Present before the watcher starts: found by the initial scan.
	for range 10 {
		p, c := contentPath(mediaID(rng)), randomContent(rng, 1000+rng.IntN(5000))
		writeLikeSynapse(t, store, p, c)
		want[p] = c
	}
	writeExcluded(t, store, rng)
	startWatcher(t, r, store, testOptions(t))

	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		seed := uint64(g + 10)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, seed))
			writeExcluded(t, store, rng)
			for range 10 {
				id := mediaID(rng)
				c := randomContent(rng, 1+rng.IntN(20000))
				writeLikeSynapse(t, store, contentPath(id), c)
				got := map[string][]byte{contentPath(id): c}
				for _, th := range []string{"32-32-image-png-crop", "320-240-image-png-scale"} {
					tc := randomContent(rng, 100+rng.IntN(2000))
					writeLikeSynapse(t, store, thumbDir(id)+"/"+th, tc)
					got[thumbDir(id)+"/"+th] = tc
				}
				mu.Lock()
				for k, v := range got {
					want[k] = v
				}
				mu.Unlock()
			}
		})
	}
	t.Logf("writing started")
	wg.Wait()
	start := time.Now()
	waitFor(t, 30*time.Second, "all uploads in the index", hasAll(t, r, want))
	t.Logf("all in the index %s after the last write", time.Since(start))
	checkRepo(t, r, want)
}

func TestOverflowAndDroppedEvents(t *testing.T) {
	t.Parallel()
	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(3, 4))
	opts := testOptions(t)
	opts.ScanInterval = -1
	rw := startWatcher(t, r, store, opts)
	want := map[string][]byte{}
	gone := contentPath(mediaID(rng))
	goneContent := randomContent(rng, 500)
	writeLikeSynapse(t, store, gone, goneContent)
	waitFor(t, 10*time.Second, "the first upload", hasAll(t, r, map[string][]byte{gone: goneContent}))

	// The kernel drops everything from here; then reports an overflow.
	rw.w.dropEvents.Store(true)
	for range 25 {
		id := mediaID(rng)
		c := randomContent(rng, 1+rng.IntN(20000))
		writeLikeSynapse(t, store, contentPath(id), c)
		want[contentPath(id)] = c
		tc := randomContent(rng, 300)
		writeLikeSynapse(t, store, thumbDir(id)+"/32-32-image-png-crop", tc)
		want[thumbDir(id)+"/32-32-image-png-crop"] = tc
	}
	if err := os.Remove(filepath.Join(store, gone)); err != nil {
		t.Fatal(err)
	}
	rw.w.dropEvents.Store(false)
	rw.w.handleError(fsnotify.ErrEventOverflow)

	waitFor(t, 20*time.Second, "all files written while events were lost", hasAll(t, r, want))
	waitFor(t, 10*time.Second, "the deletion", func() bool { return current(readEvents(t, r))[gone].Event == Deleted })
	want[gone] = goneContent
	checkRepo(t, r, want)

	// After the rescan the new leaf directories are watched again: a file
	// added to one of them is noticed by its event alone (no periodic scan).
	var p string
	for k := range want {
		if strings.HasPrefix(k, "local_thumbnails/") {
			p = filepath.ToSlash(filepath.Join(filepath.Dir(k), "96-96-image-png-crop"))
			break
		}
	}
	c := randomContent(rng, 700)
	writeLikeSynapse(t, store, p, c)
	waitFor(t, 10*time.Second, "a file in a leaf directory watched after the overflow", hasAll(t, r, map[string][]byte{p: c}))
}

func TestRestartNeitherMissesNorDuplicates(t *testing.T) {
	t.Parallel()
	store, r := t.TempDir(), newTestRepo(t)
	opts := testOptions(t)
	opts.ScanInterval = -1
	first := startWatcher(t, r, store, opts)

	want := map[string][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	stopWriting := make(chan struct{})
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(7, 8))
		for {
			select {
			case <-stopWriting:
				return
			default:
			}
			id := mediaID(rng)
			c := randomContent(rng, 1+rng.IntN(30000))
			writeLikeSynapse(t, store, contentPath(id), c)
			mu.Lock()
			want[contentPath(id)] = c
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	})
	countAdded := func() int {
		n := 0
		for _, ev := range readEvents(t, r) {
			if ev.Event == Added {
				n++
			}
		}
		return n
	}
	waitFor(t, 20*time.Second, "some uploads backed up", func() bool { return countAdded() >= 20 })
	first.stop(t)
	// Uploads go on while nothing watches; then a new watcher starts.
	mu.Lock()
	n := len(want)
	mu.Unlock()
	waitFor(t, 10*time.Second, "uploads while stopped", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(want) >= n+20
	})
	startWatcher(t, r, store, opts)
	mu.Lock()
	n = len(want)
	mu.Unlock()
	waitFor(t, 10*time.Second, "uploads after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(want) >= n+20
	})
	close(stopWriting)
	wg.Wait()
	waitFor(t, 20*time.Second, "every upload in the index", hasAll(t, r, want))
	checkRepo(t, r, want)
}

// afterNow returns a time t with every file written from now on having a
// modification time after t (file times use a coarse clock).
func afterNow(t *testing.T) time.Time {
	t.Helper()
	at := time.Now()
	probe := filepath.Join(t.TempDir(), "probe")
	waitFor(t, 5*time.Second, "the file clock to pass now", func() bool {
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(probe)
		return err == nil && fi.ModTime().After(at)
	})
	return at
}

func syncOnce(t *testing.T, r *repo.Repo, store string, opts Options) Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := Sync(ctx, r, store, opts)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return st
}

func restoredSet(t *testing.T, r *repo.Repo, at time.Time) map[string][]byte {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "media")
	rep, err := Restore(context.Background(), r, at, dir)
	if err != nil {
		t.Fatalf("Restore as of %s: %v", at, err)
	}
	got := map[string][]byte{}
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != len(got) {
		t.Errorf("report says %d files, %d restored", rep.Files, len(got))
	}
	return got
}

func sameSet(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	var g, w []string
	for p := range got {
		g = append(g, p)
	}
	for p := range want {
		w = append(w, p)
	}
	sort.Strings(g)
	sort.Strings(w)
	if fmt.Sprint(g) != fmt.Sprint(w) {
		t.Errorf("%s: restored %v, want %v", what, g, w)
		return
	}
	for p := range want {
		if !bytes.Equal(got[p], want[p]) {
			t.Errorf("%s: %s content differs", what, p)
		}
	}
}

func TestRestoreAsOf(t *testing.T) {
	t.Parallel()
	store, r := t.TempDir(), newTestRepo(t)
	rng := rand.New(rand.NewPCG(9, 10))
	opts := testOptions(t)
	t0 := afterNow(t)
	a, ac := contentPath(mediaID(rng)), randomContent(rng, 3000)
	c, cc := contentPath(mediaID(rng)), randomContent(rng, 2000)
	writeLikeSynapse(t, store, a, ac)
	writeLikeSynapse(t, store, c, cc)
	syncOnce(t, r, store, opts)
	t1 := afterNow(t)
	b, bc := contentPath(mediaID(rng)), randomContent(rng, 4000)
	writeLikeSynapse(t, store, b, bc)
	syncOnce(t, r, store, opts)
	t2 := afterNow(t)
	if err := os.Remove(filepath.Join(store, c)); err != nil {
		t.Fatal(err)
	}
	st := syncOnce(t, r, store, opts)
	if st.Deleted != 1 || st.Added != 0 || st.Uploaded != 0 {
		t.Errorf("third sync: %+v, want one deletion and nothing copied", st)
	}
	t3 := afterNow(t)

	sameSet(t, "before the first upload", restoredSet(t, r, t0), map[string][]byte{})
	sameSet(t, "between the uploads", restoredSet(t, r, t1), map[string][]byte{a: ac, c: cc})
	sameSet(t, "after both, before the deletion", restoredSet(t, r, t2), map[string][]byte{a: ac, b: bc, c: cc})
	sameSet(t, "after the deletion", restoredSet(t, r, t3), map[string][]byte{a: ac, b: bc})
	// The deleted file's object stays in the repository.
	if _, err := r.Verify(context.Background(), ObjectName(sha(cc))); err != nil {
		t.Errorf("deleted file's object: %v", err)
	}

	// A non-empty target is refused.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), r, t3, dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore into a non-empty directory: %v", err)
	}
	// Restored files carry their modification times.
	rdir := filepath.Join(t.TempDir(), "m")
	if _, err := Restore(context.Background(), r, time.Time{}, rdir); err != nil {
		t.Fatal(err)
	}
	fi1, err1 := os.Stat(filepath.Join(store, a))
	fi2, err2 := os.Stat(filepath.Join(rdir, a))
	if err1 != nil || err2 != nil || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Errorf("mtime not restored: %v %v", err1, err2)
	}
}

func TestRestoreDetectsCorruption(t *testing.T) {
	t.Parallel()
	store, repoDir := t.TempDir(), t.TempDir()
	b, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(context.Background(), b, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("not an image "), 1000)
	p := contentPath(mediaID(rand.New(rand.NewPCG(1, 1))))
	writeLikeSynapse(t, store, p, content)
	syncOnce(t, r, store, testOptions(t))
	obj := filepath.Join(repoDir, filepath.FromSlash(ObjectName(sha(content))))
	raw, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(obj, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), r, time.Time{}, filepath.Join(t.TempDir(), "m")); err == nil {
		t.Error("restore of a damaged object succeeded")
	}
}

func TestSyncTreesAndIdempotence(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(11, 12))
	store := t.TempDir()
	id := mediaID(rng)
	cc, tc := randomContent(rng, 5000), randomContent(rng, 500)
	writeLikeSynapse(t, store, contentPath(id), cc)
	writeLikeSynapse(t, store, thumbDir(id)+"/32-32-image-png-crop", tc)
	writeExcluded(t, store, rng)

	t.Run("dynamic thumbnails", func(t *testing.T) {
		r := newTestRepo(t)
		opts := testOptions(t)
		opts.DynamicThumbnails = true
		syncOnce(t, r, store, opts)
		checkRepo(t, r, map[string][]byte{contentPath(id): cc})
	})
	t.Run("default", func(t *testing.T) {
		r := newTestRepo(t)
		want := map[string][]byte{contentPath(id): cc, thumbDir(id) + "/32-32-image-png-crop": tc}
		var progress int
		opts := testOptions(t)
		opts.Progress = func(Stats) { progress++ }
		st := syncOnce(t, r, store, opts)
		checkRepo(t, r, want)
		if st.Added != 2 || st.Uploaded != 2 || progress == 0 {
			t.Errorf("first sync: %+v, %d progress calls", st, progress)
		}
		st = syncOnce(t, r, store, testOptions(t))
		if st.Added != 0 || st.Uploaded != 0 || st.Scanned != 2 {
			t.Errorf("second sync: %+v, want 2 scanned and nothing copied", st)
		}
		checkRepo(t, r, want)
	})
}

// TestFailingFileIsNamed: a file that cannot be copied (here: the
// repository has a file where the object's directory must go, which fails
// for root too) is retried, counted and named with its error in Stats —
// what the agent's health and /status show — while the other files are
// copied; once the cause is gone it is copied and no longer failing.
func TestFailingFileIsNamed(t *testing.T) {
	t.Parallel()
	store, repoDir := t.TempDir(), t.TempDir()
	r := repotest.New(t, repoDir, repo.Options{})
	rng := rand.New(rand.NewPCG(7, 8))
	good, bad := contentPath(mediaID(rng)), contentPath(mediaID(rng))
	goodData, badData := randomContent(rng, 3000), randomContent(rng, 4000)
	sum := sha256.Sum256(badData)
	blocker := filepath.Join(repoDir, filepath.FromSlash(path.Dir(ObjectName(hex.EncodeToString(sum[:])))))
	if err := os.MkdirAll(filepath.Dir(blocker), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blocker, []byte("in the way"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeLikeSynapse(t, store, good, goodData)
	writeLikeSynapse(t, store, bad, badData)
	rw := startWatcher(t, r, store, testOptions(t))

	waitFor(t, 30*time.Second, "the unreadable file reported as failing", func() bool {
		st := rw.w.Stats()
		return st.FailingFiles == 1 && len(st.Failing) == 1 && st.Failing[0].Attempts >= 2
	})
	st := rw.w.Stats()
	f := st.Failing[0]
	if f.Path != bad || !strings.Contains(f.Err, "not a directory") || f.Since.IsZero() {
		t.Fatalf("failing file: %+v, want %s with its error", f, bad)
	}
	waitFor(t, 30*time.Second, "the good file copied", hasAll(t, r, map[string][]byte{good: goodData}))

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the file copied once the cause is gone", func() bool { return rw.w.Stats().FailingFiles == 0 })
	waitFor(t, 30*time.Second, "both files in the index", hasAll(t, r, map[string][]byte{good: goodData, bad: badData}))
}
