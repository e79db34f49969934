package repo

import (
	"context"
	"io"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// The cache's compressors are sized for a caller that runs several Puts at
// once within a memory budget (the WAL receiver: 32 MB peak RSS during
// catch-up): half the zstd window and s2 block size of the repository's
// default ones. On WAL (bench/walstream's mixed pgbench and Synapse-like
// data) that costs almost nothing in ratio; the output is the same format,
// decoded like any other.
const (
	cacheZstdWindow = 512 << 10
	cacheS2Block    = 512 << 10
)

// EncoderCache keeps compressors and copy buffers for Put between calls,
// for a caller that stores many objects in a row, several at a time (the
// WAL uploader). At most max Puts using the cache read, hash and compress
// at once; others wait for their turn (in Put, before reading), so the
// cache never holds more than max compressors of a kind, while the waiting
// Puts' backend work (writes, fsyncs) still overlaps with the compression.
// Compression is CPU-bound: more of it in parallel than there are cores
// only costs memory.
//
// The repository's own pool is a sync.Pool: every garbage collection
// empties it, and a compressor put back on one P is not found by a Put
// running on another, so a steady stream of Puts keeps allocating new
// encoders (each several MB with zstd) and the heap grows well past what is
// in use. A cache holds exactly what its owner uses.
type EncoderCache struct {
	max   int
	slots chan struct{} // one per Put compressing

	mu   sync.Mutex
	zstd map[zstd.EncoderLevel][]*zstd.Encoder
	// frames are EncodeAll encoders (WithWorkers); at most max*workers
	// are in use at once, and the cache keeps up to 2*max of them.
	frames map[zstd.EncoderLevel][]*zstd.Encoder
	s2     []*s2.Writer
	bufs   [][]byte
}

// NewEncoderCache returns a cache for at most n Puts compressing at once
// (at least 1).
func NewEncoderCache(n int) *EncoderCache {
	n = max(1, n)
	return &EncoderCache{max: n, slots: make(chan struct{}, n), zstd: map[zstd.EncoderLevel][]*zstd.Encoder{},
		frames: map[zstd.EncoderLevel][]*zstd.Encoder{}}
}

// acquire waits for one of the max compression slots.
func (c *EncoderCache) acquire(ctx context.Context) error {
	select {
	case c.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *EncoderCache) release() { <-c.slots }

// WithEncoderCache makes Put take its compressor and copy buffer from c and
// give them back there.
func WithEncoderCache(c *EncoderCache) PutOption {
	return func(cfg *putConfig) { cfg.cache = c }
}

func (c *EncoderCache) getZstd(w io.Writer, level zstd.EncoderLevel) (*zstd.Encoder, error) {
	c.mu.Lock()
	free := c.zstd[level]
	if n := len(free); n > 0 {
		e := free[n-1]
		c.zstd[level] = free[:n-1]
		c.mu.Unlock()
		e.Reset(w)
		return e, nil
	}
	c.mu.Unlock()
	return zstd.NewWriter(w, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(cacheZstdWindow), zstd.WithEncoderCRC(false))
}

func (c *EncoderCache) putZstd(e *zstd.Encoder, level zstd.EncoderLevel) {
	e.Reset(nil)
	c.mu.Lock()
	if len(c.zstd[level]) < c.max {
		c.zstd[level] = append(c.zstd[level], e)
	}
	c.mu.Unlock()
}

func (c *EncoderCache) getS2(w io.Writer) *s2.Writer {
	c.mu.Lock()
	if n := len(c.s2); n > 0 {
		e := c.s2[n-1]
		c.s2 = c.s2[:n-1]
		c.mu.Unlock()
		e.Reset(w)
		return e
	}
	c.mu.Unlock()
	return s2.NewWriter(w, s2.WriterConcurrency(1), s2.WriterBlockSize(cacheS2Block))
}

func (c *EncoderCache) putS2(e *s2.Writer) {
	e.Reset(nil)
	c.mu.Lock()
	if len(c.s2) < c.max {
		c.s2 = append(c.s2, e)
	}
	c.mu.Unlock()
}

func (c *EncoderCache) getBuf() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.bufs); n > 0 {
		b := c.bufs[n-1]
		c.bufs = c.bufs[:n-1]
		return b
	}
	return make([]byte, copyBufSize)
}

func (c *EncoderCache) putBuf(b []byte) {
	c.mu.Lock()
	if len(c.bufs) < c.max {
		c.bufs = append(c.bufs, b)
	}
	c.mu.Unlock()
}

func (c *EncoderCache) getFrameEnc(level zstd.EncoderLevel) (*zstd.Encoder, error) {
	c.mu.Lock()
	free := c.frames[level]
	if n := len(free); n > 0 {
		e := free[n-1]
		c.frames[level] = free[:n-1]
		c.mu.Unlock()
		return e, nil
	}
	c.mu.Unlock()
	return newFrameEncoder(level)
}

func (c *EncoderCache) putFrameEnc(e *zstd.Encoder, level zstd.EncoderLevel) {
	c.mu.Lock()
	if len(c.frames[level]) < 2*c.max {
		c.frames[level] = append(c.frames[level], e)
	}
	c.mu.Unlock()
}
