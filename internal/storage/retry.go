package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// More sentinel errors, for remote backends. They are wrapped like the ones
// in storage.go.
var (
	// ErrAccess says that the backend refused the credentials or the
	// permission for the operation (bad access key or secret, a policy that
	// does not allow it). Retrying does not help.
	ErrAccess = errors.New("access denied")
	// ErrUnreachable says that the backend could not be reached (connection
	// refused, DNS, TLS handshake, timeouts). It may be transient.
	ErrUnreachable = errors.New("storage unreachable")
)

// IsAccess reports whether err says that the backend refused access.
func IsAccess(err error) bool { return errors.Is(err, ErrAccess) }

// IsUnreachable reports whether err says that the backend could not be
// reached.
func IsUnreachable(err error) bool { return errors.Is(err, ErrUnreachable) }

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that WithRetry must not retry (a missing
// bucket, a request the server rejects as malformed).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether retrying the operation that returned err cannot
// succeed: err is marked Permanent, or says that an object does not exist,
// conflicts, has a bad name, or that access was refused.
func IsPermanent(err error) bool {
	var pe permanentError
	return errors.As(err, &pe) || IsNotExist(err) || IsConflict(err) ||
		errors.Is(err, ErrBadName) || IsAccess(err)
}

// RetryOptions configure WithRetry. Zero fields take the defaults.
type RetryOptions struct {
	// Attempts is the number of tries of one operation, the first included
	// (default 5), when MaxElapsed is 0.
	Attempts int
	// MaxElapsed, when set, replaces Attempts by a time budget: an
	// operation is tried again until MaxElapsed has passed since its first
	// failure (the last wait shortened to fit), so that an outage shorter
	// than MaxElapsed costs time, not the operation.
	MaxElapsed time.Duration
	// Backoff is the wait before the first retry (default 250ms); each
	// further wait doubles it, up to MaxBackoff (default 10s). Every wait
	// is jittered: a random duration between half of it and all of it.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// BufferLimit is the size up to which Put buffers a reader that is not
	// an io.Seeker, so that it can be sent again (default 16 MiB). Larger
	// streams that cannot seek are tried once: their bytes are gone once
	// read. Backends that upload in parts retry each part themselves.
	BufferLimit int
	// OnRetry, when set, is called before each wait (for logging).
	OnRetry func(op, name string, attempt int, wait time.Duration, err error)
}

const (
	defaultAttempts    = 5
	defaultBackoff     = 250 * time.Millisecond
	defaultMaxBackoff  = 10 * time.Second
	defaultBufferLimit = 16 << 20
)

// WithRetry returns a Backend that retries b's operations on transient
// errors with exponential backoff and jitter. It does not retry errors for
// which IsPermanent is true, nor failures of the caller's reader, nor after
// ctx is done (the wait itself ends when ctx is done).
//
// Put needs the bytes again for another try: a reader that is an io.Seeker
// is rewound to where it stood; any other reader is buffered in memory up to
// opts.BufferLimit and, when it is longer, passed through and tried once.
// Get retries opening the object, and reopens it where reading stood when a
// read fails midway.
func WithRetry(b Backend, opts RetryOptions) Backend {
	if opts.Attempts <= 0 {
		opts.Attempts = defaultAttempts
	}
	if opts.Backoff <= 0 {
		opts.Backoff = defaultBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = defaultMaxBackoff
	}
	if opts.MaxBackoff < opts.Backoff {
		opts.MaxBackoff = opts.Backoff
	}
	if opts.BufferLimit <= 0 {
		opts.BufferLimit = defaultBufferLimit
	}
	return &retrying{b: b, opts: opts}
}

type retrying struct {
	b    Backend
	opts RetryOptions
}

// Unwrap returns the decorated backend.
func (r *retrying) Unwrap() Backend { return r.b }

func (r *retrying) String() string { return r.b.String() }

// do runs fn until it succeeds, fails permanently, runs out of attempts or
// ctx is done. again reports whether another attempt is possible at all.
func (r *retrying) do(ctx context.Context, op, name string, again func() bool, fn func() error) error {
	wait := r.opts.Backoff
	var first time.Time
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || IsPermanent(err) || ctx.Err() != nil || !again() {
			return err
		}
		if first.IsZero() {
			first = time.Now()
		}
		d := wait/2 + rand.N(wait/2+1)
		if r.opts.MaxElapsed > 0 {
			left := r.opts.MaxElapsed - time.Since(first)
			if left <= 0 {
				return fmt.Errorf("%w (gave up after retrying for %s)", err, time.Since(first).Round(time.Second))
			}
			d = min(d, left)
		} else if attempt >= r.opts.Attempts {
			return err
		}
		if r.opts.OnRetry != nil {
			r.opts.OnRetry(op, name, attempt, d, err)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up retrying: %w)", err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, r.opts.MaxBackoff)
	}
}

func always() bool { return true }

// readerError records an error of the caller's reader, which is never
// retried.
type readerError struct {
	r   io.Reader
	err error
}

func (e *readerError) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// seekerError is a readerError of an io.ReadSeeker that still seeks.
type seekerError struct {
	*readerError
	s io.Seeker
}

func (e seekerError) Seek(offset int64, whence int) (int64, error) { return e.s.Seek(offset, whence) }

func (r *retrying) Put(ctx context.Context, name string, rd io.Reader) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if s, ok := rd.(io.ReadSeeker); ok {
		start, err := s.Seek(0, io.SeekCurrent)
		if err == nil {
			re := &readerError{r: s}
			again := func() bool {
				if re.err != nil {
					return false
				}
				_, err := s.Seek(start, io.SeekStart)
				return err == nil
			}
			// Still a seeker: a backend may read it twice instead of
			// copying it (the S3 backend does, for objects up to a part).
			rs := seekerError{re, s}
			return r.do(ctx, "put", name, again, func() error { return r.b.Put(ctx, name, rs) })
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	// Buffer up to the limit, in pooled chunks (memory follows the
	// content, no doubling); one byte more says the stream is longer.
	var buf Buffer
	re := &readerError{r: rd}
	eof, err := buf.Fill(ctx, re, int64(r.opts.BufferLimit)+1)
	if err != nil {
		buf.Release()
		return fmt.Errorf("put %s: %w", name, err)
	}
	if !eof && buf.Len() > int64(r.opts.BufferLimit) {
		// Too long to buffer: one try, with what was read first; each
		// chunk goes back to the pool once the backend has read it.
		defer buf.Release()
		return r.b.Put(ctx, name, io.MultiReader(buf.drain(), re))
	}
	// The backend has stopped reading when its Put returns (the S3
	// backend fences its HTTP bodies), so the chunks can be reused.
	defer buf.Release()
	return r.do(ctx, "put", name, always, func() error { return r.b.Put(ctx, name, buf.Reader()) })
}

// bufChunk is the size of a Buffer's chunks.
const bufChunk = 256 << 10

// chunk is a pooled piece of a Buffer. out is set while it is handed out:
// a chunk handed out twice, or returned twice, is a bug that would mix two
// objects' bytes, and panics instead.
//
// Its bytes live outside the Go heap (an anonymous mapping) where the
// system allows: the garbage collector lets the heap grow to twice what is
// live before it collects (GOGC=100), so buffers on the heap cost about
// twice their size in resident memory. A base backup to S3 holds two 8 MiB
// parts in chunks; on the heap they made its peak resident set 1.7x the
// local repository's.
type chunk struct {
	b   []byte
	out atomic.Bool
	// unmap, for a mapped chunk, unmaps it once the chunk is unreachable:
	// a Buffer that is never released loses its chunks to the garbage
	// collector, as it did when they were on the heap.
	unmap *runtime.Cleanup
}

func newChunk() *chunk {
	b, err := syscall.Mmap(-1, 0, bufChunk, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return &chunk{b: make([]byte, bufChunk)}
	}
	c := &chunk{b: b}
	unmap := runtime.AddCleanup(c, func(b []byte) { _ = syscall.Munmap(b) }, b)
	c.unmap = &unmap
	return c
}

// free gives a chunk nobody holds back to the system.
func (c *chunk) free() {
	if c.unmap != nil {
		c.unmap.Stop()
		_ = syscall.Munmap(c.b)
	}
	c.b = nil
}

// chunkCache keeps released chunks for the next Buffer, up to
// maxFreeChunks for as long as Buffers come and go, and gives them all back
// once no chunk has been taken for chunkIdle, so an idle agent holds none.
var chunkCache = &freeChunks{idle: chunkIdle}

const (
	// maxFreeChunks bounds the cache: three default S3 parts (8 MiB
	// each), what one multipart upload and the next object hold.
	maxFreeChunks = 96
	// chunkIdle is how long the cache keeps chunks nobody takes.
	chunkIdle = 30 * time.Second
)

type freeChunks struct {
	idle  time.Duration
	mu    sync.Mutex
	free  []*chunk
	taken uint64 // chunks handed out so far; the idle timer compares it
	timer *time.Timer
}

func (f *freeChunks) get() *chunk {
	f.mu.Lock()
	f.taken++
	var c *chunk
	if n := len(f.free); n > 0 {
		c, f.free[n-1] = f.free[n-1], nil
		f.free = f.free[:n-1]
	}
	f.mu.Unlock()
	if c == nil {
		c = newChunk()
	}
	return c
}

func (f *freeChunks) put(c *chunk) {
	f.mu.Lock()
	if len(f.free) >= maxFreeChunks {
		f.mu.Unlock()
		c.free()
		return
	}
	f.free = append(f.free, c)
	if f.timer == nil {
		f.timer = time.AfterFunc(f.idle, f.trimIfIdle(f.taken))
	}
	f.mu.Unlock()
}

// trimIfIdle returns the timer's function: it frees the cache's chunks
// when none was taken since taken, else it checks again f.idle later.
func (f *freeChunks) trimIfIdle(taken uint64) func() {
	return func() {
		f.mu.Lock()
		if f.taken != taken {
			f.timer = time.AfterFunc(f.idle, f.trimIfIdle(f.taken))
			f.mu.Unlock()
			return
		}
		for _, c := range f.free {
			c.free()
		}
		f.free, f.timer = nil, nil
		f.mu.Unlock()
	}
}

func getChunk() *chunk {
	c := chunkCache.get()
	if c.out.Swap(true) {
		panic("storage: a buffer chunk was handed out twice")
	}
	return c
}

func putChunk(c *chunk) {
	if !c.out.Swap(false) {
		panic("storage: a buffer chunk was returned twice")
	}
	chunkCache.put(c)
}

// Buffer holds bytes in fixed-size chunks from a pool shared by all
// backends: it grows with its content, without the copies and the garbage
// of a doubling slice, and Release hands its chunks to the next Buffer.
// The zero value is empty and ready. A Buffer is not safe for concurrent
// writes; once filled, any number of Readers may read it at once.
type Buffer struct {
	chunks []*chunk
	n      int64
}

// Len returns the number of bytes held.
func (b *Buffer) Len() int64 { return b.n }

// Fill reads from r, checking ctx between reads, until r ends (eof is
// true) or the buffer holds limit bytes (limit < 0: no limit).
func (b *Buffer) Fill(ctx context.Context, r io.Reader, limit int64) (eof bool, err error) {
	for limit < 0 || b.n < limit {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		off := int(b.n % bufChunk)
		if off == 0 && int64(len(b.chunks))*bufChunk == b.n {
			b.chunks = append(b.chunks, getChunk())
		}
		p := b.chunks[len(b.chunks)-1].b[off:]
		if limit >= 0 && int64(len(p)) > limit-b.n {
			p = p[:limit-b.n]
		}
		m, err := r.Read(p)
		b.n += int64(m)
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("read: %w", err)
		}
	}
	return false, nil
}

// Each calls fn with the buffer's bytes, in order, a chunk at a time.
func (b *Buffer) Each(fn func([]byte)) {
	left := b.n
	for _, c := range b.chunks {
		p := c.b[:min(left, bufChunk)]
		if len(p) == 0 {
			return
		}
		fn(p)
		left -= int64(len(p))
	}
}

// Release returns the chunks to the pool and empties the buffer. Nothing
// may read the buffer, or a Reader of it, any more.
func (b *Buffer) Release() {
	for i, c := range b.chunks {
		if c != nil {
			putChunk(c)
			b.chunks[i] = nil
		}
	}
	b.chunks, b.n = nil, 0
}

// Reader returns an io.ReadSeeker over the buffer's bytes.
func (b *Buffer) Reader() *BufferReader { return &BufferReader{b: b} }

// drain returns a reader of the buffer that returns each chunk to the pool
// once it has been read; the buffer is empty at its end.
func (b *Buffer) drain() io.Reader { return &drainer{b: b} }

type drainer struct {
	b   *Buffer
	off int64
}

func (d *drainer) Read(p []byte) (int, error) {
	b := d.b
	if d.off >= b.n {
		b.Release()
		return 0, io.EOF
	}
	i := int(d.off / bufChunk)
	start := int(d.off % bufChunk)
	end := int(min(b.n-int64(i)*bufChunk, bufChunk))
	n := copy(p, b.chunks[i].b[start:end])
	d.off += int64(n)
	if start+n == end {
		putChunk(b.chunks[i])
		b.chunks[i] = nil
	}
	return n, nil
}

// BufferReader reads a Buffer; it is an io.ReadSeeker.
type BufferReader struct {
	b   *Buffer
	off int64
}

// Size returns the number of bytes of the underlying buffer.
func (r *BufferReader) Size() int64 { return r.b.n }

func (r *BufferReader) Read(p []byte) (int, error) {
	if r.off >= r.b.n {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.off < r.b.n {
		i := int(r.off / bufChunk)
		start := int(r.off % bufChunk)
		end := int(min(r.b.n-int64(i)*bufChunk, bufChunk))
		m := copy(p[n:], r.b.chunks[i].b[start:end])
		n += m
		r.off += int64(m)
	}
	return n, nil
}

func (r *BufferReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.b.n
	default:
		return 0, errors.New("storage: BufferReader.Seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("storage: BufferReader.Seek: negative position")
	}
	r.off = offset
	return offset, nil
}

// Get retries opening the object; a read that fails midway (a connection
// reset during a long download) reopens the object where the reading stood,
// with the same retry budget per failure.
func (r *retrying) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	rc, err := r.open(ctx, name, offset, length)
	if err != nil {
		return nil, err
	}
	return &resuming{r: r, ctx: ctx, name: name, rc: rc, offset: offset, length: length}, nil
}

func (r *retrying) open(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "get", name, always, func() error {
		var err error
		rc, err = r.b.Get(ctx, name, offset, length)
		return err
	})
	return rc, err
}

// resuming reads an object and reopens it after a failed read.
type resuming struct {
	r      *retrying
	ctx    context.Context
	name   string
	rc     io.ReadCloser
	offset int64 // of the next byte
	length int64 // still to read; < 0: to the end
}

func (g *resuming) Read(p []byte) (int, error) {
	if g.length >= 0 && int64(len(p)) > g.length {
		p = p[:g.length]
	}
	if len(p) == 0 && g.length == 0 {
		return 0, io.EOF
	}
	for attempt := 1; ; attempt++ {
		n, err := g.rc.Read(p)
		g.offset += int64(n)
		if g.length >= 0 {
			g.length -= int64(n)
		}
		if err == nil || err == io.EOF || n > 0 {
			if err != nil && err != io.EOF && n > 0 {
				err = nil // report the bytes now, the error on the next Read
			}
			return n, err
		}
		if IsPermanent(err) || g.ctx.Err() != nil || (g.r.opts.MaxElapsed <= 0 && attempt >= g.r.opts.Attempts) || attempt >= 100 {
			return 0, err
		}
		_ = g.rc.Close()
		rc, oerr := g.r.open(g.ctx, g.name, g.offset, g.length)
		if oerr != nil {
			g.rc = io.NopCloser(errReader{oerr})
			return 0, fmt.Errorf("%w (reopening at offset %d: %w)", err, g.offset, oerr)
		}
		if g.r.opts.OnRetry != nil {
			g.r.opts.OnRetry("read", g.name, attempt, 0, err)
		}
		g.rc = rc
	}
}

func (g *resuming) Close() error { return g.rc.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (r *retrying) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	var oi ObjectInfo
	err := r.do(ctx, "stat", name, always, func() error {
		var err error
		oi, err = r.b.Stat(ctx, name)
		return err
	})
	return oi, err
}

// List retries only while fn has not been called: a listing that failed
// midway is not repeated, since fn would see names twice.
func (r *retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	called := false
	return r.do(ctx, "list", prefix, func() bool { return !called }, func() error {
		return r.b.List(ctx, prefix, func(oi ObjectInfo) error {
			called = true
			return fn(oi)
		})
	})
}

func (r *retrying) Delete(ctx context.Context, name string) error {
	return r.do(ctx, "delete", name, always, func() error { return r.b.Delete(ctx, name) })
}
