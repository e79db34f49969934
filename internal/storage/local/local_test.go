package local

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
