package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/storage/storagetest"
)

func newLocal(t *testing.T) storage.Backend {
	t.Helper()
	b, err := local.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRetryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return storage.WithRetry(newLocal(t), storage.RetryOptions{Backoff: time.Millisecond})
	})
}

var errTransient = errors.New("connection reset by peer (injected)")

// flaky fails the first `fail` calls of every operation with err; a failing
// Put first reads half of its input, as an upload cut off midway would.
type flaky struct {
	storage.Backend
	fail  int64
	err   error
	calls atomic.Int64
}

func (f *flaky) failNow() bool { return f.calls.Add(1) <= f.fail }

func (f *flaky) Put(ctx context.Context, name string, r io.Reader) error {
	if f.failNow() {
		_, _ = io.CopyN(io.Discard, r, 3)
		return fmt.Errorf("put %s: %w", name, f.err)
	}
	return f.Backend.Put(ctx, name, r)
}

func (f *flaky) Get(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if f.failNow() {
		return nil, f.err
	}
	return f.Backend.Get(ctx, name, off, n)
}

func (f *flaky) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if f.failNow() {
		return storage.ObjectInfo{}, f.err
	}
	return f.Backend.Stat(ctx, name)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if f.failNow() {
		return f.err
	}
	return f.Backend.List(ctx, prefix, fn)
}

func (f *flaky) Delete(ctx context.Context, name string) error {
	if f.failNow() {
		return f.err
	}
	return f.Backend.Delete(ctx, name)
}

type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func fastRetry() storage.RetryOptions {
	return storage.RetryOptions{Attempts: 4, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
}

func content(t *testing.T, b storage.Backend, name string) string {
	t.Helper()
	rc, err := b.Get(context.Background(), name, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestRetryTransient(t *testing.T) {
	ctx := context.Background()
	readers := map[string]func() io.Reader{
		"seeker":   func() io.Reader { return strings.NewReader("hello, retry") },
		"buffered": func() io.Reader { return onlyReader{strings.NewReader("hello, retry")} },
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			f := &flaky{Backend: newLocal(t), fail: 3, err: errTransient}
			var retries int
			opts := fastRetry()
			opts.OnRetry = func(op, n string, attempt int, wait time.Duration, err error) { retries++ }
			b := storage.WithRetry(f, opts)
			if err := b.Put(ctx, "obj", mk()); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if got := content(t, f.Backend, "obj"); got != "hello, retry" {
				t.Fatalf("stored %q after retries", got)
			}
			if f.calls.Load() != 4 || retries != 3 {
				t.Fatalf("%d calls, %d retries; want 4 and 3", f.calls.Load(), retries)
			}
		})
	}
	t.Run("other operations", func(t *testing.T) {
		base := newLocal(t)
		if err := base.Put(ctx, "a/obj", strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		f := &flaky{Backend: base, err: errTransient}
		b := storage.WithRetry(f, fastRetry())
		f.calls.Store(0)
		f.fail = 2
		if oi, err := b.Stat(ctx, "a/obj"); err != nil || oi.Size != 1 {
			t.Fatalf("Stat = %+v, %v", oi, err)
		}
		f.calls.Store(0)
		rc, err := b.Get(ctx, "a/obj", 0, -1)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		rc.Close()
		f.calls.Store(0)
		n := 0
		if err := b.List(ctx, "a/", func(storage.ObjectInfo) error { n++; return nil }); err != nil || n != 1 {
			t.Fatalf("List: %d names, %v", n, err)
		}
		f.calls.Store(0)
		if err := b.Delete(ctx, "a/obj"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	})
}

func TestRetryGivesUp(t *testing.T) {
	f := &flaky{Backend: newLocal(t), fail: 100, err: errTransient}
	err := storage.WithRetry(f, fastRetry()).Put(context.Background(), "obj", strings.NewReader("x"))
	if !errors.Is(err, errTransient) {
		t.Fatalf("error = %v, want the transient error", err)
	}
	if f.calls.Load() != 4 {
		t.Fatalf("%d calls, want 4 (Attempts)", f.calls.Load())
	}
}

func TestRetryNotPermanent(t *testing.T) {
	for _, perm := range []error{
		storage.ErrConflict, storage.ErrNotExist, storage.ErrAccess, storage.ErrBadName,
		storage.Permanent(errors.New("bucket missing")),
	} {
		f := &flaky{Backend: newLocal(t), fail: 100, err: fmt.Errorf("wrapped: %w", perm)}
		b := storage.WithRetry(f, fastRetry())
		if err := b.Put(context.Background(), "obj", strings.NewReader("x")); !errors.Is(err, perm) {
			t.Errorf("Put error = %v, want %v", err, perm)
		}
		if _, err := b.Stat(context.Background(), "obj"); !errors.Is(err, perm) {
			t.Errorf("Stat error = %v, want %v", err, perm)
		}
		if n := f.calls.Load(); n != 2 {
			t.Errorf("%v: %d calls for Put and Stat, want 2 (no retries)", perm, n)
		}
	}
}

// A stream longer than the buffer limit that cannot seek gets one try: its
// bytes are gone once read.
func TestRetryUnseekableLongStream(t *testing.T) {
	f := &flaky{Backend: newLocal(t), fail: 1, err: errTransient}
	opts := fastRetry()
	opts.BufferLimit = 1000
	b := storage.WithRetry(f, opts)
	data := bytes.Repeat([]byte("z"), 5000)
	if err := b.Put(context.Background(), "obj", onlyReader{bytes.NewReader(data)}); !errors.Is(err, errTransient) {
		t.Fatalf("Put error = %v, want the transient error", err)
	}
	if f.calls.Load() != 1 {
		t.Fatalf("%d calls, want 1", f.calls.Load())
	}
	// Within the limit it is buffered and retried.
	f.calls.Store(0)
	if err := b.Put(context.Background(), "obj", onlyReader{bytes.NewReader(data[:1000])}); err != nil {
		t.Fatalf("Put of 1000 bytes: %v", err)
	}
}

type failingSeeker struct {
	*strings.Reader
}

var errRead = errors.New("reader broke")

func (f failingSeeker) Read(p []byte) (int, error) {
	n, err := f.Reader.Read(p)
	if err == io.EOF {
		return n, errRead
	}
	return n, err
}

func TestRetryReaderErrorNotRetried(t *testing.T) {
	f := &flaky{Backend: newLocal(t), err: errTransient}
	b := storage.WithRetry(f, fastRetry())
	err := b.Put(context.Background(), "obj", failingSeeker{strings.NewReader("data")})
	if !errors.Is(err, errRead) || f.calls.Load() != 1 {
		t.Fatalf("Put error = %v after %d calls, want %v after 1", err, f.calls.Load(), errRead)
	}
	err = b.Put(context.Background(), "obj2", onlyReader{failingSeeker{strings.NewReader("data")}})
	if !errors.Is(err, errRead) || f.calls.Load() != 1 {
		t.Fatalf("buffered Put error = %v after %d calls, want %v and no call", err, f.calls.Load(), errRead)
	}
}

func TestRetryHonoursContext(t *testing.T) {
	f := &flaky{Backend: newLocal(t), fail: 100, err: errTransient}
	b := storage.WithRetry(f, storage.RetryOptions{Attempts: 10, Backoff: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Stat(ctx, "obj")
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errTransient) {
		t.Fatalf("error = %v, want the transient error and the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s despite the deadline", d)
	}
}

func TestRetryListAfterCallbackNotRepeated(t *testing.T) {
	base := newLocal(t)
	for _, n := range []string{"l/1", "l/2"} {
		if err := base.Put(context.Background(), n, strings.NewReader(n)); err != nil {
			t.Fatal(err)
		}
	}
	midway := &failMidList{Backend: base}
	b := storage.WithRetry(midway, fastRetry())
	var seen []string
	err := b.List(context.Background(), "l/", func(oi storage.ObjectInfo) error { seen = append(seen, oi.Name); return nil })
	if !errors.Is(err, errTransient) || len(seen) != 1 || midway.calls != 1 {
		t.Fatalf("List = %v after %d calls, saw %q; want the error after one call and one name", err, midway.calls, seen)
	}
}

type failMidList struct {
	storage.Backend
	calls int
}

func (f *failMidList) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	f.calls++
	return f.Backend.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if err := fn(oi); err != nil {
			return err
		}
		return errTransient
	})
}

// brokenReads makes the first `breaks` readers it opens fail after 1000
// bytes, as a connection reset during a download would.
type brokenReads struct {
	storage.Backend
	breaks int
	opens  []int64
}

func (b *brokenReads) Get(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	rc, err := b.Backend.Get(ctx, name, off, n)
	if err != nil {
		return nil, err
	}
	b.opens = append(b.opens, off)
	if len(b.opens) <= b.breaks {
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(io.LimitReader(rc, 1000), failing{}), rc}, nil
	}
	return rc, nil
}

type failing struct{}

func (failing) Read([]byte) (int, error) { return 0, errTransient }

func TestRetryResumesReads(t *testing.T) {
	ctx := context.Background()
	base := newLocal(t)
	data := make([]byte, 10_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := base.Put(ctx, "obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{0, -1}, {500, 5000}, {2000, -1}} {
		br := &brokenReads{Backend: base, breaks: 3}
		b := storage.WithRetry(br, fastRetry())
		rc, err := b.Get(ctx, "obj", c.off, c.n)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		end := int64(len(data))
		if c.n >= 0 {
			end = c.off + c.n
		}
		if err != nil || !bytes.Equal(got, data[c.off:end]) {
			t.Fatalf("Get(%d, %d) through 3 broken reads: %d bytes, %v", c.off, c.n, len(got), err)
		}
		if want := fmt.Sprint([]int64{c.off, c.off + 1000, c.off + 2000, c.off + 3000}); fmt.Sprint(br.opens) != want {
			t.Errorf("opened at %v, want %s", br.opens, want)
		}
	}
	// Failures that make no progress (here at the end of the object) run
	// out of attempts: the error comes through.
	br := &brokenReads{Backend: base, breaks: 100}
	rc, err := storage.WithRetry(br, fastRetry()).Get(ctx, "obj", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, errTransient) {
		t.Fatalf("read error = %v, want the transient error", err)
	}
}

// TestBuffer fills Buffers across chunk boundaries and reads them back
// with Reader (with seeks) and Each; concurrent Buffers never share a
// chunk (the pool panics on a chunk handed out twice, and the contents
// would mix).
func TestBuffer(t *testing.T) {
	ctx := context.Background()
	const chunk = 256 << 10
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, size := range []int{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 17, 5 << 20} {
				data := make([]byte, size)
				_, _ = rand.NewChaCha8([32]byte{byte(g), byte(i)}).Read(data)
				var b storage.Buffer
				// A limit below the size stops there, not at EOF.
				if size > 0 {
					eof, err := b.Fill(ctx, iotest.HalfReader(bytes.NewReader(data)), int64(size-1))
					if err != nil || eof || b.Len() != int64(size-1) {
						t.Errorf("Fill(limit %d) = %v, %v, Len %d", size-1, eof, err, b.Len())
						return
					}
				}
				eof, err := b.Fill(ctx, iotest.HalfReader(bytes.NewReader(data[b.Len():])), -1)
				if err != nil || !eof || b.Len() != int64(size) {
					t.Errorf("Fill = %v, %v, Len %d, want EOF and %d", eof, err, b.Len(), size)
					return
				}
				var each []byte
				b.Each(func(p []byte) { each = append(each, p...) })
				rd := b.Reader()
				got, err := io.ReadAll(iotest.HalfReader(rd))
				if err != nil || !bytes.Equal(got, data) || !bytes.Equal(each, data) {
					t.Errorf("size %d: read back %d and %d bytes (%v), differ", size, len(got), len(each), err)
				}
				if size > 10 {
					if _, err := rd.Seek(-10, io.SeekEnd); err != nil {
						t.Error(err)
					}
					tail, _ := io.ReadAll(rd)
					if !bytes.Equal(tail, data[size-10:]) {
						t.Errorf("size %d: after Seek(-10, End) read %d bytes, differ", size, len(tail))
					}
				}
				b.Release()
				b.Release() // idempotent
				if b.Len() != 0 {
					t.Errorf("Len after Release = %d", b.Len())
				}
			}
		}()
	}
	wg.Wait()
}

// TestRetryPutLongStream: a non-seekable stream longer than the buffer
// limit is passed through once, whole, after the buffered start.
func TestRetryPutLongStream(t *testing.T) {
	ctx := context.Background()
	b := storage.WithRetry(newLocal(t), storage.RetryOptions{BufferLimit: 300 << 10, Backoff: time.Millisecond})
	for _, size := range []int{300 << 10, 300<<10 + 1, 3 << 20} {
		data := make([]byte, size)
		_, _ = rand.NewChaCha8([32]byte{byte(size)}).Read(data)
		name := fmt.Sprintf("long-%d", size)
		if err := b.Put(ctx, name, onlyReader{bytes.NewReader(data)}); err != nil {
			t.Fatal(err)
		}
		rc, err := b.Get(ctx, name, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back %d bytes (%v), differ", size, len(got), err)
		}
	}
}
