package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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
	// (default 5).
	Attempts int
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
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || IsPermanent(err) || ctx.Err() != nil || attempt >= r.opts.Attempts || !again() {
			return err
		}
		d := wait/2 + rand.N(wait/2+1)
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

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

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
			return r.do(ctx, "put", name, again, func() error { return r.b.Put(ctx, name, re) })
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	// Buffer up to the limit; one byte more says the stream is longer.
	buf := &bytes.Buffer{}
	re := &readerError{r: rd}
	n, err := io.CopyN(buf, ctxReader{ctx, re}, int64(r.opts.BufferLimit)+1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("put %s: read: %w", name, err)
	}
	if n > int64(r.opts.BufferLimit) {
		// Too long to buffer: one try, with what was read first.
		return r.b.Put(ctx, name, io.MultiReader(buf, re))
	}
	data := buf.Bytes()
	return r.do(ctx, "put", name, always, func() error { return r.b.Put(ctx, name, bytes.NewReader(data)) })
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
		if IsPermanent(err) || g.ctx.Err() != nil || attempt >= g.r.opts.Attempts {
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
