package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
	"go.uber.org/goleak"
)

// readAllWith reads name with Get options.
func readAllWith(r *Repo, name string, opts ...GetOption) ([]byte, error) {
	rd, err := r.Get(context.Background(), name, opts...)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// storedPayload returns the payload of a stored object (between header and
// trailer) of the local backend b.
func storedPayload(t *testing.T, b interface{ Dir() string }, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(b.Dir(), filepath.FromSlash(name)))
	if err != nil {
		t.Fatal(err)
	}
	alen := binary.BigEndian.Uint32(raw[9:13])
	return raw[fixedHeaderSize+int(alen) : len(raw)-trailerLen(int(raw[7]))]
}

// frameOffsets walks the markers of a payload and returns the offset of
// every marker; it fails the test if the payload is not marker, frame,
// marker, frame... to its end.
func frameOffsets(t *testing.T, p []byte) []int {
	t.Helper()
	var offs []int
	for off := 0; off < len(p); {
		if len(p)-off < frameMarkerSize || [8]byte(p[off:off+8]) != frameMarkerPrefix {
			t.Fatalf("no frame marker at offset %d of %d", off, len(p))
		}
		offs = append(offs, off)
		off += frameMarkerSize + int(binary.LittleEndian.Uint32(p[off+8:]))
		if off > len(p) {
			t.Fatalf("frame at %d runs past the payload", offs[len(offs)-1])
		}
	}
	return offs
}

// TestFramesRoundTrip stores payloads around the frame boundaries with 1, 2
// and 4 workers and reads them back with the streaming reader (as a reader
// that predates the frames would) and the parallel one: same bytes, in
// order, one frame per frameSize bytes, each a complete zstd frame without
// checksum.
func TestFramesRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	data := mixedPayload(3*frameSize + 12345)
	for _, n := range []int{0, 1, frameSize - 1, frameSize, frameSize + 1, 3*frameSize + 12345} {
		for _, workers := range []int{1, 3, -3} {
			// -3: three workers, version 3 (XXH3-128).
			name := fmt.Sprintf("f/%d-%d", n, workers)
			opts, want := []PutOption{WithWorkers(workers)}, Checksum{SHA256: sumHex(data[:n])}
			if workers < 0 {
				x := xxh3.Hash128(data[:n]).Bytes()
				opts, want = []PutOption{WithWorkers(-workers), FastChecksum()}, Checksum{XXH3: hex.EncodeToString(x[:])}
			}
			res, err := r.Put(ctx, name, onlyReader{bytes.NewReader(data[:n])}, nil, opts...)
			if err != nil {
				t.Fatalf("%s: Put: %v", name, err)
			}
			if res.Size != int64(n) || res.Checksum != want {
				t.Fatalf("%s: Put result %+v, want %s", name, res, want.Describe())
			}
			payload := storedPayload(t, b, name)
			offs := frameOffsets(t, payload)
			if want := (n + frameSize - 1) / frameSize; len(offs) != want {
				t.Errorf("%s: %d frames, want %d", name, len(offs), want)
			}
			for i, off := range offs {
				fr, err := zstd.NewReader(nil)
				if err != nil {
					t.Fatal(err)
				}
				frame := payload[off+frameMarkerSize:]
				var h zstd.Header
				if err := h.Decode(frame); err != nil {
					t.Fatalf("%s: frame %d: %v", name, i, err)
				}
				if h.HasCheckSum {
					t.Errorf("%s: frame %d has a zstd checksum (the object's sha256 covers it)", name, i)
				}
				fr.Close()
			}
			for _, rw := range []int{0, 3} {
				got, err := readAllWith(r, name, WithReadWorkers(rw))
				if err != nil || !bytes.Equal(got, data[:n]) {
					t.Fatalf("%s, %d read workers: read %d bytes (equal %v), %v", name, rw, len(got), bytes.Equal(got, data[:n]), err)
				}
			}
		}
	}
}

// TestFramesReadsOtherObjects: the parallel reader reads objects stored
// without frames (the streaming encoder's payload) and uncompressed ones.
func TestFramesReadsOtherObjects(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(3*frameSize + 7)
	for _, comp := range []string{"zstd", "s2", "none"} {
		r, _ := initRepo(t, Options{Compression: comp})
		if _, err := r.Put(ctx, "o", bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
		got, err := readAllWith(r, "o", WithReadWorkers(4))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read %d bytes, %v", comp, len(got), err)
		}
	}
}

// TestFramesEncrypted: frames go through age like any payload.
func TestFramesEncrypted(t *testing.T) {
	ctx := context.Background()
	id := newIdentity(t)
	r, created, err := Init(ctx, newBackend(t), Options{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}})
	if err != nil || !created {
		t.Fatal(err)
	}
	data := mixedPayload(3*frameSize + 99)
	if _, err := r.Put(ctx, "e", bytes.NewReader(data), nil, WithWorkers(2)); err != nil {
		t.Fatal(err)
	}
	for _, rw := range []int{0, 2} {
		got, err := readAllWith(r, "e", WithReadWorkers(rw))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d read workers: read %d bytes, %v", rw, len(got), err)
		}
	}
}

// TestFramesCorruption damages one frame in the middle (its data, its
// marker's size, its marker's magic) and truncates the payload at a frame
// boundary: every reader reports corruption, never a short success.
func TestFramesCorruption(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(4*frameSize + 5)
	damage := map[string]func(p []byte, offs []int){
		"frame data": func(p []byte, offs []int) { p[offs[2]+frameMarkerSize+200] ^= 0x40 },
		"marker size": func(p []byte, offs []int) {
			binary.LittleEndian.PutUint32(p[offs[2]+8:], binary.LittleEndian.Uint32(p[offs[2]+8:])-3)
		},
		"marker size huge": func(p []byte, offs []int) { binary.LittleEndian.PutUint32(p[offs[1]+8:], 1<<31) },
		"marker magic":     func(p []byte, offs []int) { p[offs[3]+1] = 0 },
		"frame swapped": func(p []byte, offs []int) {
			// Frames 1 and 2 of equal stored size would swap cleanly;
			// swap the first bytes of their data instead.
			a, c := offs[1]+frameMarkerSize+100, offs[2]+frameMarkerSize+100
			for i := range 64 {
				p[a+i], p[c+i] = p[c+i], p[a+i]
			}
		},
	}
	for what, fn := range damage {
		t.Run(what, func(t *testing.T) {
			r, b := initRepo(t, Options{})
			if _, err := r.Put(ctx, "obj", bytes.NewReader(data), nil, WithWorkers(2)); err != nil {
				t.Fatal(err)
			}
			edit(t, b, "obj", func(raw []byte) []byte {
				alen := binary.BigEndian.Uint32(raw[9:13])
				p := raw[fixedHeaderSize+int(alen) : len(raw)-trailerSize]
				fn(p, frameOffsets(t, p))
				return raw
			})
			readers := []int{0, 3}
			if strings.HasPrefix(what, "marker size") {
				// The streaming reader skips the marker's content, and
				// the payload is intact for it.
				readers = []int{3}
			}
			for _, rw := range readers {
				_, err := readAllWith(r, "obj", WithReadWorkers(rw))
				if !IsCorrupt(err) {
					t.Errorf("%d read workers: error %v, want IsCorrupt", rw, err)
				}
			}
		})
	}
	t.Run("truncated at a frame boundary", func(t *testing.T) {
		r, b := initRepo(t, Options{})
		if _, err := r.Put(ctx, "obj", bytes.NewReader(data), nil, WithWorkers(2)); err != nil {
			t.Fatal(err)
		}
		edit(t, b, "obj", func(raw []byte) []byte {
			alen := binary.BigEndian.Uint32(raw[9:13])
			start := fixedHeaderSize + int(alen)
			p := raw[start : len(raw)-trailerSize]
			offs := frameOffsets(t, p)
			out := append([]byte(nil), raw[:start+offs[3]]...)
			return append(out, raw[len(raw)-trailerSize:]...)
		})
		for _, rw := range []int{0, 2} {
			if _, err := readAllWith(r, "obj", WithReadWorkers(rw)); !IsCorrupt(err) {
				t.Errorf("%d read workers: error %v, want IsCorrupt", rw, err)
			}
		}
	})
}

// TestFramesBackendErrorIsNotCorruption: an I/O error while the parallel
// reader reads ahead is reported as such.
func TestFramesBackendErrorIsNotCorruption(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	res, err := r.Put(ctx, "obj", bytes.NewReader(mixedPayload(3*frameSize)), nil, WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	for _, after := range []int64{20, 40, res.StoredSize / 2, res.StoredSize - 100} {
		fr, err := Open(ctx, b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		fr.b = failingBackend{b, after}
		_, err = readAllWith(fr, "obj", WithReadWorkers(2))
		if !errors.Is(err, errIO) || IsCorrupt(err) {
			t.Errorf("I/O error after %d bytes: error = %v, want errIO and not IsCorrupt", after, err)
		}
	}
}

// slowReader returns a chunk per read and cancels ctx after limit bytes.
type cancelAfter struct {
	r      io.Reader
	limit  int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.limit -= n
	if c.limit <= 0 {
		c.cancel()
	}
	return n, err
}

// TestFramesNoLeak: a Put cancelled in the middle, a Put whose reader
// fails, and a Reader closed in the middle of a parallel read leave no
// goroutine behind, and the cancelled Put stores nothing.
func TestFramesNoLeak(t *testing.T) {
	r, b := initRepo(t, Options{})
	data := mixedPayload(6*frameSize + 1)
	before := goleak.IgnoreCurrent()

	ctx, cancel := context.WithCancel(context.Background())
	_, err := r.Put(ctx, "cancelled", &cancelAfter{r: bytes.NewReader(data), limit: 3 * frameSize, cancel: cancel}, nil, WithWorkers(3))
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Put: error %v, want context.Canceled", err)
	}
	if _, err := b.Stat(context.Background(), "cancelled"); err == nil {
		t.Error("the cancelled Put stored an object")
	}

	boom := errors.New("boom")
	_, err = r.Put(context.Background(), "failed", io.MultiReader(bytes.NewReader(data[:5*frameSize/2]), iotestErr{boom}), nil, WithWorkers(2))
	if !errors.Is(err, boom) {
		t.Errorf("failing reader: error %v, want boom", err)
	}

	if _, err := r.Put(context.Background(), "whole", bytes.NewReader(data), nil, WithWorkers(2)); err != nil {
		t.Fatal(err)
	}
	rd, err := r.Get(context.Background(), "whole", WithReadWorkers(3))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rd, make([]byte, frameSize+10)); err != nil {
		t.Fatal(err)
	}
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	// A reader closed before its first read starts nothing.
	rd, err = r.Get(context.Background(), "whole", WithReadWorkers(3))
	if err != nil {
		t.Fatal(err)
	}
	rd.Close()

	deadline := time.Now().Add(10 * time.Second)
	for {
		err := goleak.Find(before)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left: %v", err)
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

// TestFramesWithEncoderCache: the WAL uploader's cache serves frame
// encoders too, and keeps a bounded number.
func TestFramesWithEncoderCache(t *testing.T) {
	ctx := context.Background()
	r, _ := initRepo(t, Options{})
	c := NewEncoderCache(2)
	data := mixedPayload(3*frameSize + 1)
	for i := range 3 {
		name := fmt.Sprintf("c/%d", i)
		if _, err := r.Put(ctx, name, bytes.NewReader(data), nil, WithWorkers(2), WithEncoderCache(c)); err != nil {
			t.Fatal(err)
		}
		if got, err := readAllWith(r, name, WithReadWorkers(2)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	for level, encs := range c.frames {
		if len(encs) == 0 || len(encs) > 2*c.max {
			t.Errorf("level %v: the cache keeps %d frame encoders, want 1..%d", level, len(encs), 2*c.max)
		}
	}
}

// TestWorkersOtherCodecs: WithWorkers with s2 (its concurrent writer) and
// with no compression stores what every reader reads back.
func TestWorkersOtherCodecs(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(3*frameSize + 3)
	for _, comp := range []string{"s2", "none"} {
		r, _ := initRepo(t, Options{Compression: comp})
		for i, n := range []int{0, 100, len(data)} {
			name := fmt.Sprintf("o%d", i)
			res, err := r.Put(ctx, name, onlyReader{bytes.NewReader(data[:n])}, nil, WithWorkers(2))
			if err != nil || res.SHA256 != sumHex(data[:n]) {
				t.Fatalf("%s: Put %d bytes: %+v, %v", comp, n, res, err)
			}
			for _, rw := range []int{0, 2} {
				got, err := readAllWith(r, name, WithReadWorkers(rw))
				if err != nil || !bytes.Equal(got, data[:n]) {
					t.Fatalf("%s, %d bytes, %d read workers: read %d bytes, %v", comp, n, rw, len(got), err)
				}
			}
		}
	}
}
