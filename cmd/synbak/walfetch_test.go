package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/wal"
)

// TestWALFetchExitCodes checks what PostgreSQL reads from restore_command:
// 0 fetched, 1 not archived, 255 anything else.
func TestWALFetchExitCodes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	b, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const seg = "000000010000000000000003"
	content := fakeSegment(t, seg)
	env := map[string]string{"SYNBAK_STATE_DIR": filepath.Join(dir, "state")}
	fetch := func(file string) (int, string) {
		code, _, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", repoDir, "wal-fetch", file, filepath.Join(dir, "out"))
		return code, stderr
	}

	if code, stderr := fetch(seg); code != 255 || !strings.Contains(stderr, "no WAL archive") {
		t.Errorf("repository without WAL: exit %d (%s), want 255", code, stderr)
	}
	if _, err := r.Put(ctx, "wal/settings.json", strings.NewReader(`{"system_id":"1","segment_size":1048576}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "wal/00000001/"+seg, bytes.NewReader(content), nil); err != nil {
		t.Fatal(err)
	}
	if code, stderr := fetch(seg); code != 0 {
		t.Fatalf("archived segment: exit %d: %s", code, stderr)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out"))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("fetched content differs (%v)", err)
	}
	if code, _ := fetch("000000010000000000000004"); code != 1 {
		t.Errorf("missing segment: exit %d, want 1", code)
	}
	if code, _ := fetch("00000002.history"); code != 1 {
		t.Errorf("missing history file: exit %d, want 1", code)
	}

	// A corrupt object must stop recovery (255), never look like the end.
	os.Remove(filepath.Join(dir, "out"))
	obj := filepath.Join(repoDir, "wal", "00000001", seg)
	raw, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(obj, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stderr := fetch(seg); code != 255 {
		t.Errorf("corrupt segment: exit %d (%s), want 255", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("a corrupt segment was written to DEST")
	}

	code, _, _ := runCLI(t, env, "--repo", repoDir, "wal-fetch", seg)
	if code != 255 {
		t.Errorf("one argument: exit %d, want 255", code)
	}
	code, _, _ = runCLI(t, env, "-c", "/dev/null", "--repo", filepath.Join(dir, "nope"), "wal-fetch", seg, filepath.Join(dir, "out"))
	if code != 255 {
		t.Errorf("no repository: exit %d, want 255", code)
	}
}

// fakeSegment is a 1 MiB segment named name of the cluster with system
// identifier 1: a valid first page header (wal.CheckSegmentHeader), then
// filler.
func fakeSegment(t *testing.T, name string) []byte {
	t.Helper()
	seg, err := wal.ParseSegmentName(name, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("synbak-wal-"), (1<<20)/11+1)[:1<<20]
	copy(content, wal.LongPageHeader(seg, seg.TLI, 1))
	return content
}
