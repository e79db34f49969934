package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// Parallel zstd frames
//
// With WithWorkers, a zstd payload is cut into independent frames of at most
// frameSize plaintext bytes, compressed by several goroutines and written in
// order. Each frame is preceded by a 12-byte zstd skippable frame (magic
// 0x184D2A50, length 4) holding the compressed size of the frame that
// follows, as pzstd does:
//
//	50 2A 4D 18 | 04 00 00 00 | size (uint32, little-endian) | zstd frame
//
// A concatenation of zstd frames is one valid zstd stream and decoders skip
// skippable frames, so such a payload is read by any zstd reader, including
// the streaming one in Get (objects stored before this existed, and by
// readers that predate it, read the same way). A reader that knows the
// markers (WithReadWorkers) reads frame by frame and decodes several at
// once. The frames carry no zstd checksum: the object's checksum of the
// plaintext, checked by every reader, covers them.

const (
	// frameSize is the plaintext bytes per frame: big enough that
	// independent frames cost little ratio (the streaming encoders' window
	// is 1 MiB too), small enough that a few in flight per worker stay
	// within the memory of one base backup (< 64 MB peak RSS).
	frameSize = 1 << 20
	// frameMarkerSize is the skippable frame before each frame.
	frameMarkerSize = 12
	// maxFrameStored bounds the size a marker may announce (a corrupt one
	// must not make the reader allocate gigabytes); zstd's worst case for
	// frameSize bytes is a little more than frameSize.
	maxFrameStored = 2*frameSize + 1<<16
	// maxFramePlain bounds what one frame may decode to.
	maxFramePlain = 4 * frameSize
)

// frameMarkerPrefix is the skippable frame's magic and length.
var frameMarkerPrefix = [8]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0}

// WithWorkers makes Put compress with n goroutines (n < 1: 1): zstd as
// parallel frames (see above), s2 with its own concurrent writer. At most
// 2n frames of frameSize are in flight, plus n compressors.
func WithWorkers(n int) PutOption {
	return func(c *putConfig) { c.workers = max(1, n) }
}

// GetOption changes how Get reads one object.
type GetOption func(*getConfig)

type getConfig struct {
	workers int
}

// WithReadWorkers makes Get decode a payload written WithWorkers with n
// goroutines (n < 2: the streaming decoder). Other payloads are read as
// usual.
func WithReadWorkers(n int) GetOption {
	return func(c *getConfig) { c.workers = n }
}

// frameEncPool keeps the frame encoders (EncodeAll, no checksum) of one
// level.
type frameEncPool interface {
	getFrameEnc(level zstd.EncoderLevel) (*zstd.Encoder, error)
	putFrameEnc(e *zstd.Encoder, level zstd.EncoderLevel)
}

func newFrameEncoder(level zstd.EncoderLevel) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(frameSize), zstd.WithEncoderCRC(false))
}

// frameEncKey is the key of a level's frame encoder pool in Repo.encoders.
type frameEncKey struct{ level zstd.EncoderLevel }

// syncMapFrames is the repository's pool (a sync.Map of sync.Pools).
type syncMapFrames struct{ m *sync.Map }

func (p syncMapFrames) getFrameEnc(level zstd.EncoderLevel) (*zstd.Encoder, error) {
	sp, _ := p.m.LoadOrStore(frameEncKey{level}, &sync.Pool{})
	if e, ok := sp.(*sync.Pool).Get().(*zstd.Encoder); ok {
		return e, nil
	}
	return newFrameEncoder(level)
}

func (p syncMapFrames) putFrameEnc(e *zstd.Encoder, level zstd.EncoderLevel) {
	if sp, ok := p.m.Load(frameEncKey{level}); ok {
		sp.(*sync.Pool).Put(e)
	}
}

// frameJob is one frame: its plaintext and, once done is signalled, its
// marker and compressed (or decompressed) bytes.
type frameJob struct {
	in   []byte
	out  []byte
	err  error
	done chan struct{}
}

// frameWriter compresses what is written to it as parallel frames and
// writes them in order to out, hashing the plaintext (h, unless nil) in the
// same order. Its goroutines start with the second frame: an object of one
// frame is compressed on the caller's goroutine. close must be called
// whatever happened; it waits for every goroutine it started.
type frameWriter struct {
	ctx     context.Context
	out     io.Writer
	h       hash.Hash
	level   zstd.EncoderLevel
	pool    frameEncPool
	workers int

	started bool
	cur     *frameJob
	jobs    int            // jobs allocated (at most 2*workers)
	free    chan *frameJob // jobs written and ready for reuse
	work    chan *frameJob // to the workers
	queue   chan *frameJob // to the writer, in order
	failed  chan struct{}  // closed when the writer fails
	werr    error          // the writer's error, after failed is closed or wg is done
	wg      sync.WaitGroup
	n       int64
	closed  bool
	abort   atomic.Bool // close(false): the writer drops what is left
}

func newFrameWriter(ctx context.Context, out io.Writer, h hash.Hash, level zstd.EncoderLevel, pool frameEncPool, workers int) *frameWriter {
	workers = max(1, workers)
	return &frameWriter{ctx: ctx, out: out, h: h, level: level, pool: pool, workers: workers,
		free: make(chan *frameJob, 2*workers), failed: make(chan struct{})}
}

// compress fills j.out with marker and frame, with enc (nil: one from the
// pool, given back).
func (w *frameWriter) compress(j *frameJob, enc *zstd.Encoder) {
	if enc == nil {
		var err error
		if enc, err = w.pool.getFrameEnc(w.level); err != nil {
			j.err = fmt.Errorf("zstd: %w", err)
			return
		}
		defer w.pool.putFrameEnc(enc, w.level)
	}
	out := append(j.out[:0], frameMarkerPrefix[:]...)
	out = append(out, 0, 0, 0, 0)
	out = enc.EncodeAll(j.in, out)
	binary.LittleEndian.PutUint32(out[8:12], uint32(len(out)-frameMarkerSize))
	j.out, j.err = out, nil
}

// write hashes and writes one compressed frame.
func (w *frameWriter) write(j *frameJob) error {
	if j.err != nil {
		return j.err
	}
	if w.h != nil {
		w.h.Write(j.in)
	}
	_, err := w.out.Write(j.out)
	return err
}

func (w *frameWriter) start() {
	w.started = true
	w.work = make(chan *frameJob, 2*w.workers)
	w.queue = make(chan *frameJob, 2*w.workers)
	for range w.workers {
		w.wg.Go(func() {
			// One encoder for the worker's life: taking it from the
			// pool per frame made the repository's sync.Pool allocate
			// new ones after every garbage collection.
			enc, err := w.pool.getFrameEnc(w.level)
			if err == nil {
				defer w.pool.putFrameEnc(enc, w.level)
			}
			for j := range w.work {
				if err != nil {
					j.err = fmt.Errorf("zstd: %w", err)
				} else {
					w.compress(j, enc)
				}
				close(j.done)
			}
		})
	}
	w.wg.Go(func() {
		var err error
		for j := range w.queue {
			<-j.done
			if err == nil && w.abort.Load() {
				err = errAborted
			}
			if err == nil {
				if err = w.write(j); err != nil {
					w.werr = err
					close(w.failed)
				}
			}
			w.free <- j
		}
	})
}

// next returns an empty job: a new one while fewer than 2*workers exist,
// else one the writer is done with.
func (w *frameWriter) next() (*frameJob, error) {
	select {
	case j := <-w.free:
		j.in = j.in[:0]
		return j, nil
	default:
	}
	if w.jobs < 2*w.workers {
		w.jobs++
		return &frameJob{in: make([]byte, 0, frameSize)}, nil
	}
	select {
	case j := <-w.free:
		j.in = j.in[:0]
		return j, nil
	case <-w.failed:
		return nil, w.werr
	case <-w.ctx.Done():
		return nil, w.ctx.Err()
	}
}

// submit hands the current (full) frame to the workers.
func (w *frameWriter) submit() error {
	if !w.started {
		w.start()
	}
	j := w.cur
	w.cur = nil
	j.done = make(chan struct{})
	w.queue <- j // buffered: never more jobs than its capacity
	w.work <- j
	return nil
}

// fill makes sure there is a current frame with room.
func (w *frameWriter) fill() error {
	if w.cur != nil && len(w.cur.in) == frameSize {
		if err := w.submit(); err != nil {
			return err
		}
	}
	if w.cur == nil {
		j, err := w.next()
		if err != nil {
			return err
		}
		w.cur = j
	}
	return nil
}

// Write copies p into frames.
func (w *frameWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		if err := w.fill(); err != nil {
			return n, err
		}
		c := w.cur
		m := copy(c.in[len(c.in):frameSize], p)
		c.in = c.in[:len(c.in)+m]
		p = p[m:]
		n += m
	}
	w.n += int64(n)
	return n, nil
}

// ReadFrom reads rd to its end straight into frames, checking ctx between
// reads.
func (w *frameWriter) ReadFrom(rd io.Reader) (int64, error) {
	var n int64
	for {
		if err := w.ctx.Err(); err != nil {
			return n, err
		}
		if err := w.fill(); err != nil {
			return n, err
		}
		c := w.cur
		m, rerr := rd.Read(c.in[len(c.in):frameSize])
		c.in = c.in[:len(c.in)+m]
		n += int64(m)
		w.n += int64(m)
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

// close stops the goroutines; with flush, it first compresses and writes
// what is buffered and returns the first error.
func (w *frameWriter) close(flush bool) error {
	if w.closed {
		return errors.New("frame writer closed twice")
	}
	w.closed = true
	var err error
	if flush && w.cur != nil && len(w.cur.in) > 0 {
		if !w.started {
			// One frame: no goroutines.
			w.compress(w.cur, nil)
			err = w.write(w.cur)
		} else {
			err = w.submit()
		}
	}
	if !flush {
		w.abort.Store(true)
	}
	if w.started {
		close(w.work)
		close(w.queue)
		w.wg.Wait()
		if err == nil && flush {
			err = w.werr
		}
	}
	if !flush && err == nil {
		err = errAborted
	}
	return err
}

// frameDecPool keeps decoders for DecodeAll.
var frameDecPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxFramePlain),
		zstd.WithDecoderMaxWindow(128<<20))
	if err != nil {
		return err
	}
	return d
}}

// frameReader decodes a payload of marked frames with several goroutines
// and returns the plaintext in order. If the payload does not start with a
// marker (an object stored otherwise), it reads it with the streaming
// decoder instead.
type frameReader struct {
	src     io.Reader
	workers int
	// h, when not nil, is fed the plaintext in order by a goroutine of its
	// own (hashed is then true), so that hashing overlaps with decoding and
	// with the caller's use of the bytes instead of adding to the
	// caller's serial work. The streaming fallback does not hash.
	h      hash.Hash
	hashed bool
	out    chan *frameJob // what Read takes: queue, or the hasher's output

	started bool
	stream  *zstd.Decoder
	queue   chan *frameJob // in order, from the producer
	free    chan *frameJob
	stop    chan struct{}
	wg      sync.WaitGroup
	cur     *frameJob
	off     int
	err     error
	closed  bool
}

func newFrameReader(src io.Reader, workers int, h hash.Hash) *frameReader {
	return &frameReader{src: src, workers: max(2, workers), h: h}
}

// errFrame marks damage in the frame structure.
var errFrame = errors.New("bad frame marker")

func (f *frameReader) begin() error {
	f.started = true
	var first [frameMarkerSize]byte
	n, err := io.ReadFull(f.src, first[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return err
	}
	if n < frameMarkerSize || [8]byte(first[:8]) != frameMarkerPrefix {
		// Not ours: the streaming decoder reads it.
		dec, err := zstd.NewReader(io.MultiReader(bytes.NewReader(first[:n]), f.src),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		f.stream = dec
		return nil
	}
	inflight := 2 * f.workers
	f.queue = make(chan *frameJob, inflight)
	f.free = make(chan *frameJob, inflight)
	f.stop = make(chan struct{})
	for range inflight {
		f.free <- &frameJob{}
	}
	work := make(chan *frameJob, inflight)
	for range f.workers {
		f.wg.Go(func() {
			for j := range work {
				f.decode(j)
				close(j.done)
			}
		})
	}
	f.out = f.queue
	if f.h != nil {
		// Every job passes through here in order; the channel holds as
		// many as exist, so the hasher never waits for Read.
		f.hashed = true
		ready := make(chan *frameJob, inflight+1)
		f.out = ready
		f.wg.Go(func() {
			defer close(ready)
			for j := range f.queue {
				<-j.done
				if j.err == nil {
					f.h.Write(j.out)
				}
				ready <- j
			}
		})
	}
	size := binary.LittleEndian.Uint32(first[8:])
	f.wg.Go(func() {
		defer close(work)
		defer close(f.queue)
		for {
			var j *frameJob
			select {
			case j = <-f.free:
			case <-f.stop:
				return
			}
			j.done, j.err = make(chan struct{}), nil
			if size > maxFrameStored {
				j.err = fmt.Errorf("%w: a frame of %d bytes", errFrame, size)
			} else if j.in, j.err = readN(f.src, j.in, int(size)); j.err == nil {
				// Queue before reading the next marker, so that the frame
				// is decoded meanwhile.
				f.queue <- j
				work <- j
				var m [frameMarkerSize]byte
				n, err := io.ReadFull(f.src, m[:])
				switch {
				case n == 0 && err == io.EOF:
					return
				case err != nil:
					j = &frameJob{done: make(chan struct{}), err: noEOF(err)}
				case [8]byte(m[:8]) != frameMarkerPrefix:
					j = &frameJob{done: make(chan struct{}), err: fmt.Errorf("%w: % x", errFrame, m[:8])}
				default:
					size = binary.LittleEndian.Uint32(m[8:])
					continue
				}
			}
			close(j.done)
			f.queue <- j
			return
		}
	})
	return nil
}

func (f *frameReader) decode(j *frameJob) {
	d, ok := frameDecPool.Get().(*zstd.Decoder)
	if !ok {
		j.err = fmt.Errorf("zstd: %v", frameDecPool.New())
		return
	}
	j.out, j.err = d.DecodeAll(j.in, j.out[:0])
	frameDecPool.Put(d)
}

// readN reads exactly n bytes into buf (grown if needed).
func readN(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n, max(n, frameSize+frameSize/8))
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, noEOF(err)
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if !f.started {
		if err := f.begin(); err != nil {
			f.err = err
			return 0, err
		}
	}
	if f.stream != nil {
		return f.stream.Read(p)
	}
	for f.cur == nil || f.off == len(f.cur.out) {
		if f.cur != nil {
			f.free <- f.cur
			f.cur = nil
		}
		j, ok := <-f.out
		if !ok {
			f.err = io.EOF
			return 0, io.EOF
		}
		<-j.done
		if j.err != nil {
			f.err = j.err
			return 0, j.err
		}
		f.cur, f.off = j, 0
	}
	n := copy(p, f.cur.out[f.off:])
	f.off += n
	return n, nil
}

// Close stops the goroutines and waits for them; the source must not
// block (the caller closes the body first).
func (f *frameReader) Close() {
	if f.closed {
		return
	}
	f.closed = true
	if f.stream != nil {
		f.stream.Close()
	}
	if f.stop == nil {
		return
	}
	close(f.stop)
	// Let the producer (and the hasher) finish: drain what they queue.
	for j := range f.out {
		<-j.done
	}
	f.wg.Wait()
}
