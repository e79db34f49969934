package s3

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestFenced: a request body reads its section of the reader, seeks
// within it, and fails every read and seek once closed, without touching
// the reader.
func TestFenced(t *testing.T) {
	rs := bytes.NewReader([]byte("0123456789"))
	f := &fenced{rs: rs, start: 2, size: 5}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	if err != nil || string(got) != "23456" {
		t.Fatalf("read %q, %v; want 23456", got, err)
	}
	if _, err := f.Seek(-2, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(f)
	if string(got) != "56" {
		t.Fatalf("after Seek(-2, End) read %q, want 56", got)
	}
	if _, err := f.Seek(6, io.SeekStart); err == nil {
		t.Error("Seek past the section succeeded")
	}
	_, _ = f.Seek(0, io.SeekStart)
	f.close()
	pos, _ := rs.Seek(0, io.SeekCurrent)
	if n, err := f.Read(make([]byte, 4)); n != 0 || !errors.Is(err, errFenced) {
		t.Errorf("Read after close = %d, %v; want 0, errFenced", n, err)
	}
	if _, err := f.Seek(0, io.SeekStart); !errors.Is(err, errFenced) {
		t.Errorf("Seek after close: %v, want errFenced", err)
	}
	if now, _ := rs.Seek(0, io.SeekCurrent); now != pos {
		t.Errorf("the reader moved from %d to %d after close", pos, now)
	}
	// A reader shorter than it said: an error, not a silent short body.
	short := &fenced{rs: bytes.NewReader([]byte("ab")), size: 5}
	if _, err := io.ReadAll(short); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reader: %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestPartSizeFor: the part size grows only after 2,000 parts, and 10,000
// parts hold 31×2,000 parts of the configured size.
func TestPartSizeFor(t *testing.T) {
	b := &Backend{partSize: DefaultPartSize}
	p := int64(DefaultPartSize)
	for num, want := range map[int]int64{1: p, 2000: p, 2001: 2 * p, 4001: 4 * p, 8000: 8 * p, 8001: 16 * p, maxParts: 16 * p} {
		if got := b.partSizeFor(num); got != want {
			t.Errorf("partSizeFor(%d) = %d, want %d", num, got, want)
		}
	}
	var total int64
	for num := 1; num <= maxParts; num++ {
		total += b.partSizeFor(num)
	}
	if total != 31*2000*p {
		t.Errorf("10,000 parts hold %d bytes, want %d", total, 31*2000*p)
	}
}
