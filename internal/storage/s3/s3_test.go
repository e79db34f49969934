package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/s3"
	"github.com/synbak/synbak/internal/storage/s3/s3test"
	"github.com/synbak/synbak/internal/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Idle keep-alive connections of the HTTP clients.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// small makes multipart uploads start at 5 MiB so that the suite's large
// object has several parts.
func small(o s3.Options) s3.Options {
	o.PartSize = 5 << 20
	o.Parallel = 3
	return o
}

func TestConformance(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := s3.New(srv.Options(srv.NewBucket(t), ""))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformancePrefixSmallParts(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		bucket := srv.NewBucket(t)
		// Another object beside the prefix must not show.
		other, err := s3.New(srv.Options(bucket, "other"))
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Put(context.Background(), "x", strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		b, err := s3.New(small(srv.Options(bucket, "/repos/one/")))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestConformanceWithRetry(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := s3.New(small(srv.Options(srv.NewBucket(t), "p")))
		if err != nil {
			t.Fatal(err)
		}
		return storage.WithRetry(b, storage.RetryOptions{Backoff: time.Millisecond})
	})
}

func TestString(t *testing.T) {
	b, err := s3.New(s3.Options{Endpoint: "minio.example.org:9000", Bucket: "bk", Prefix: "a/b", AccessKeyID: "id", SecretAccessKey: "topsecret"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "s3://bk/a/b at https://minio.example.org:9000"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for _, ep := range []string{"https://x/path", "ftp://x", "user:pw@x", "http://user:pw@x"} {
		_, err := s3.New(s3.Options{Endpoint: ep, Bucket: "bk"})
		if err == nil {
			t.Errorf("endpoint %q accepted", ep)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("endpoint error shows a password: %v", err)
		}
	}
	if _, err := s3.New(s3.Options{Endpoint: "https://x", Insecure: true, Bucket: "bk"}); err == nil {
		t.Error("https endpoint with insecure accepted")
	}
}

func noSecret(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), s3test.SecretKey) {
		t.Errorf("error contains the secret key: %v", err)
	}
}

func TestMissingBucket(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b, err := s3.New(srv.Options("no-such-bucket", "p"))
	if err != nil {
		t.Fatal(err)
	}
	err = b.Check(ctx)
	if !s3.IsNoBucket(err) || !storage.IsPermanent(err) {
		t.Fatalf("Check error = %v, want IsNoBucket", err)
	}
	if !strings.Contains(err.Error(), `"no-such-bucket"`) || !strings.Contains(err.Error(), srv.Endpoint) {
		t.Errorf("error does not name the bucket and endpoint: %v", err)
	}
	noSecret(t, err)
	// Every operation says so; Stat in particular must not say "no object".
	if _, err := b.Stat(ctx, "x"); !s3.IsNoBucket(err) || storage.IsNotExist(err) {
		t.Errorf("Stat error = %v, want IsNoBucket", err)
	}
	if _, err := b.Get(ctx, "x", 0, -1); !s3.IsNoBucket(err) {
		t.Errorf("Get error = %v, want IsNoBucket", err)
	}
	if err := b.Put(ctx, "x", strings.NewReader("data")); !s3.IsNoBucket(err) {
		t.Errorf("Put error = %v, want IsNoBucket", err)
	}
	if err := b.List(ctx, "", func(storage.ObjectInfo) error { return nil }); !s3.IsNoBucket(err) {
		t.Errorf("List error = %v, want IsNoBucket", err)
	}
	if err := b.Delete(ctx, "x"); !s3.IsNoBucket(err) {
		t.Errorf("Delete error = %v, want IsNoBucket", err)
	}
}

func TestWrongCredentials(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	bucket := srv.NewBucket(t)
	for _, tc := range []struct{ name, id, secret string }{
		{"wrong secret", s3test.AccessKey, "not-the-secret-at-all"},
		{"unknown key id", "nobody", s3test.SecretKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := srv.Options(bucket, "")
			o.AccessKeyID, o.SecretAccessKey = tc.id, tc.secret
			b, err := s3.New(o)
			if err != nil {
				t.Fatal(err)
			}
			err = b.Check(ctx)
			if !storage.IsAccess(err) || !storage.IsPermanent(err) {
				t.Fatalf("Check error = %v, want IsAccess", err)
			}
			if !strings.Contains(err.Error(), bucket) || !strings.Contains(err.Error(), srv.Endpoint) {
				t.Errorf("error does not name the bucket and endpoint: %v", err)
			}
			noSecret(t, err)
			if strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error contains the secret: %v", err)
			}
			if err := b.Put(ctx, "x", strings.NewReader("data")); !storage.IsAccess(err) {
				t.Errorf("Put error = %v, want IsAccess", err)
			}
			if _, err := b.Stat(ctx, "x"); !storage.IsAccess(err) {
				t.Errorf("Stat error = %v, want IsAccess", err)
			}
		})
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	srv := s3test.Start(t)
	o := srv.Options(srv.NewBucket(t), "")
	srv.Stop()
	o.MaxRetries = 1
	b, err := s3.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = b.Check(ctx)
	if !storage.IsUnreachable(err) || storage.IsPermanent(err) {
		t.Fatalf("Check error = %v, want IsUnreachable and not permanent", err)
	}
	if !strings.Contains(err.Error(), srv.Endpoint) {
		t.Errorf("error does not name the endpoint: %v", err)
	}
	noSecret(t, err)
	if _, err := b.Stat(ctx, "x"); !storage.IsUnreachable(err) || storage.IsNotExist(err) {
		t.Errorf("Stat error = %v, want IsUnreachable", err)
	}
}

// TestMultipartLarge streams an object of many parts through a reader of
// unknown length and reads it back whole and in ranges across part
// boundaries.
func TestMultipartLarge(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b, err := s3.New(small(srv.Options(srv.NewBucket(t), "big")))
	if err != nil {
		t.Fatal(err)
	}
	const size = 15<<20 + 777 // four parts of 5 MiB, the last short
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
	if err := b.Put(ctx, "base/part.0001", onlyReader{bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	wantRead(t, b, "base/part.0001", 0, -1, data)
	for _, r := range []struct{ off, n int64 }{{5<<20 - 10, 20}, {10 << 20, 5 << 20}, {size - 5, -1}, {size - 5, 100}, {size, -1}} {
		end := int64(size)
		if r.n >= 0 && r.off+r.n < end {
			end = r.off + r.n
		}
		wantRead(t, b, "base/part.0001", r.off, r.n, data[r.off:end])
	}
	// Identical again: success (it compares without uploading).
	if err := b.Put(ctx, "base/part.0001", onlyReader{bytes.NewReader(data)}); err != nil {
		t.Fatalf("identical re-Put: %v", err)
	}
	// One byte different, deep in a later part: a conflict, nothing changed.
	other := bytes.Clone(data)
	other[15<<20] ^= 1
	if err := b.Put(ctx, "base/part.0001", onlyReader{bytes.NewReader(other)}); !storage.IsConflict(err) {
		t.Fatalf("different re-Put: error = %v, want IsConflict", err)
	}
	wantRead(t, b, "base/part.0001", 0, -1, data)
	// No upload is left behind.
	uploads := 0
	for u := range srv.Client(t).ListIncompleteUploads(ctx, bucketOf(t, b), "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		uploads++
	}
	if uploads != 0 {
		t.Errorf("%d incomplete multipart uploads left", uploads)
	}
}

// TestMultipartConditionalComplete races two multipart uploads of
// different content: the condition at completion lets exactly one win.
func TestMultipartConcurrentDifferent(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b, err := s3.New(small(srv.Options(srv.NewBucket(t), "")))
	if err != nil {
		t.Fatal(err)
	}
	datas := [][]byte{make([]byte, 12<<20), make([]byte, 12<<20)}
	datas[1][0] = 1
	errs := make(chan error, 2)
	for _, d := range datas {
		go func() { errs <- b.Put(ctx, "obj", onlyReader{bytes.NewReader(d)}) }()
	}
	var ok, conflicts int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case storage.IsConflict(err):
			conflicts++
		default:
			t.Errorf("Put: %v", err)
		}
	}
	if ok != 1 || conflicts != 1 {
		t.Fatalf("%d successes and %d conflicts, want one of each", ok, conflicts)
	}
}

func bucketOf(t *testing.T, b *s3.Backend) string {
	t.Helper()
	s := strings.TrimPrefix(b.String(), "s3://")
	return s[:strings.IndexByte(s, '/')]
}

type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func wantRead(t *testing.T, b storage.Backend, name string, off, n int64, want []byte) {
	t.Helper()
	rc, err := b.Get(context.Background(), name, off, n)
	if err != nil {
		t.Fatalf("Get(%d, %d): %v", off, n, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%d, %d): read: %v", off, n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%d, %d) = %d bytes (sha256 %x), want %d bytes (sha256 %x)", off, n,
			len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// TestNoConditionalWrites: on a server that ignores If-None-Match the
// backend says so once and checks before writing.
func TestNoConditionalWrites(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	var logs bytes.Buffer
	o := small(srv.Options(srv.NewBucket(t), "p"))
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	b, err := s3.New(o)
	if err != nil {
		t.Fatal(err)
	}
	s3.IgnoreConditionForTest(b)
	if err := b.Put(ctx, "a", strings.NewReader("one")); err != nil {
		t.Fatal(err)
	}
	if known, cond := s3.ConditionalForTest(b); !known || cond {
		t.Fatalf("probe: known %t, conditional %t; want known and not conditional", known, cond)
	}
	if !strings.Contains(logs.String(), "does not honour conditional writes") {
		t.Errorf("no warning logged: %q", logs.String())
	}
	if err := b.Put(ctx, "a", strings.NewReader("one")); err != nil {
		t.Errorf("identical re-Put: %v", err)
	}
	if err := b.Put(ctx, "a", strings.NewReader("two")); !storage.IsConflict(err) {
		t.Errorf("different re-Put: error = %v, want IsConflict", err)
	}
	wantRead(t, b, "a", 0, -1, []byte("one"))
	big := make([]byte, 11<<20)
	if err := b.Put(ctx, "big", onlyReader{bytes.NewReader(big)}); err != nil {
		t.Fatal(err)
	}
	big[len(big)-1] = 1
	if err := b.Put(ctx, "big", onlyReader{bytes.NewReader(big)}); !storage.IsConflict(err) {
		t.Errorf("different multipart re-Put: error = %v, want IsConflict", err)
	}
	// The probe object is gone.
	var keys []string
	for oi := range srv.Client(t).ListObjectsIter(ctx, bucketOf(t, b), minio.ListObjectsOptions{Recursive: true}) {
		keys = append(keys, oi.Key)
	}
	if strings.Join(keys, " ") != "p/a p/big" {
		t.Errorf("bucket holds %q, want p/a and p/big", keys)
	}

	// A server that honours the condition is detected as such.
	b2, err := s3.New(srv.Options(bucketOf(t, b), "q"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Put(ctx, "x", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if known, cond := s3.ConditionalForTest(b2); !known || !cond {
		t.Fatalf("versitygw probe: known %t, conditional %t; want both", known, cond)
	}
}

var errBroken = errors.New("reader broke on purpose")

type breakAfter struct {
	r io.Reader
}

func (b breakAfter) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, errBroken
	}
	return n, err
}

// TestMultipartAborted: a stream that fails or is cancelled after several
// parts leaves neither an object nor an open multipart upload.
func TestMultipartAborted(t *testing.T) {
	srv := s3test.Start(t)
	b, err := s3.New(small(srv.Options(srv.NewBucket(t), "")))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 17<<20)
	err = b.Put(context.Background(), "failed", breakAfter{bytes.NewReader(data)})
	if !errors.Is(err, errBroken) {
		t.Fatalf("Put with a failing reader: error = %v, want %v", err, errBroken)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &cancelAfter{r: bytes.NewReader(data), after: 12 << 20, cancel: cancel}
	if err := b.Put(ctx, "cancelled", r); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: error = %v, want context.Canceled", err)
	}
	for _, n := range []string{"failed", "cancelled"} {
		if _, err := b.Stat(context.Background(), n); !storage.IsNotExist(err) {
			t.Errorf("Stat(%s) = %v, want IsNotExist", n, err)
		}
	}
	for u := range srv.Client(t).ListIncompleteUploads(context.Background(), bucketOf(t, b), "", true) {
		t.Errorf("incomplete upload left: %+v", u)
	}
}

// cancelAfter cancels its context once `after` bytes were read.
type cancelAfter struct {
	r      io.Reader
	after  int
	read   int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	if c.read >= c.after {
		c.cancel()
	}
	return n, err
}

// TestPutSizes round-trips objects at the edges of the part size (5 MiB
// here): empty, one part exactly (a single PUT), one byte more (a
// multipart upload of a full part and a 1-byte part), through a stream, a
// seekable reader not at its start and WithRetry's buffer; identical
// re-Puts succeed and different ones conflict, and a seekable reader is
// left at its end either way.
func TestPutSizes(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b, err := s3.New(small(srv.Options(srv.NewBucket(t), "sizes")))
	if err != nil {
		t.Fatal(err)
	}
	rb := storage.WithRetry(b, storage.RetryOptions{Backoff: time.Millisecond})
	const part = 5 << 20
	for _, size := range []int{0, 1, part - 1, part, part + 1, 2*part + 1} {
		data := make([]byte, size+3)
		_, _ = rand.NewChaCha8([32]byte{byte(size), byte(size >> 8)}).Read(data)
		data = data[3:] // the seekable reader starts at 3
		puts := []struct {
			how string
			be  storage.Backend
			rd  func(d []byte) io.Reader
		}{
			{"stream", b, func(d []byte) io.Reader { return onlyReader{bytes.NewReader(d)} }},
			{"seeker", b, func(d []byte) io.Reader {
				r := bytes.NewReader(append([]byte("xyz"), d...))
				_, _ = r.Seek(3, io.SeekStart)
				return r
			}},
			{"retry", rb, func(d []byte) io.Reader { return onlyReader{bytes.NewReader(d)} }},
			{"retry-seeker", rb, func(d []byte) io.Reader {
				r := bytes.NewReader(append([]byte("xyz"), d...))
				_, _ = r.Seek(3, io.SeekStart)
				return r
			}},
		}
		for _, p := range puts {
			name := fmt.Sprintf("%s-%d", p.how, size)
			rd := p.rd(data)
			if err := p.be.Put(ctx, name, rd); err != nil {
				t.Fatalf("Put %s: %v", name, err)
			}
			if br, ok := rd.(*bytes.Reader); ok && br.Len() != 0 {
				t.Errorf("Put %s left %d bytes unread", name, br.Len())
			}
			wantRead(t, b, name, 0, -1, data)
			rd = p.rd(data)
			if err := p.be.Put(ctx, name, rd); err != nil {
				t.Fatalf("identical re-Put %s: %v", name, err)
			}
			if br, ok := rd.(*bytes.Reader); ok && br.Len() != 0 {
				t.Errorf("identical re-Put %s left %d bytes unread", name, br.Len())
			}
			other := append(bytes.Clone(data), 'x')
			if size > 0 {
				other = bytes.Clone(data)
				other[size-1] ^= 1
			}
			if err := p.be.Put(ctx, name, p.rd(other)); !storage.IsConflict(err) {
				t.Fatalf("different re-Put %s: error = %v, want IsConflict", name, err)
			}
			wantRead(t, b, name, 0, -1, data)
		}
	}
}

// TestConcurrentPuts: many Puts at once, of sizes on both sides of the
// part size, through every path; each object reads back as its own bytes
// (pooled chunks are never shared by two Puts: the pool would panic, and
// the contents mix).
func TestConcurrentPuts(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b, err := s3.New(small(srv.Options(srv.NewBucket(t), "")))
	if err != nil {
		t.Fatal(err)
	}
	rb := storage.WithRetry(b, storage.RetryOptions{Backoff: time.Millisecond})
	sizes := []int{0, 100, 300 << 10, 1<<20 + 5, 5 << 20, 5<<20 + 1, 11 << 20}
	type obj struct {
		name string
		data []byte
	}
	var objs []obj
	for g := range 6 {
		for i, size := range sizes {
			data := make([]byte, size)
			_, _ = rand.NewChaCha8([32]byte{byte(g), byte(i), 1}).Read(data)
			objs = append(objs, obj{fmt.Sprintf("c/%d-%d", g, i), data})
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(objs))
	for i, o := range objs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				err = b.Put(ctx, o.name, onlyReader{bytes.NewReader(o.data)})
			case 1:
				err = b.Put(ctx, o.name, bytes.NewReader(o.data))
			default:
				err = rb.Put(ctx, o.name, onlyReader{bytes.NewReader(o.data)})
			}
			if err != nil {
				errs <- fmt.Errorf("Put %s: %w", o.name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, o := range objs {
		wantRead(t, b, o.name, 0, -1, o.data)
	}
}
