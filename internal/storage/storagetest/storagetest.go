// Package storagetest is the conformance suite every storage.Backend must
// pass. A backend's test calls Run with a constructor that returns a fresh,
// empty backend for each subtest.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/synbak/synbak/internal/storage"
)

// LargeSize is the size of the object streamed by the large round-trip test.
const LargeSize = 20<<20 + 12345

// Run runs the conformance suite as subtests of t. newBackend must return an
// empty backend; it is called once per subtest.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"RoundTripSmall", testRoundTripSmall},
		{"RoundTripLarge", testRoundTripLarge},
		{"Empty", testEmpty},
		{"IdenticalRePut", testIdenticalRePut},
		{"Conflict", testConflict},
		{"ConcurrentIdentical", testConcurrentIdentical},
		{"ConcurrentDifferent", testConcurrentDifferent},
		{"GetRange", testGetRange},
		{"Stat", testStat},
		{"Missing", testMissing},
		{"List", testList},
		{"ListStop", testListStop},
		{"Delete", testDelete},
		{"BadNames", testBadNames},
		{"FailingReader", testFailingReader},
		{"CancelledContext", testCancelledContext},
		{"CancelledMidPut", testCancelledMidPut},
		{"SyncGroup", testSyncGroup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newBackend(t))
		})
	}
}

// onlyReader hides every method but Read, so the backend cannot learn the
// length in advance.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seedOf(seed)).Read(b)
	return b
}

func seedOf(s uint64) [32]byte {
	var seed [32]byte
	for i := range 8 {
		seed[i] = byte(s >> (8 * i))
	}
	return seed
}

func put(t *testing.T, b storage.Backend, name string, data []byte) {
	t.Helper()
	if err := b.Put(context.Background(), name, onlyReader{bytes.NewReader(data)}); err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
}

func get(t *testing.T, b storage.Backend, name string, off, length int64) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), name, off, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", name, off, length, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): read: %v", name, off, length, err)
	}
	return data
}

func wantContent(t *testing.T, b storage.Backend, name string, want []byte) {
	t.Helper()
	got := get(t, b, name, 0, -1)
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func listNames(t *testing.T, b storage.Backend, prefix string) []string {
	t.Helper()
	names := []string{}
	err := b.List(context.Background(), prefix, func(oi storage.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return names
}

func wantMissing(t *testing.T, b storage.Backend, name string) {
	t.Helper()
	if _, err := b.Stat(context.Background(), name); !storage.IsNotExist(err) {
		t.Fatalf("Stat(%q) error = %v, want IsNotExist", name, err)
	}
	if names := listNames(t, b, ""); len(names) != 0 {
		t.Fatalf("List after failed Put = %q, want nothing", names)
	}
}

func testRoundTripSmall(t *testing.T, b storage.Backend) {
	data := []byte("hello, repository\n")
	put(t, b, "a/b/small", data)
	wantContent(t, b, "a/b/small", data)
	put(t, b, "top", data[:5])
	wantContent(t, b, "top", data[:5])
}

func testRoundTripLarge(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	src := io.LimitReader(rand.NewChaCha8(seedOf(42)), LargeSize)
	want := sha256.New()
	if err := b.Put(ctx, "large/object", onlyReader{io.TeeReader(src, want)}); err != nil {
		t.Fatalf("Put large: %v", err)
	}
	rc, err := b.Get(ctx, "large/object", 0, -1)
	if err != nil {
		t.Fatalf("Get large: %v", err)
	}
	defer rc.Close()
	got := sha256.New()
	n, err := io.Copy(got, rc)
	if err != nil {
		t.Fatalf("read large: %v", err)
	}
	if n != LargeSize || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("large object read back as %d bytes sha256 %x, want %d bytes sha256 %x", n, got.Sum(nil), LargeSize, want.Sum(nil))
	}
	oi, err := b.Stat(ctx, "large/object")
	if err != nil || oi.Size != LargeSize {
		t.Fatalf("Stat large = %+v, %v; want size %d", oi, err, LargeSize)
	}
}

func testEmpty(t *testing.T, b storage.Backend) {
	put(t, b, "empty", nil)
	wantContent(t, b, "empty", []byte{})
	oi, err := b.Stat(context.Background(), "empty")
	if err != nil || oi.Size != 0 || oi.Name != "empty" {
		t.Fatalf("Stat(empty) = %+v, %v; want size 0", oi, err)
	}
	if names := listNames(t, b, ""); len(names) != 1 || names[0] != "empty" {
		t.Fatalf("List = %q, want [empty]", names)
	}
}

func testIdenticalRePut(t *testing.T, b storage.Backend) {
	data := randomBytes(1, 100_000)
	put(t, b, "x/same", data)
	put(t, b, "x/same", data)
	wantContent(t, b, "x/same", data)
	put(t, b, "x/empty", nil)
	put(t, b, "x/empty", nil)
}

func testConflict(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	orig := []byte("original content")
	put(t, b, "c/obj", orig)
	for _, other := range [][]byte{[]byte("different content"), []byte("original conten"), []byte("original content!"), nil} {
		err := b.Put(ctx, "c/obj", onlyReader{bytes.NewReader(other)})
		if !storage.IsConflict(err) {
			t.Fatalf("Put of different content (%q) error = %v, want IsConflict", other, err)
		}
		wantContent(t, b, "c/obj", orig)
	}
	if names := listNames(t, b, ""); len(names) != 1 {
		t.Fatalf("List after conflicts = %q, want one object", names)
	}
}

func testConcurrentIdentical(t *testing.T, b storage.Backend) {
	data := randomBytes(2, 300_000)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = b.Put(context.Background(), "cc/same", onlyReader{bytes.NewReader(data)})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Put %d: %v", i, err)
		}
	}
	wantContent(t, b, "cc/same", data)
}

func testConcurrentDifferent(t *testing.T, b storage.Backend) {
	const n = 8
	datas := make([][]byte, n)
	for i := range datas {
		datas[i] = randomBytes(uint64(100+i), 200_000)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = b.Put(context.Background(), "cd/obj", onlyReader{bytes.NewReader(datas[i])})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("Puts %d and %d of different content both succeeded", winner, i)
			}
			winner = i
		case !storage.IsConflict(err):
			t.Errorf("Put %d error = %v, want nil or IsConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no Put succeeded: %v", errs)
	}
	wantContent(t, b, "cd/obj", datas[winner])
}

func testGetRange(t *testing.T, b storage.Backend) {
	data := randomBytes(3, 1_000_000)
	put(t, b, "r/obj", data)
	cases := []struct{ off, length int64 }{
		{0, -1}, {0, 10}, {10, 100}, {999_990, 10}, {999_990, -1}, {500_000, 0}, {123_456, 400_000},
		{999_990, 100}, // length past the end: read to the end
	}
	for _, c := range cases {
		end := int64(len(data))
		if c.length >= 0 && c.off+c.length < end {
			end = c.off + c.length
		}
		got := get(t, b, "r/obj", c.off, c.length)
		if !bytes.Equal(got, data[c.off:end]) {
			t.Errorf("Get(off %d, len %d) = %d bytes, want %d bytes of data[%d:%d]", c.off, c.length, len(got), end-c.off, c.off, end)
		}
	}
}

func testStat(t *testing.T, b storage.Backend) {
	put(t, b, "s/obj", randomBytes(4, 4321))
	oi, err := b.Stat(context.Background(), "s/obj")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if oi.Name != "s/obj" || oi.Size != 4321 || oi.ModTime.IsZero() {
		t.Fatalf("Stat = %+v, want name s/obj, size 4321, a modification time", oi)
	}
}

func testMissing(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	put(t, b, "m/present", []byte("x"))
	for _, name := range []string{"m/absent", "absent", "m", "m/present/below", "n/o/p"} {
		if _, err := b.Stat(ctx, name); !storage.IsNotExist(err) {
			t.Errorf("Stat(%q) error = %v, want IsNotExist", name, err)
		}
		rc, err := b.Get(ctx, name, 0, -1)
		if !storage.IsNotExist(err) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("Get(%q) error = %v, want IsNotExist", name, err)
		}
	}
}

// testList checks prefixes and order. No name is also a "directory" of
// another name ("a" and "a/b"): a file system cannot hold both.
func testList(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	names := []string{
		"wal/00000001/000000010000000000000003",
		"wal/00000001/000000010000000000000001",
		"wal/00000002/000000020000000000000004",
		"wal/00000002.history",
		"wal-x",
		"wal/0000001a/x",
		"base/2026/backup.tar",
		"base/2026/backup.tar.1",
		"a-b",
		"a/b",
		"a.b",
	}
	for _, n := range names {
		put(t, b, n, []byte(n))
	}
	cases := []struct {
		prefix string
		want   []string
	}{
		{"", []string{
			"a-b", "a.b", "a/b",
			"base/2026/backup.tar", "base/2026/backup.tar.1",
			"wal-x",
			"wal/00000001/000000010000000000000001",
			"wal/00000001/000000010000000000000003",
			"wal/00000002.history",
			"wal/00000002/000000020000000000000004",
			"wal/0000001a/x",
		}},
		{"wal/", []string{
			"wal/00000001/000000010000000000000001",
			"wal/00000001/000000010000000000000003",
			"wal/00000002.history",
			"wal/00000002/000000020000000000000004",
			"wal/0000001a/x",
		}},
		{"wal/0000000", []string{
			"wal/00000001/000000010000000000000001",
			"wal/00000001/000000010000000000000003",
			"wal/00000002.history",
			"wal/00000002/000000020000000000000004",
		}},
		{"wal/00000002", []string{"wal/00000002.history", "wal/00000002/000000020000000000000004"}},
		{"wal/00000001/0000000100000000000000", []string{
			"wal/00000001/000000010000000000000001",
			"wal/00000001/000000010000000000000003",
		}},
		{"wal", []string{
			"wal-x",
			"wal/00000001/000000010000000000000001",
			"wal/00000001/000000010000000000000003",
			"wal/00000002.history",
			"wal/00000002/000000020000000000000004",
			"wal/0000001a/x",
		}},
		{"a", []string{"a-b", "a.b", "a/b"}},
		{"a/", []string{"a/b"}},
		{"base/2026/backup.tar", []string{"base/2026/backup.tar", "base/2026/backup.tar.1"}},
		{"base/2026/backup.tar.1", []string{"base/2026/backup.tar.1"}},
		{"nothing", []string{}},
		{"wal/00000003", []string{}},
	}
	for _, c := range cases {
		got := listNames(t, b, c.prefix)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("List(%q) = %q, want %q", c.prefix, got, c.want)
		}
	}
	// Sizes are reported.
	err := b.List(ctx, "a/b", func(oi storage.ObjectInfo) error {
		if oi.Size != int64(len(oi.Name)) {
			t.Errorf("List: %s size %d, want %d", oi.Name, oi.Size, len(oi.Name))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testListStop(t *testing.T, b storage.Backend) {
	for _, n := range []string{"l/1", "l/2", "l/3"} {
		put(t, b, n, nil)
	}
	stop := errors.New("stop here")
	calls := 0
	err := b.List(context.Background(), "l/", func(storage.ObjectInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("List with failing callback: err %v after %d calls, want %v after 1 call", err, calls, stop)
	}
}

func testDelete(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	put(t, b, "d/e/obj", []byte("x"))
	put(t, b, "d/keep", []byte("y"))
	for i := range 2 {
		if err := b.Delete(ctx, "d/e/obj"); err != nil {
			t.Fatalf("Delete #%d: %v", i+1, err)
		}
	}
	if err := b.Delete(ctx, "never/existed"); err != nil {
		t.Fatalf("Delete of a missing object: %v", err)
	}
	if _, err := b.Stat(ctx, "d/e/obj"); !storage.IsNotExist(err) {
		t.Fatalf("Stat after Delete error = %v, want IsNotExist", err)
	}
	if got := listNames(t, b, ""); fmt.Sprint(got) != "[d/keep]" {
		t.Fatalf("List after Delete = %q, want [d/keep]", got)
	}
	// The name can be reused with other content after deletion.
	put(t, b, "d/e/obj", []byte("new"))
	wantContent(t, b, "d/e/obj", []byte("new"))
}

func testBadNames(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	for _, name := range []string{"", "/abs", "a/../b", "a//b", "./a", "a/.", "..", "a/", "a\x00b"} {
		if err := b.Put(ctx, name, bytes.NewReader([]byte("x"))); !errors.Is(err, storage.ErrBadName) {
			t.Errorf("Put(%q) error = %v, want ErrBadName", name, err)
		}
		if _, err := b.Get(ctx, name, 0, -1); !errors.Is(err, storage.ErrBadName) {
			t.Errorf("Get(%q) error = %v, want ErrBadName", name, err)
		}
		if _, err := b.Stat(ctx, name); !errors.Is(err, storage.ErrBadName) {
			t.Errorf("Stat(%q) error = %v, want ErrBadName", name, err)
		}
		if err := b.Delete(ctx, name); !errors.Is(err, storage.ErrBadName) {
			t.Errorf("Delete(%q) error = %v, want ErrBadName", name, err)
		}
	}
	if names := listNames(t, b, ""); len(names) != 0 {
		t.Fatalf("List after rejected Puts = %q, want nothing", names)
	}
}

var errReader = errors.New("storagetest: reader failed on purpose")

// failingReader returns n bytes, then errReader.
type failingReader struct {
	r io.Reader
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errReader
	}
	return n, err
}

func testFailingReader(t *testing.T, b storage.Backend) {
	for _, size := range []int{0, 1000, 3 << 20} {
		r := &failingReader{r: bytes.NewReader(randomBytes(5, size))}
		err := b.Put(context.Background(), "f/obj", r)
		if !errors.Is(err, errReader) {
			t.Fatalf("Put with a reader failing after %d bytes: error = %v, want one wrapping %v", size, err, errReader)
		}
		wantMissing(t, b, "f/obj")
	}
}

func testCancelledContext(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Put(ctx, "k/obj", bytes.NewReader([]byte("data")))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context: error = %v, want context.Canceled", err)
	}
	wantMissing(t, b, "k/obj")
}

// cancellingReader cancels its context after the first read and then keeps
// producing data.
type cancellingReader struct {
	cancel context.CancelFunc
	reads  atomic.Int64
	total  int64
	limit  int64
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if c.reads.Add(1) == 2 {
		c.cancel()
	}
	if c.total >= c.limit {
		return 0, io.EOF
	}
	n := min(int64(len(p)), c.limit-c.total)
	clear(p[:n])
	c.total += n
	return int(n), nil
}

func testCancelledMidPut(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &cancellingReader{cancel: cancel, limit: 64 << 20}
	err := b.Put(ctx, "k/mid", r)
	if err == nil {
		t.Fatalf("Put cancelled midway succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Put cancelled midway: error = %v, want context.Canceled", err)
	}
	wantMissing(t, b, "k/mid")
}

// testSyncGroup checks a storage.DeferredSyncer's group: its Puts follow
// Put's rules (atomic, immutable, conflicts) and Sync succeeds. Durability
// itself (what a crash leaves) is the backend's own test.
func testSyncGroup(t *testing.T, b storage.Backend) {
	d, ok := b.(storage.DeferredSyncer)
	if !ok {
		t.Skip("not a storage.DeferredSyncer")
	}
	ctx := context.Background()
	g := d.NewSyncGroup()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			data := randomBytes(uint64(i), 1000+i*777)
			if err := g.Put(ctx, fmt.Sprintf("g/%d/obj", i%3), onlyReader{bytes.NewReader(data)}); err != nil && !storage.IsConflict(err) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	data := randomBytes(42, 5000)
	if err := g.Put(ctx, "g/same", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := g.Put(ctx, "g/same", onlyReader{bytes.NewReader(data)}); err != nil {
		t.Fatalf("identical Put through the group: %v", err)
	}
	if err := g.Put(ctx, "g/same", bytes.NewReader(randomBytes(43, 5000))); !storage.IsConflict(err) {
		t.Fatalf("different Put through the group: error = %v, want IsConflict", err)
	}
	if err := g.Put(ctx, "g/broken", &failingReader{r: bytes.NewReader(randomBytes(44, 3000))}); err == nil {
		t.Fatal("Put through the group with a failing reader succeeded")
	}
	put(t, b, "g/other", []byte("other"))
	g.Include("g/other")
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "g/same", data)
	if _, err := b.Stat(ctx, "g/broken"); !storage.IsNotExist(err) {
		t.Fatalf("Stat of the object whose Put failed: %v, want IsNotExist", err)
	}
	if names := listNames(t, b, "g/"); len(names) != 5 {
		t.Fatalf("List after the group's Puts = %q, want 3 + g/same + g/other", names)
	}
	if err := g.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}
