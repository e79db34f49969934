package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestBackend(t *testing.T) *Backend {
	t.Helper()
	b, err := New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return newTestBackend(t) })
}

func TestPermissions(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	b := newTestBackend(t)
	if err := b.Put(context.Background(), "x/y/z", bytes.NewReader([]byte("data"))); err != nil {
		t.Fatal(err)
	}
	syscall.Umask(0o277) // must not matter either
	if err := b.Put(context.Background(), "p/q", bytes.NewReader([]byte("data"))); err != nil {
		t.Fatal(err)
	}
	syscall.Umask(0)
	want := map[string]fs.FileMode{
		"":      fs.ModeDir | 0o700,
		".tmp":  fs.ModeDir | 0o700,
		"x":     fs.ModeDir | 0o700,
		"x/y":   fs.ModeDir | 0o700,
		"x/y/z": 0o600,
		"p":     fs.ModeDir | 0o700,
		"p/q":   0o600,
	}
	for rel, mode := range want {
		fi, err := os.Stat(filepath.Join(b.Dir(), rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%q has mode %v, want %v", rel, fi.Mode(), mode)
		}
	}
}

func tmpEntries(t *testing.T, b *Backend) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(b.Dir(), ".tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

type errAfter struct{ n int }

func (e *errAfter) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, errors.New("broken")
	}
	n := min(len(p), e.n)
	e.n -= n
	return n, nil
}

func TestNoLeftoverTempFiles(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	if err := b.Put(ctx, "ok", bytes.NewReader([]byte("a"))); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "ok", bytes.NewReader([]byte("a"))); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "ok", bytes.NewReader([]byte("b"))); !storage.IsConflict(err) {
		t.Fatalf("conflicting Put: %v", err)
	}
	if err := b.Put(ctx, "bad", &errAfter{n: 1 << 20}); err == nil {
		t.Fatal("Put with a failing reader succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Put(cctx, "cancelled", bytes.NewReader([]byte("a"))); err == nil {
		t.Fatal("Put with a cancelled context succeeded")
	}
	if names := tmpEntries(t, b); len(names) != 0 {
		t.Fatalf("temporary files left: %q", names)
	}
}

func TestStaleTempFilesRemoved(t *testing.T) {
	b := newTestBackend(t)
	stale := filepath.Join(b.Dir(), ".tmp", "put-stale")
	fresh := filepath.Join(b.Dir(), ".tmp", "put-fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := New(b.Dir()); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tmpEntries(t, b), ","); got != "put-fresh" {
		t.Fatalf("temp dir after New = %q, want only put-fresh", got)
	}
}

func TestNewOnFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, filepath.Join(file, "repo"), filepath.Join(file, "a", "b")} {
		_, err := New(p)
		if err == nil {
			t.Fatalf("New(%q) succeeded", p)
		}
		if !strings.Contains(err.Error(), file+" exists but is not a directory") {
			t.Errorf("New(%q) error = %q, want it to name %s as not a directory", p, err, file)
		}
	}
}

func TestReservedTempName(t *testing.T) {
	b := newTestBackend(t)
	err := b.Put(context.Background(), ".tmp/x", bytes.NewReader(nil))
	if !errors.Is(err, storage.ErrBadName) {
		t.Fatalf("Put(.tmp/x) error = %v, want ErrBadName", err)
	}
}

func TestDeleteRemovesEmptyDirs(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	for _, n := range []string{"a/b/c/d", "a/x"} {
		if err := b.Put(ctx, n, bytes.NewReader(nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(ctx, "a/b/c/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), "a", "b")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a/b still exists after its only object was deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), "a", "x")); err != nil {
		t.Fatal(err)
	}
}

// TestPutDeleteRace publishes into a directory that concurrent Deletes keep
// emptying and removing.
func TestPutDeleteRace(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			_ = b.Delete(ctx, "race/dir/other")
		}
	}()
	for range 200 {
		if err := b.Put(ctx, "race/dir/other", bytes.NewReader(nil)); err != nil {
			t.Errorf("Put: %v", err)
		}
	}
	<-done
}

// syncRecorder records the directory fsyncs of a backend (relative paths)
// and can make them fail.
type syncRecorder struct {
	mu    sync.Mutex
	calls []string
	fail  error
}

func recordSyncs(b *Backend) *syncRecorder {
	rec := &syncRecorder{}
	b.syncDir = func(dir string) error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rel, _ := filepath.Rel(b.Dir(), dir)
		rec.calls = append(rec.calls, filepath.ToSlash(rel))
		if rec.fail != nil {
			return rec.fail
		}
		return syncDir(dir)
	}
	return rec
}

func (r *syncRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	sort.Strings(c)
	return c
}

func TestSyncGroupDefersDirectoryFsync(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	rec := recordSyncs(b)
	if err := b.Put(ctx, "plain/x", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []string{"plain"}) {
		t.Fatalf("a plain Put fsynced %q, want its directory", got)
	}

	g := b.NewSyncGroup()
	for i := range 10 {
		name := fmt.Sprintf("objs/%d/o%d", i%3, i)
		if err := g.Put(ctx, name, bytes.NewReader([]byte(name))); err != nil {
			t.Fatal(err)
		}
		// The object is complete and visible at once; only the fsync of
		// its directory waits.
		wantContent(t, b, name, []byte(name))
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("Puts through a group fsynced directories %q before Sync", got)
	}
	// An object found to exist (published by someone else) is included.
	if err := b.Put(ctx, "other/y", bytes.NewReader([]byte("y"))); err != nil {
		t.Fatal(err)
	}
	rec.take()
	g.Include("other/y")
	// Putting identical content under an existing name through the group
	// also leaves the directory to Sync (the first writer may not be done).
	if err := g.Put(ctx, "plain/x", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.take(), []string{"objs/0", "objs/1", "objs/2", "other", "plain"}; !slices.Equal(got, want) {
		t.Fatalf("Sync fsynced %q, want each touched directory once: %q", got, want)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("a second Sync fsynced %q again", got)
	}
	if err := g.Put(ctx, "plain/x", bytes.NewReader([]byte("z"))); !storage.IsConflict(err) {
		t.Fatalf("conflicting Put through a group: %v", err)
	}
}

func TestSyncGroupKeepsFailedWork(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	rec := recordSyncs(b)
	g := b.NewSyncGroup()
	if err := g.Put(ctx, "d/a", bytes.NewReader([]byte("a"))); err != nil {
		t.Fatal(err)
	}
	rec.fail = errors.New("EIO")
	if err := g.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded with a failing fsync")
	}
	rec.take()
	rec.fail = nil
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("the Sync after a failure fsynced %q, want the directory again", got)
	}
	// A directory removed meanwhile (its objects deleted) is not an error.
	if err := g.Put(ctx, "e/b", bytes.NewReader([]byte("b"))); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "e/b"); err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatalf("Sync after the directory was removed: %v", err)
	}
}

// TestSyncGroupConcurrent: a Sync covers every Put that returned before it
// was called, with Puts and Syncs running concurrently.
func TestSyncGroupConcurrent(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	var mu sync.Mutex
	synced := map[string]int{} // directory -> fsyncs
	b.syncDir = func(dir string) error {
		mu.Lock()
		synced[dir]++
		mu.Unlock()
		return nil
	}
	g := b.NewSyncGroup()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				name := fmt.Sprintf("c/%d-%d/o", w, i)
				if err := g.Put(ctx, name, bytes.NewReader([]byte(name))); err != nil {
					t.Error(err)
					return
				}
				if err := g.Sync(ctx); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				after := synced[filepath.Join(b.Dir(), "c", fmt.Sprintf("%d-%d", w, i))]
				mu.Unlock()
				if after == 0 {
					t.Errorf("%s: its directory was not fsynced by a Sync called after its Put returned", name)
				}
			}
		})
	}
	wg.Wait()
}

func TestSameSizeDifferentContentConflicts(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 40000) // several comparison buffers
	if err := b.Put(ctx, "big", bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "big", bytes.NewReader(bytes.Clone(big))); err != nil {
		t.Fatalf("identical re-Put: %v", err)
	}
	for _, at := range []int{0, copyBuf/2 - 1, copyBuf / 2, len(big) - 1} {
		other := bytes.Clone(big)
		other[at] ^= 1
		if err := b.Put(ctx, "big", bytes.NewReader(other)); !storage.IsConflict(err) {
			t.Fatalf("Put differing at byte %d: %v, want a conflict", at, err)
		}
	}
	wantContent(t, b, "big", big)
	if names := tmpEntries(t, b); len(names) != 0 {
		t.Fatalf("temporary files left: %q", names)
	}
}

func wantContent(t *testing.T, b *Backend, name string, want []byte) {
	t.Helper()
	rc, err := b.Get(context.Background(), name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s holds %d bytes, want %d", name, len(got), len(want))
	}
}

// TestRootWritesAsTheRepositoryOwner: root (an admin running `synbak
// backup`) writing into a repository that belongs to another user (the
// agent's service user) creates every file and directory as that user, so
// that the agent can still read, list and prune them.
func TestRootWritesAsTheRepositoryOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root can create files for another user")
	}
	const uid, gid = 65534, 65534 // nobody:nogroup, standing in for the agent's user
	dir := filepath.Join(t.TempDir(), "repo")
	// The agent created the repository: it is its user's, 0700.
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"wal/00000001/000000010000000000000001", "backups/b1/base.tar.0000", "top"} {
		if err := b.Put(ctx, name, bytes.NewReader([]byte("data of "+name))); err != nil {
			t.Fatal(err)
		}
	}
	g := b.NewSyncGroup()
	if err := g.Put(ctx, "media/objects/ab/cd", bytes.NewReader([]byte("m"))); err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var checked int
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: owned by %d:%d, want the repository's owner %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 12 {
		t.Fatalf("checked only %d paths", checked)
	}

	// A repository that is root's own stays root's.
	own := filepath.Join(t.TempDir(), "rootrepo")
	b2, err := New(own)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Put(ctx, "a/b", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(own, "a", "b"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 {
		t.Fatalf("root's own repository: object owned by %d", st.Uid)
	}
}

// TestPermissionErrorSaysWhoAndWhat: a repository another user wrote 0700,
// read by a user who cannot: the error names the path once, both users and
// what to run. (Root ignores modes, so the reader here is a non-root
// process: the test binary re-run as nobody.)
func TestPermissionErrorSaysWhoAndWhat(t *testing.T) {
	if os.Getenv("SYNBAK_LOCAL_PERM_CHILD") != "" {
		b := &Backend{dir: os.Getenv("SYNBAK_LOCAL_PERM_CHILD"), syncDir: syncDir}
		err := b.List(context.Background(), "", func(storage.ObjectInfo) error { return nil })
		fmt.Print(err)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	dir := filepath.Join(t.TempDir(), "repo")
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), "backups/x/backup.json", bytes.NewReader([]byte("{}"))); err != nil {
		t.Fatal(err)
	}
	// The test's temp dirs must be traversable by nobody to reach dir.
	for p := filepath.Dir(dir); p != "/"; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				t.Fatal(err)
			}
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// go test's build directory is root's 0700: run a copy nobody can reach.
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(filepath.Dir(dir), "local.test")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestPermissionErrorSaysWhoAndWhat$")
	cmd.Env = append(os.Environ(), "SYNBAK_LOCAL_PERM_CHILD="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	msg := string(out)
	t.Logf("error: %s", msg)
	for _, want := range []string{"permission denied", "uid 65534", "root (uid 0)", "run this command as root (uid 0)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if n := strings.Count(msg, dir); n != 1 {
		t.Errorf("error names the repository %d times: %q", n, msg)
	}
}
