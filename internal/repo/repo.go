// Package repo is the repository layer on top of a storage.Backend: it
// frames every object with a header (codec, attributes) and a trailer
// (checksum and length of the plaintext), compresses payloads with zstd, checks
// every object whenever it is read, and keeps the repository's metadata
// (format version, PostgreSQL system identifier).
//
// See format.go for the object format and meta.go for the metadata.
package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strings"
	"sync"

	"filippo.io/age"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/synbak/synbak/internal/storage"
)

// Options configure a Repo.
type Options struct {
	// Compression is "zstd" (the default when empty) or "none".
	Compression string
	// ZstdLevel is a zstd level 1..22; 0 means 3. The encoder has four
	// speeds: levels 1–2 are its fastest, 3–5 its default, 6–9 "better"
	// and 10–22 "best".
	ZstdLevel int
	// Logger receives warnings (e.g. a skipped damaged metadata version).
	// nil discards them.
	Logger *slog.Logger
	// Recipients encrypt what is written (crypt.go). Init records that a
	// new repository is encrypted when they are set; an encrypted
	// repository refuses writes without them, an unencrypted one refuses
	// them.
	Recipients []age.Recipient
	// Identities decrypt what is read from an encrypted repository.
	Identities []age.Identity
}

func (o Options) codec() (Codec, zstd.EncoderLevel, error) {
	var c Codec
	switch o.Compression {
	case "", "zstd":
		c = CodecZstd
	case "none":
		c = CodecNone
	case "s2":
		c = CodecS2
	default:
		return 0, 0, fmt.Errorf("unknown compression %q: use \"zstd\", \"s2\" or \"none\"", o.Compression)
	}
	level := o.ZstdLevel
	if level == 0 {
		level = 3
	}
	if level < 1 || level > 22 {
		return 0, 0, fmt.Errorf("zstd level %d out of range: use 1 to 22", o.ZstdLevel)
	}
	return c, zstd.EncoderLevelFromZstd(level), nil
}

// Repo is a repository. It is safe for concurrent use.
type Repo struct {
	b     storage.Backend
	codec Codec
	level zstd.EncoderLevel
	log   *slog.Logger

	recipients []age.Recipient
	identities []age.Identity

	mu   sync.Mutex
	meta Meta

	// encoders pools zstd encoders by level: creating one per object cost
	// half the CPU and most of the memory of WAL archiving
	// (bench/walstream). Each runs on one goroutine (concurrency 1):
	// callers parallelize across objects, not within one. A 1 MiB window
	// compresses WAL as well as the default 4 MiB one, faster and in less
	// memory (measured on 2 GB of mixed pgbench and Synapse-like WAL).
	encoders sync.Map // zstd.EncoderLevel -> *sync.Pool
}

func newRepo(b storage.Backend, opts Options) (*Repo, error) {
	c, level, err := opts.codec()
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Repo{b: b, codec: c, level: level, log: log, recipients: opts.Recipients, identities: opts.Identities}, nil
}

// String describes the repository (its backend) for messages.
func (r *Repo) String() string { return r.b.String() }

// PutResult describes a stored object.
type PutResult struct {
	// Size is the plaintext length.
	Size int64
	// StoredSize is the length of the stored object (framing included).
	StoredSize int64
	// Checksum is the plaintext's checksum (sha256, or XXH3-128 with
	// FastChecksum).
	Checksum
}

// version returns the object format version Put writes: 3 with
// FastChecksum, unless the sha256 is known or wanted (content-addressed
// objects), else 2.
func (c putConfig) version() int {
	if c.fast && c.known == nil && c.want == nil {
		return 3
	}
	return 2
}

// PutOption changes how one Put stores its object.
type PutOption func(*putConfig)

type putConfig struct {
	codec    Codec
	level    zstd.EncoderLevel
	encoders *sync.Map
	cache    *EncoderCache // WithEncoderCache; nil: the pool in encoders
	// workers, when > 0 (WithWorkers), compresses with that many
	// goroutines: zstd as parallel frames (frames.go), s2 concurrently.
	workers int
	// recipients, when set, encrypt the payload (an encrypted repository).
	recipients []age.Recipient
	// known is the plaintext's sha256 when PutContent computed it already.
	known *[32]byte
	// want, when set (WantSHA256), is the sha256 the plaintext must have.
	want *[32]byte
	// fast (FastChecksum) asks for a version 3 object (XXH3-128); see
	// version.
	fast bool
	// group, when set (InSyncGroup), defers durability to its Sync.
	group *SyncGroup
	// name and rawAttrs are the object's name and attributes block, which
	// the trailer's binding covers.
	name     string
	rawAttrs []byte
}

// Uncompressed stores the payload as is, for data that is already
// compressed (or encrypted).
func Uncompressed() PutOption { return func(c *putConfig) { c.codec = CodecNone } }

// WithZstdLevel compresses with zstd at the given level (1..22), whatever
// the repository's options say. Levels outside 1..22 are clamped.
func WithZstdLevel(level int) PutOption {
	return func(c *putConfig) {
		c.codec = CodecZstd
		c.level = zstd.EncoderLevelFromZstd(level)
	}
}

// errAborted unblocks the framing goroutine when the backend stops reading.
var errAborted = errors.New("repo: put aborted")

// Put stores the plaintext read from rd under name with attributes attrs
// (which may be nil), streaming: memory use does not depend on the size.
//
// If name exists, Put compares plaintext checksums: the same plaintext is
// success (whatever codec or level stored it), a different one an error for
// which IsConflict is true.
func (r *Repo) Put(ctx context.Context, name string, rd io.Reader, attrs map[string]string, opts ...PutOption) (PutResult, error) {
	return r.put(ctx, name, rd, nil, attrs, opts)
}

// put is Put; c, when not nil, is the plaintext in memory with its sha256
// (PutContent), and rd reads c's bytes.
func (r *Repo) put(ctx context.Context, name string, rd io.Reader, c *Content, attrs map[string]string, opts []PutOption) (PutResult, error) {
	cfg := putConfig{codec: r.codec, level: r.level, encoders: &r.encoders}
	for _, o := range opts {
		o(&cfg)
	}
	if err := storage.ValidName(name); err != nil {
		return PutResult{}, err
	}
	flags := byte(0)
	if r.Meta().Encrypted && !strings.HasPrefix(name, metaPrefix) {
		if len(r.recipients) == 0 {
			return PutResult{}, fmt.Errorf("put %s: %w: repository %s is encrypted, and writing needs its recipients: set repository.encryption.recipients", name, ErrEncryption, r.b)
		}
		cfg.recipients = r.recipients
		flags = flagEncrypted
	}
	if c != nil {
		if cfg.want != nil && *cfg.want != c.sum {
			return PutResult{}, fmt.Errorf("put %s: %w: expected %s, got %s", name, ErrUnexpectedContent, hexSum(*cfg.want), hexSum(c.sum))
		}
		cfg.known = &c.sum
	}
	version := cfg.version()
	hdr, err := encodeHeader(version, Codec(byte(cfg.codec)|flags), attrs)
	if err != nil {
		return PutResult{}, fmt.Errorf("put %s: %w", name, err)
	}
	cfg.name, cfg.rawAttrs = name, hdr[fixedHeaderSize:]
	backendPut := r.b.Put
	if cfg.group != nil && cfg.group.g != nil {
		backendPut = cfg.group.g.Put
	}

	type result struct {
		size, stored int64
		sum          []byte
		err          error
	}
	var res result
	var berr error
	if c != nil && cfg.codec == CodecNone && len(cfg.recipients) == 0 {
		// The object is header, the bytes themselves and trailer: no
		// pipe, no framing goroutine, no copy.
		seg := &segments{parts: [][]byte{hdr, c.data, encodeTrailer(version, name, cfg.rawAttrs, c.sum[:], int64(len(c.data)))}}
		berr = backendPut(ctx, name, seg)
		res = result{size: int64(len(c.data)), stored: seg.size(), sum: c.sum[:]}
		if berr == nil && seg.off != seg.size() {
			res.err = io.ErrShortWrite
		}
	} else {
		pr, pw := io.Pipe()
		done := make(chan result, 1)
		go func() {
			var res result
			cw := &countWriter{w: pw}
			res.size, res.sum, res.err = frame(ctx, cw, rd, hdr, cfg)
			res.stored = cw.n
			pw.CloseWithError(res.err) // nil: EOF for the backend
			done <- res
		}()
		berr = backendPut(ctx, name, pr)
		pr.CloseWithError(errAborted)
		res = <-done
	}

	if res.err != nil && !errors.Is(res.err, errAborted) && !errors.Is(res.err, io.ErrClosedPipe) && !errors.Is(res.err, io.ErrShortWrite) {
		return PutResult{}, fmt.Errorf("put %s: %w", name, res.err)
	}
	out := PutResult{Size: res.size, StoredSize: res.stored, Checksum: checksumOf(version, res.sum)}
	if berr == nil {
		if res.err != nil {
			// The backend returned success without reading everything.
			return PutResult{}, fmt.Errorf("put %s: backend %s stopped reading early: %w", name, r.b, res.err)
		}
		return out, nil
	}
	if !storage.IsConflict(berr) {
		return PutResult{}, fmt.Errorf("put %s: %w", name, berr)
	}
	if res.err != nil {
		return PutResult{}, fmt.Errorf("put %s: %w", name, berr)
	}
	// The name exists with other bytes: compare plaintext checksums.
	info, err := r.Stat(ctx, name)
	if err != nil {
		return PutResult{}, fmt.Errorf("put %s: %w, and reading the existing object failed: %w", name, berr, err)
	}
	existing, what := info.Checksum, info.Checksum.Describe()
	if existing.version() != version && info.Size == out.Size {
		// Stored with the other algorithm (by another synbak version):
		// hash its plaintext with this one's.
		if existing, err = r.rehash(ctx, name, version); err != nil {
			return PutResult{}, fmt.Errorf("put %s: %w, and reading the existing object failed: %w", name, berr, err)
		}
		what += ", " + existing.Describe()
	}
	if existing != out.Checksum || info.Size != out.Size {
		return PutResult{}, fmt.Errorf("put %s in %s: %w: existing plaintext %s (%d bytes), new %s (%d bytes)",
			name, r.b, storage.ErrConflict, what, info.Size, out.Checksum.Describe(), out.Size)
	}
	// Its durability may still be pending (another writer's Put).
	cfg.group.Include(name)
	// What the metadata records must be what the stored object says.
	out.StoredSize, out.Checksum = info.StoredSize, info.Checksum
	return out, nil
}

// rehash reads object name whole (checking it) and returns its plaintext's
// checksum in the algorithm of format version v.
func (r *Repo) rehash(ctx context.Context, name string, v int) (Checksum, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return Checksum{}, err
	}
	defer rd.Close()
	h := newSum(v)
	if _, err := io.Copy(h, rd); err != nil {
		return Checksum{}, err
	}
	return checksumOf(v, h.Sum(nil)), nil
}

// frame writes header, payload and trailer to w, reading the plaintext from
// rd, and returns the plaintext length and checksum.
func frame(ctx context.Context, w io.Writer, rd io.Reader, hdr []byte, cfg putConfig) (int64, []byte, error) {
	var sum []byte
	if cfg.cache != nil {
		// At most the cache's bound of Puts read, hash and compress at
		// once; their backend writes and fsyncs overlap with the next ones.
		if err := cfg.cache.acquire(ctx); err != nil {
			return 0, sum, err
		}
		defer cfg.cache.release()
	}
	if _, err := w.Write(hdr); err != nil {
		return 0, sum, err
	}
	var h hash.Hash
	if cfg.known == nil {
		h = newSum(cfg.version())
	}
	// sink receives the payload: w itself, or an age stream into w.
	var sink io.Writer = w
	var ew io.WriteCloser
	if len(cfg.recipients) > 0 {
		var err error
		if ew, err = encryptTo(w, cfg.recipients); err != nil {
			return 0, sum, err
		}
		sink = ew
	}
	if cfg.workers > 0 && cfg.codec == CodecZstd {
		var pool frameEncPool = syncMapFrames{cfg.encoders}
		if cfg.cache != nil {
			pool = cfg.cache
		}
		fw := newFrameWriter(ctx, sink, h, cfg.level, pool, cfg.workers)
		_, err := fw.ReadFrom(rd)
		if cerr := fw.close(err == nil); err == nil {
			err = cerr
		}
		if ew != nil && err == nil {
			err = ew.Close()
		}
		if err != nil {
			return fw.n, sum, err
		}
		return finishFrame(w, h, fw.n, cfg)
	}
	var payload io.Writer = sink
	var enc *zstd.Encoder
	if cfg.codec == CodecZstd {
		var err error
		if cfg.cache != nil {
			enc, err = cfg.cache.getZstd(sink, cfg.level)
		} else {
			enc, err = getEncoder(cfg.encoders, sink, cfg.level)
		}
		if err != nil {
			return 0, sum, fmt.Errorf("zstd: %w", err)
		}
		payload = enc
	}
	var s2w *s2.Writer
	pooledS2 := cfg.workers <= 1
	if cfg.codec == CodecS2 && !pooledS2 {
		// S2's own writer compresses blocks concurrently.
		s2w = s2.NewWriter(sink, s2.WriterConcurrency(cfg.workers))
		payload = s2w
	} else if cfg.codec == CodecS2 {
		if cfg.cache != nil {
			s2w = cfg.cache.getS2(sink)
		} else {
			s2w = getS2Writer(cfg.encoders, sink)
		}
		payload = s2w
	}
	var buf []byte
	if cfg.cache != nil {
		buf = cfg.cache.getBuf()
		defer cfg.cache.putBuf(buf)
	} else {
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		buf = *bp
	}
	n, err := copyHashed(ctx, payload, h, rd, buf)
	if s2w != nil {
		cerr := s2w.Close()
		if err == nil && cerr != nil {
			err = cerr
		}
		if cerr == nil && pooledS2 && cfg.cache != nil {
			cfg.cache.putS2(s2w)
		} else if cerr == nil && pooledS2 {
			putS2Writer(cfg.encoders, s2w)
		}
	}
	if enc != nil {
		cerr := enc.Close()
		if err == nil && cerr != nil {
			err = cerr
		}
		if cerr == nil && cfg.cache != nil {
			cfg.cache.putZstd(enc, cfg.level)
		} else if cerr == nil {
			putEncoder(cfg.encoders, enc, cfg.level)
		}
	}
	if ew != nil && err == nil {
		err = ew.Close()
	}
	if err != nil {
		return n, sum, err
	}
	return finishFrame(w, h, n, cfg)
}

// finishFrame writes the trailer of a payload of n plaintext bytes whose
// checksum is h's (or cfg.known).
func finishFrame(w io.Writer, h hash.Hash, n int64, cfg putConfig) (int64, []byte, error) {
	var sum []byte
	if cfg.known != nil {
		sum = cfg.known[:]
	} else {
		sum = h.Sum(nil)
	}
	if cfg.want != nil && !bytes.Equal(cfg.want[:], sum) {
		// Before the trailer: the backend sees a failed read and stores
		// nothing.
		return n, sum, fmt.Errorf("%w: expected %s, read %x", ErrUnexpectedContent, hexSum(*cfg.want), sum)
	}
	if _, err := w.Write(encodeTrailer(cfg.version(), cfg.name, cfg.rawAttrs, sum, n)); err != nil {
		return n, sum, err
	}
	return n, sum, nil
}

// copyBufSize is the chunk size in which Put reads the plaintext.
const copyBufSize = 256 << 10

// copyBufs pools Put's copy buffers (without an EncoderCache): allocating
// and zeroing 256 KiB per object was a tenth of the CPU time of a media
// sync of small files.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyHashed copies rd to w and h (unless nil) through buf, checking ctx
// between chunks.
func copyHashed(ctx context.Context, w io.Writer, h hash.Hash, rd io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := rd.Read(buf)
		if m > 0 {
			if h != nil {
				h.Write(buf[:m])
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Info describes a stored object.
type Info struct {
	Name string
	// StoredSize is the length of the stored object, framing included.
	StoredSize int64
	// Size is the plaintext length.
	Size int64
	// Checksum is the plaintext's checksum as the trailer records it.
	Checksum
	// Codec is how the payload is stored.
	Codec Codec
	// Encrypted is true when the payload is age-encrypted.
	Encrypted bool
	// Attrs are the attributes given to Put (never nil).
	Attrs map[string]string
}

// Stat reads an object's header and trailer (not its payload) and returns
// what they say. It checks the framing and the binding of name and
// attributes (format version 2), but not the payload's checksum; Verify
// does.
func (r *Repo) Stat(ctx context.Context, name string) (Info, error) {
	oi, err := r.b.Stat(ctx, name)
	if err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", name, err)
	}
	if oi.Size < minObjectSize {
		return Info{}, r.corrupt(name, fmt.Errorf("only %d bytes stored, less than header and trailer", oi.Size))
	}
	first := min(oi.Size, 4096)
	hb, err := r.readRange(ctx, name, 0, first)
	if err != nil {
		return Info{}, err
	}
	fh, err := parseFixedHeader(hb)
	if err != nil {
		return Info{}, r.corrupt(name, err)
	}
	tlen := int64(trailerLen(fh.version))
	hsize := int64(fixedHeaderSize + fh.attrsLen)
	if hsize > oi.Size-tlen {
		return Info{}, r.corrupt(name, fmt.Errorf("attributes block of %d bytes runs past the payload", fh.attrsLen))
	}
	if hsize > first {
		more, err := r.readRange(ctx, name, first, hsize-first)
		if err != nil {
			return Info{}, err
		}
		hb = append(hb, more...)
	}
	raw := hb[fixedHeaderSize:hsize]
	attrs, err := parseAttrs(raw)
	if err != nil {
		return Info{}, r.corrupt(name, err)
	}
	var tb []byte
	if oi.Size <= first {
		tb = hb[oi.Size-tlen : oi.Size]
	} else if tb, err = r.readRange(ctx, name, oi.Size-tlen, tlen); err != nil {
		return Info{}, err
	}
	tr, err := parseTrailer(fh.version, tb)
	if err != nil {
		return Info{}, r.corrupt(name, err)
	}
	if err := checkBinding(fh.version, name, raw, tr); err != nil {
		return Info{}, r.corrupt(name, err)
	}
	c, encrypted := fh.codec, fh.encrypted
	payload := oi.Size - hsize - tlen
	if c == CodecNone && !encrypted && payload != tr.size {
		return Info{}, r.corrupt(name, fmt.Errorf("payload is %d bytes, trailer says %d", payload, tr.size))
	}
	return Info{Name: name, StoredSize: oi.Size, Size: tr.size, Checksum: checksumOf(fh.version, tr.sum), Codec: c, Encrypted: encrypted, Attrs: attrs}, nil
}

// readRange reads exactly length bytes at offset; a short object is corrupt.
func (r *Repo) readRange(ctx context.Context, name string, offset, length int64) ([]byte, error) {
	rc, err := r.b.Get(ctx, name, offset, length)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer rc.Close()
	buf := make([]byte, length)
	if _, err := io.ReadFull(rc, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, r.corrupt(name, fmt.Errorf("object shorter than expected"))
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return buf, nil
}

// Verify reads the whole object, checks it, and returns its Info.
func (r *Repo) Verify(ctx context.Context, name string) (Info, error) {
	rd, err := r.Get(ctx, name)
	if err != nil {
		return Info{}, err
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return Info{}, err
	}
	return rd.Info(), nil
}

// List calls fn for every stored object whose name starts with prefix, in
// lexical order (see storage.Backend.List).
func (r *Repo) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return r.b.List(ctx, prefix, fn)
}

// Delete removes an object; a missing object is success.
func (r *Repo) Delete(ctx context.Context, name string) error {
	return r.b.Delete(ctx, name)
}

func getEncoder(pools *sync.Map, w io.Writer, level zstd.EncoderLevel) (*zstd.Encoder, error) {
	p, _ := pools.LoadOrStore(level, &sync.Pool{})
	if e, ok := p.(*sync.Pool).Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return e, nil
	}
	return newZstdEncoder(w, level)
}

func newZstdEncoder(w io.Writer, level zstd.EncoderLevel) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20), zstd.WithEncoderCRC(false))
}

func putEncoder(pools *sync.Map, e *zstd.Encoder, level zstd.EncoderLevel) {
	e.Reset(nil)
	if p, ok := pools.Load(level); ok {
		p.(*sync.Pool).Put(e)
	}
}

// s2Pool is the key of the S2 writer pool in Repo.encoders.
type s2Pool struct{}

func getS2Writer(pools *sync.Map, w io.Writer) *s2.Writer {
	p, _ := pools.LoadOrStore(s2Pool{}, &sync.Pool{})
	if e, ok := p.(*sync.Pool).Get().(*s2.Writer); ok {
		e.Reset(w)
		return e
	}
	return newS2Writer(w)
}

func newS2Writer(w io.Writer) *s2.Writer { return s2.NewWriter(w, s2.WriterConcurrency(1)) }

func putS2Writer(pools *sync.Map, e *s2.Writer) {
	e.Reset(nil)
	if p, ok := pools.Load(s2Pool{}); ok {
		p.(*sync.Pool).Put(e)
	}
}
