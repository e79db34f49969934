package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newBackend(t *testing.T) *local.Backend {
	t.Helper()
	b, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func initRepo(t *testing.T, opts Options) (*Repo, *local.Backend) {
	t.Helper()
	b := newBackend(t)
	r, created, err := Init(context.Background(), b, opts)
	if err != nil || !created {
		t.Fatalf("Init = %v, %v; want created", created, err)
	}
	return r, b
}

// mixedPayload is n bytes of alternating random and repetitive text blocks,
// so it compresses, but not trivially.
func mixedPayload(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	for buf.Len() < n {
		if rng.IntN(2) == 0 {
			b := make([]byte, 1+rng.IntN(8192))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			buf.Write(b)
		} else {
			for range 1 + rng.IntN(200) {
				fmt.Fprintf(&buf, `{"event_id":"$%d","type":"m.room.message","content":{"body":"hello %d"}}`+"\n", rng.Uint64(), rng.IntN(1000))
			}
		}
	}
	return buf.Bytes()[:n]
}

func sumHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// onlyReader hides WriterTo etc., so Put sees a stream of unknown length.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func readAll(t *testing.T, r *Repo, name string) ([]byte, error) {
	t.Helper()
	rd, err := r.Get(context.Background(), name)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// xxh128Hex returns xxh128sum's XXH3-128 of b: the referee of version 3
// objects' checksums is the xxhash project's own tool.
func xxh128Hex(t *testing.T, b []byte) string {
	t.Helper()
	if _, err := exec.LookPath("xxh128sum"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("xxh128sum (Debian package xxhash) is needed in CI: %v", err)
		}
		t.Skip("xxh128sum not installed (apt-get install xxhash)")
	}
	cmd := exec.Command("xxh128sum", "-")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xxh128sum: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 || len(f[0]) != 32 {
		t.Fatalf("xxh128sum printed %q", out)
	}
	return f[0]
}

func TestRoundTrip(t *testing.T) {
	data := mixedPayload(10<<20 + 777)
	for _, fast := range []bool{false, true} {
		for _, comp := range []string{"zstd", "s2", "none"} {
			t.Run(fmt.Sprintf("%s/fast=%v", comp, fast), func(t *testing.T) { testRoundTrip(t, data, comp, fast) })
		}
	}
}

func testRoundTrip(t *testing.T, data []byte, comp string, fast bool) {
	ctx := context.Background()
	r, b := initRepo(t, Options{Compression: comp})
	var opts []PutOption
	wantSum, tlen := Checksum{SHA256: sumHex(data)}, trailerSize
	if fast {
		opts = append(opts, FastChecksum())
		wantSum, tlen = Checksum{XXH3: xxh128Hex(t, data)}, trailerSizeV3
	}
	res, err := r.Put(ctx, "base/obj", onlyReader{bytes.NewReader(data)}, map[string]string{"k": "v"}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != int64(len(data)) || res.Checksum != wantSum {
		t.Fatalf("PutResult = %+v, want size %d %s", res, len(data), wantSum.Describe())
	}
	oi, err := b.Stat(ctx, "base/obj")
	if err != nil || oi.Size != res.StoredSize {
		t.Fatalf("backend Stat = %+v, %v; want size %d", oi, err, res.StoredSize)
	}
	if comp == "zstd" && res.StoredSize >= res.Size*9/10 {
		t.Errorf("zstd stored %d bytes of %d, expected compression", res.StoredSize, res.Size)
	}
	if comp == "none" && res.StoredSize != res.Size+fixedHeaderSize+int64(len(`{"k":"v"}`))+int64(tlen) {
		t.Errorf("none stored %d bytes of %d, want plaintext plus framing", res.StoredSize, res.Size)
	}

	rd, err := r.Get(ctx, "base/obj")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes sha256 %s, want %d bytes %s", len(got), sumHex(got), len(data), sumHex(data))
	}
	want := Info{Name: "base/obj", StoredSize: res.StoredSize, Size: res.Size, Checksum: wantSum,
		Codec: map[string]Codec{"zstd": CodecZstd, "s2": CodecS2, "none": CodecNone}[comp], Attrs: map[string]string{"k": "v"}}
	if fmt.Sprint(rd.Info()) != fmt.Sprint(want) {
		t.Errorf("Reader.Info = %+v, want %+v", rd.Info(), want)
	}
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := r.Stat(ctx, "base/obj")
	if err != nil || fmt.Sprint(st) != fmt.Sprint(want) {
		t.Errorf("Stat = %+v, %v; want %+v", st, err, want)
	}
	v, err := r.Verify(ctx, "base/obj")
	if err != nil || fmt.Sprint(v) != fmt.Sprint(want) {
		t.Errorf("Verify = %+v, %v; want %+v", v, err, want)
	}
}

func TestReaderContract(t *testing.T) {
	ctx := context.Background()
	for _, comp := range []string{"zstd", "s2", "none"} {
		r, _ := initRepo(t, Options{Compression: comp})
		for _, data := range [][]byte{nil, []byte("x"), mixedPayload(200_000)} {
			if _, err := r.Put(ctx, "small", bytes.NewReader(data), nil); err != nil {
				t.Fatal(err)
			}
			rd, err := r.Get(ctx, "small")
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(rd, data); err != nil {
				t.Errorf("%s, %d bytes: %v", comp, len(data), err)
			}
			rd.Close()
			if err := r.Delete(ctx, "small"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestAttrs(t *testing.T) {
	ctx := context.Background()
	r, _ := initRepo(t, Options{})
	attrs := map[string]string{"lsn": "0/3000000", "tli": "1", "émoji": "🙂", "empty": "", "quote": `"\`}
	if _, err := r.Put(ctx, "a", strings.NewReader("x"), attrs); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "b", strings.NewReader("x"), nil); err != nil {
		t.Fatal(err)
	}
	rd, err := r.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if fmt.Sprint(rd.Attrs()) != fmt.Sprint(attrs) {
		t.Errorf("Get attrs = %v, want %v", rd.Attrs(), attrs)
	}
	st, err := r.Stat(ctx, "a")
	if err != nil || fmt.Sprint(st.Attrs) != fmt.Sprint(attrs) {
		t.Errorf("Stat attrs = %v, %v; want %v", st.Attrs, err, attrs)
	}
	st, err = r.Stat(ctx, "b")
	if err != nil || st.Attrs == nil || len(st.Attrs) != 0 {
		t.Errorf("Stat attrs of nil = %#v, %v; want empty map", st.Attrs, err)
	}
	// Attributes larger than Stat's first ranged read.
	big := map[string]string{"big": strings.Repeat("z", 10000)}
	if _, err := r.Put(ctx, "c", strings.NewReader("x"), big); err != nil {
		t.Fatal(err)
	}
	st, err = r.Stat(ctx, "c")
	if err != nil || st.Attrs["big"] != big["big"] || st.Size != 1 {
		t.Errorf("Stat with big attrs: %d bytes of attrs, size %d, %v", len(st.Attrs["big"]), st.Size, err)
	}
}

// edit changes the stored file of name under the local backend.
func edit(t *testing.T, b *local.Backend, name string, fn func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(b.Dir(), filepath.FromSlash(name))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, fn(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantCorrupt(t *testing.T, r *Repo, name, what string) {
	t.Helper()
	_, err := readAll(t, r, name)
	if !IsCorrupt(err) {
		t.Errorf("%s: read error = %v, want IsCorrupt", what, err)
	} else if !strings.Contains(err.Error(), name) {
		t.Errorf("%s: error %q does not name the object %s", what, err, name)
	}
	if _, err := r.Verify(context.Background(), name); !IsCorrupt(err) {
		t.Errorf("%s: Verify error = %v, want IsCorrupt", what, err)
	}
}

func TestCorruption(t *testing.T) {
	for _, fast := range []bool{false, true} {
		for _, comp := range []string{"zstd", "s2", "none"} {
			testCorruption(t, comp, fast)
		}
	}
}

func testCorruption(t *testing.T, comp string, fast bool) {
	ctx := context.Background()
	data := mixedPayload(1 << 20)
	// trailerSize and the checksum's length in this version's trailer.
	trailerSize, sl := trailerSize, 32
	var opts []PutOption
	if fast {
		trailerSize, sl = trailerSizeV3, 16
		opts = append(opts, FastChecksum())
	}
	{
		r, b := initRepo(t, Options{Compression: comp})
		put := func(name string) PutResult {
			res, err := r.Put(ctx, name, bytes.NewReader(data), map[string]string{"a": "b"}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		hdr := int64(fixedHeaderSize + len(`{"a":"b"}`))
		cases := []struct {
			what     string
			fn       func(b []byte) []byte
			statBad  bool // Stat (header and trailer only) notices
			readable bool // damage is invisible to the framing (payload)
		}{
			{"flipped payload byte", func(b []byte) []byte { b[hdr+(int64(len(b))-hdr-int64(trailerSize))/2] ^= 0x40; return b }, false, true},
			{"flipped first payload byte", func(b []byte) []byte { b[hdr] ^= 1; return b }, false, true},
			{"flipped last payload byte", func(b []byte) []byte { b[len(b)-trailerSize-1] ^= 1; return b }, false, true},
			// The binding covers checksum and length: Stat notices.
			{"flipped checksum", func(b []byte) []byte { b[len(b)-trailerSize] ^= 1; return b }, true, true},
			{"wrong length", func(b []byte) []byte { b[len(b)-trailerSize+sl+7] ^= 1; return b }, true, true},
			{"flipped binding", func(b []byte) []byte { b[len(b)-trailerSize+sl+8] ^= 1; return b }, true, true},
			// A version 3 object relabelled version 2 (or back): its
			// trailer no longer parses or its binding fails.
			{"other version", func(b []byte) []byte { b[7] ^= 1; return b }, true, false},
			{"flipped attribute value bit", func(b []byte) []byte { b[hdr-3] ^= 1; return b }, true, true},
			{"bad header magic", func(b []byte) []byte { b[0] = 'X'; return b }, true, false},
			{"bad codec", func(b []byte) []byte { b[8] = 9; return b }, true, false},
			{"bad attrs", func(b []byte) []byte { b[13] = '['; return b }, true, false},
			{"truncated by 1", func(b []byte) []byte { return b[:len(b)-1] }, true, false},
			{"truncated by 100", func(b []byte) []byte { return b[:len(b)-100] }, true, false},
			{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, true, false},
			{"truncated to 60 bytes", func(b []byte) []byte { return b[:60] }, true, false},
			{"truncated to 5 bytes", func(b []byte) []byte { return b[:5] }, true, false},
			{"empty file", func(b []byte) []byte { return b[:0] }, true, false},
			{"appended garbage", func(b []byte) []byte { return append(b, "garbage"...) }, true, false},
		}
		for i, c := range cases {
			what := fmt.Sprintf("%s (fast %v): %s", comp, fast, c.what)
			name := fmt.Sprintf("obj/%d", i)
			put(name)
			edit(t, b, name, c.fn)
			wantCorrupt(t, r, name, what)
			_, err := r.Stat(ctx, name)
			if c.statBad && !IsCorrupt(err) {
				t.Errorf("%s: Stat error = %v, want IsCorrupt", what, err)
			}
			if !c.statBad && err != nil {
				t.Errorf("%s: Stat error = %v, want nil (payload damage is found by reading)", what, err)
			}
		}
	}
}

// failingBackend makes Get's body fail after some bytes.
type failingBackend struct {
	storage.Backend
	after int64
}

var errIO = errors.New("simulated I/O error")

func (f failingBackend) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	rc, err := f.Backend.Get(ctx, name, off, length)
	if err != nil {
		return nil, err
	}
	return &failAfter{rc: rc, left: f.after}, nil
}

// failAfter returns errIO after left bytes (if the body is that long).
type failAfter struct {
	rc   io.ReadCloser
	left int64
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errIO
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.rc.Read(p)
	f.left -= int64(n)
	return n, err
}

func (f *failAfter) Close() error { return f.rc.Close() }

func TestBackendErrorIsNotCorruption(t *testing.T) {
	ctx := context.Background()
	for _, comp := range []string{"zstd", "s2", "none"} {
		r, b := initRepo(t, Options{Compression: comp})
		res, err := r.Put(ctx, "obj", bytes.NewReader(mixedPayload(1<<20)), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, after := range []int64{0, 5, 100, res.StoredSize / 2, res.StoredSize - 10} {
			fr, err := Open(ctx, failingBackend{b, 1 << 40}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			fr.b = failingBackend{b, after}
			_, err = readAll(t, fr, "obj")
			if !errors.Is(err, errIO) || IsCorrupt(err) {
				t.Errorf("%s, I/O error after %d bytes: error = %v, want errIO and not IsCorrupt", comp, after, err)
			}
		}
	}
}

func TestConflict(t *testing.T) {
	ctx := context.Background()
	r, _ := initRepo(t, Options{})
	if _, err := r.Put(ctx, "x", strings.NewReader("original"), nil); err != nil {
		t.Fatal(err)
	}
	_, err := r.Put(ctx, "x", strings.NewReader("other"), nil)
	if !IsConflict(err) {
		t.Fatalf("conflicting Put error = %v, want IsConflict", err)
	}
	for _, s := range []string{"x", sumHex([]byte("original")), sumHex([]byte("other"))} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("conflict error %q does not mention %s", err, s)
		}
	}
	got, err := readAll(t, r, "x")
	if err != nil || string(got) != "original" {
		t.Fatalf("after conflict: %q, %v; want original", got, err)
	}
}

func TestRePutDifferentEncoding(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(3 << 20)
	r, b := initRepo(t, Options{ZstdLevel: 1})
	first, err := r.Put(ctx, "x", bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []PutOption{WithZstdLevel(19), Uncompressed(), WithZstdLevel(1), FastChecksum()} {
		res, err := r.Put(ctx, "x", bytes.NewReader(data), map[string]string{"other": "attrs"}, opt)
		if err != nil {
			t.Fatalf("re-Put of the same plaintext: %v", err)
		}
		if res.Checksum != first.Checksum || res.StoredSize != first.StoredSize {
			t.Errorf("re-Put result %+v, want the existing object's %+v", res, first)
		}
	}
	oi, err := b.Stat(ctx, "x")
	if err != nil || oi.Size != first.StoredSize {
		t.Fatalf("stored object changed: %+v, %v", oi, err)
	}
}

// TestRePutAcrossChecksums: an object stored with one checksum algorithm
// and put again with the other (another synbak version resuming a WAL
// segment) is identical content when the plaintexts are equal, a conflict
// when they differ, and the result always describes the stored object.
func TestRePutAcrossChecksums(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(2 << 20)
	other := bytes.Clone(data)
	other[len(other)/2] ^= 1
	for _, firstFast := range []bool{false, true} {
		r, b := initRepo(t, Options{})
		var first, second []PutOption
		if firstFast {
			first = append(first, FastChecksum())
		} else {
			second = append(second, FastChecksum())
		}
		stored, err := r.Put(ctx, "x", bytes.NewReader(data), nil, first...)
		if err != nil {
			t.Fatal(err)
		}
		if (stored.XXH3 != "") != firstFast {
			t.Fatalf("first Put (fast %v) recorded %s", firstFast, stored.Describe())
		}
		res, err := r.Put(ctx, "x", bytes.NewReader(data), nil, second...)
		if err != nil {
			t.Fatalf("re-Put of the same plaintext with the other checksum: %v", err)
		}
		if res != stored {
			t.Errorf("re-Put result %+v, want the stored object's %+v", res, stored)
		}
		_, err = r.Put(ctx, "x", bytes.NewReader(other), nil, second...)
		if !IsConflict(err) {
			t.Fatalf("re-Put of other plaintext with the other checksum: %v, want IsConflict", err)
		}
		if !strings.Contains(err.Error(), stored.Describe()) {
			t.Errorf("conflict error %q does not name the stored checksum %s", err, stored.Describe())
		}
		oi, err := b.Stat(ctx, "x")
		if err != nil || oi.Size != stored.StoredSize {
			t.Fatalf("stored object changed: %+v, %v", oi, err)
		}
	}
}

func TestPutFailures(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	boom := errors.New("boom")
	_, err := r.Put(ctx, "f", io.MultiReader(bytes.NewReader(mixedPayload(2<<20)), iotest.ErrReader(boom)), nil)
	if !errors.Is(err, boom) {
		t.Fatalf("Put with failing reader: %v, want boom", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Put(cctx, "g", strings.NewReader("x"), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with cancelled context: %v", err)
	}
	if _, err := r.Put(ctx, "a//b", strings.NewReader("x"), nil); !errors.Is(err, storage.ErrBadName) {
		t.Fatalf("Put with bad name: %v", err)
	}
	var names []string
	_ = b.List(ctx, "", func(oi storage.ObjectInfo) error { names = append(names, oi.Name); return nil })
	if len(names) != 1 || !strings.HasPrefix(names[0], "meta/") {
		t.Fatalf("objects after failed Puts: %q, want only metadata", names)
	}
	if _, err := r.Stat(ctx, "f"); !IsNotExist(err) {
		t.Fatalf("Stat after failed Put: %v", err)
	}
	if _, err := r.Get(ctx, "f"); !IsNotExist(err) {
		t.Fatalf("Get after failed Put: %v", err)
	}
}

func TestOptions(t *testing.T) {
	b := newBackend(t)
	for _, o := range []Options{{Compression: "lz4"}, {ZstdLevel: 23}, {ZstdLevel: -1}} {
		if _, _, err := Init(context.Background(), b, o); err == nil {
			t.Errorf("Init with %+v succeeded", o)
		}
	}
}

func TestInitOpen(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	_, err := Open(ctx, b, Options{})
	if !IsNotInitialized(err) || !strings.Contains(err.Error(), "synbak init") {
		t.Fatalf("Open of empty repository: %v, want IsNotInitialized mentioning synbak init", err)
	}
	r1, created, err := Init(ctx, b, Options{})
	if err != nil || !created {
		t.Fatalf("first Init: %v, %v", created, err)
	}
	m := r1.Meta()
	if m.FormatVersion != FormatVersion || m.Seq != 1 || m.SystemID != "" || m.Created.IsZero() {
		t.Fatalf("Meta after Init = %+v", m)
	}
	r2, created, err := Init(ctx, b, Options{})
	if err != nil || created {
		t.Fatalf("second Init: %v, %v; want not created", created, err)
	}
	if r2.Meta() != m {
		t.Fatalf("Meta after second Init = %+v, want %+v", r2.Meta(), m)
	}
	r3, err := Open(ctx, b, Options{})
	if err != nil || r3.Meta() != m {
		t.Fatalf("Open = %+v, %v; want %+v", r3.Meta(), err, m)
	}
}

func TestConcurrentInit(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	const n = 6
	metas := make([]Meta, n)
	created := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var r *Repo
			r, created[i], errs[i] = Init(ctx, b, Options{})
			if r != nil {
				metas[i] = r.Meta()
			}
		})
	}
	wg.Wait()
	ncreated := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Init %d: %v", i, errs[i])
		}
		if created[i] {
			ncreated++
		}
		if metas[i] != metas[0] {
			t.Errorf("Init %d sees %+v, Init 0 sees %+v", i, metas[i], metas[0])
		}
	}
	if ncreated != 1 {
		t.Errorf("%d Inits say they created the repository, want 1", ncreated)
	}
}

func TestBindSystemID(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	if err := r.BindSystemID(ctx, "not-a-number"); err == nil {
		t.Fatal("BindSystemID accepted a non-number")
	}
	const id = "7312345678901234567"
	if err := r.BindSystemID(ctx, id); err != nil {
		t.Fatal(err)
	}
	if m := r.Meta(); m.SystemID != id || m.Seq != 2 {
		t.Fatalf("Meta after bind = %+v", m)
	}
	if err := r.BindSystemID(ctx, id); err != nil {
		t.Fatalf("binding the same id again: %v", err)
	}
	err := r.BindSystemID(ctx, "42")
	if !IsWrongCluster(err) || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "42") {
		t.Fatalf("binding another id: %v, want IsWrongCluster naming both ids", err)
	}
	// Survives reopen; the superseded version is gone.
	r2, err := Open(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m := r2.Meta(); m.SystemID != id || m.Seq != 2 || !m.Created.Equal(r.Meta().Created) {
		t.Fatalf("Meta after reopen = %+v, want %+v", m, r.Meta())
	}
	var names []string
	_ = b.List(ctx, "meta/", func(oi storage.ObjectInfo) error { names = append(names, oi.Name); return nil })
	if fmt.Sprint(names) != "[meta/repo.0000000002.json]" {
		t.Fatalf("metadata objects = %q", names)
	}
	if err := r2.BindSystemID(ctx, "43"); !IsWrongCluster(err) {
		t.Fatalf("reopened repository bound to another id: %v", err)
	}
}

func TestConcurrentBind(t *testing.T) {
	ctx := context.Background()
	for round := range 10 {
		b := newBackend(t)
		if _, _, err := Init(ctx, b, Options{}); err != nil {
			t.Fatal(err)
		}
		ids := []string{"1001", "1001", "2002", "2002"}
		if round%2 == 0 {
			ids = []string{"1001", "1001"}
		}
		errs := make([]error, len(ids))
		var wg sync.WaitGroup
		for i, id := range ids {
			r, err := Open(ctx, b, Options{}) // separate instances, like separate processes
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() { errs[i] = r.BindSystemID(ctx, id) })
		}
		wg.Wait()
		r, err := Open(ctx, b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		winner := r.Meta().SystemID
		for i, id := range ids {
			switch {
			case id == winner && errs[i] != nil:
				t.Errorf("round %d: bind %s (the bound id): %v", round, id, errs[i])
			case id != winner && !IsWrongCluster(errs[i]):
				t.Errorf("round %d: bind %s (bound: %s): %v, want IsWrongCluster", round, id, winner, errs[i])
			}
		}
	}
}

func TestDamagedNewestMetadata(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	// A newer version that is not valid (here: written raw, unframed).
	if err := b.Put(ctx, "meta/repo.0000000009.json", strings.NewReader(`{"seq":9}`)); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Meta() != r.Meta() {
		t.Fatalf("Meta = %+v, want the valid older %+v", r2.Meta(), r.Meta())
	}
	// Nothing valid at all.
	if err := b.Delete(ctx, "meta/repo.0000000001.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, b, Options{}); err == nil || IsNotInitialized(err) || !IsCorrupt(err) {
		t.Fatalf("Open with only damaged metadata: %v, want IsCorrupt", err)
	}
	if _, _, err := Init(ctx, b, Options{}); err == nil {
		t.Fatal("Init over damaged metadata succeeded")
	}
}
