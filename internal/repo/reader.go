package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Reader streams an object's plaintext and checks it: when the payload ends,
// Read compares checksum and length with the trailer and returns io.EOF only if
// they match. Any damage (bad framing, truncation, a zstd error, a checksum
// or length mismatch) is an error for which IsCorrupt is true, never io.EOF.
type Reader struct {
	r     *Repo
	name  string
	body  io.ReadCloser
	hdr   header
	hold  *holdback
	src   io.Reader // plaintext source (the decoder or hold)
	dec   *zstd.Decoder
	fdec  *frameReader // WithReadWorkers
	h     hash.Hash
	n     int64
	info  Info
	err   error // sticky error, io.EOF after a successful check
	close bool
}

// Get opens an object for reading its plaintext. The attributes are
// available from Attrs at once; the checksum is checked as the payload is
// read.
func (r *Repo) Get(ctx context.Context, name string, opts ...GetOption) (*Reader, error) {
	var cfg getConfig
	for _, o := range opts {
		o(&cfg)
	}
	body, err := r.b.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	track := &trackReader{r: body}
	hdr, err := readHeader(track)
	if err != nil {
		body.Close()
		if track.is(err) {
			return nil, fmt.Errorf("get %s: %w", name, err)
		}
		return nil, r.corrupt(name, err)
	}
	hold := &holdback{r: track, track: track, keep: hdr.trailerLen()}
	rd := &Reader{r: r, name: name, body: body, hdr: hdr, hold: hold, src: hold, h: newSum(hdr.version)}
	var payload io.Reader = hold
	if hdr.encrypted {
		dr, err := r.decryptFrom(name, hold)
		if err != nil {
			body.Close()
			if IsEncryption(err) || (track.err != nil && track.is(err)) {
				return nil, fmt.Errorf("get %s: %w", name, err)
			}
			return nil, r.corrupt(name, err)
		}
		payload, rd.src = dr, dr
	}
	if hdr.codec == CodecZstd && cfg.workers > 1 {
		// sha256 (2 GB/s) gets a goroutine of its own, so that it
		// overlaps with decoding; XXH3 (version 3, ~45 GB/s) costs less
		// inline than the hand-over per frame.
		var h hash.Hash
		if hdr.version != 3 {
			h = rd.h
		}
		rd.fdec = newFrameReader(payload, cfg.workers, h)
		rd.src = rd.fdec
	} else if hdr.codec == CodecZstd {
		// Concurrency 1 decodes synchronously: no goroutines to leak.
		dec, err := zstd.NewReader(payload, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			body.Close()
			return nil, fmt.Errorf("get %s: zstd: %w", name, err)
		}
		rd.dec, rd.src = dec, dec
	}
	if hdr.codec == CodecS2 {
		rd.src = s2.NewReader(payload)
	}
	return rd, nil
}

// Attrs returns the object's attributes (never nil).
func (rd *Reader) Attrs() map[string]string { return rd.hdr.attrs }

// Info describes the object; Size, Checksum and StoredSize are known once Read
// has returned io.EOF.
func (rd *Reader) Info() Info { return rd.info }

// Read implements io.Reader.
func (rd *Reader) Read(p []byte) (int, error) {
	if rd.err != nil {
		return 0, rd.err
	}
	if rd.close {
		return 0, fmt.Errorf("read %s: reader closed", rd.name)
	}
	n, err := rd.src.Read(p)
	if n > 0 {
		if rd.fdec == nil || !rd.fdec.hashed {
			rd.h.Write(p[:n])
		}
		rd.n += int64(n)
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		rd.err = rd.finish()
		if rd.err == io.EOF && n > 0 {
			return n, nil
		}
		return n, rd.err
	case rd.hold.bodyErr(err):
		// Reading the backend failed (I/O, network): not a corruption.
		rd.err = fmt.Errorf("read %s: %w", rd.name, rd.hold.track.err)
		return n, rd.err
	default:
		rd.err = rd.r.corrupt(rd.name, err)
		return n, rd.err
	}
}

// finish checks the trailer after the payload has ended.
func (rd *Reader) finish() error {
	if rd.hold.track.err != nil {
		return fmt.Errorf("read %s: %w", rd.name, rd.hold.track.err)
	}
	if !rd.hold.eof {
		// The decoder stopped before the end of the payload.
		return rd.r.corrupt(rd.name, errors.New("data after the end of the compressed payload"))
	}
	tr, err := parseTrailer(rd.hdr.version, rd.hold.trailer())
	if err != nil {
		return rd.r.corrupt(rd.name, err)
	}
	sum := rd.h.Sum(nil)
	if tr.size != rd.n {
		return rd.r.corrupt(rd.name, fmt.Errorf("plaintext is %d bytes, trailer says %d", rd.n, tr.size))
	}
	if !bytes.Equal(sum, tr.sum) {
		return rd.r.corrupt(rd.name, fmt.Errorf("plaintext %s %x, trailer says %x", sumName(rd.hdr.version), sum, tr.sum))
	}
	if err := checkBinding(rd.hdr.version, rd.name, rd.hdr.raw, tr); err != nil {
		return rd.r.corrupt(rd.name, err)
	}
	rd.info = Info{
		Name:       rd.name,
		StoredSize: rd.hdr.size + rd.hold.passed + int64(rd.hold.keep),
		Size:       rd.n,
		Checksum:   checksumOf(rd.hdr.version, sum),
		Codec:      rd.hdr.codec,
		Attrs:      rd.hdr.attrs,
	}
	return io.EOF
}

// Close releases the object.
func (rd *Reader) Close() error {
	if rd.close {
		return nil
	}
	rd.close = true
	if rd.dec != nil {
		rd.dec.Close()
	}
	// The body first: it unblocks the frame reader's producer.
	err := rd.body.Close()
	if rd.fdec != nil {
		rd.fdec.Close()
	}
	return err
}

// trackReader records the error of the underlying body, so that an I/O error
// is not mistaken for corruption.
type trackReader struct {
	r   io.Reader
	err error // first error other than io.EOF
}

func (t *trackReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// is reports whether err is (or wraps) the body's error.
func (t *trackReader) is(err error) bool { return t.err != nil && errors.Is(err, t.err) }

// holdback passes through everything read from r except the last
// keep bytes, which it keeps as the trailer.
type holdback struct {
	r      io.Reader
	keep   int // the trailer's size
	track  *trackReader
	buf    []byte
	start  int
	end    int
	eof    bool  // r returned io.EOF
	err    error // r's error, if any (io.EOF at the end)
	passed int64 // bytes passed through
}

// bodyErr reports whether err comes from reading the underlying body (not
// from its content), e.g. an I/O error.
func (h *holdback) bodyErr(err error) bool { return h.track.is(err) }

func (h *holdback) Read(p []byte) (int, error) {
	if h.buf == nil {
		h.buf = make([]byte, 64<<10+h.keep)
	}
	for {
		if avail := h.end - h.start - h.keep; avail > 0 {
			n := copy(p, h.buf[h.start:h.start+avail])
			h.start += n
			h.passed += int64(n)
			return n, nil
		}
		if h.err != nil {
			if h.err == io.EOF {
				return 0, io.EOF
			}
			return 0, h.err
		}
		// Move the held bytes to the front and fill the rest.
		h.end = copy(h.buf, h.buf[h.start:h.end])
		h.start = 0
		n, err := h.r.Read(h.buf[h.end:])
		h.end += n
		if err != nil {
			h.err = err
			h.eof = err == io.EOF
		}
	}
}

// trailer returns the held bytes (the trailer if the object is whole).
func (h *holdback) trailer() []byte { return h.buf[h.start:h.end] }
