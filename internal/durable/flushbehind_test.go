package durable

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestFlushBehindWritesEverythingInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	head := []byte("head")
	if _, err := f.Write(head); err != nil {
		t.Fatal(err)
	}
	w := NewFlushBehind(f)
	var want bytes.Buffer
	want.Write(head)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	for i := range 11 {
		chunk[0] = byte(i)
		if n, err := w.Write(chunk); err != nil || n != len(chunk) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		want.Write(chunk)
	}
	if w.flushed != int64(len(head))+8<<20 {
		t.Errorf("writeback started up to %d, want %d (every 4 MiB)", w.flushed, len(head)+8<<20)
	}
	w.Flush()
	if w.flushed != int64(want.Len()) {
		t.Errorf("after Flush writeback started up to %d, want %d", w.flushed, want.Len())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("file has %d bytes, want %d (or content differs)", len(got), want.Len())
	}
}
