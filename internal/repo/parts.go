package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// PartInfo describes one stored part: plaintext size and checksum (as its
// trailer records them: "sha256", or "xxh3" for a version 3 object), stored
// size.
type PartInfo struct {
	Size       int64 `json:"size"`
	StoredSize int64 `json:"stored_size"`
	Checksum
}

// errPartAborted closes a part's pipe when the backup fails.
var errPartAborted = errors.New("base backup aborted")

// PartWriter streams one long stream (a base-backup archive, a dump) into the repository as
// a sequence of objects of at most partSize plaintext bytes each (partSize
// 0: one object). Each part is a repo.Put reading from an io.Pipe, so no
// archive is held in memory or on disk.
type PartWriter struct {
	ctx      context.Context
	r        *Repo
	name     func(part int) string
	attrs    func(part int) map[string]string
	partSize int64
	opts     []PutOption

	pw     *io.PipeWriter
	done   chan putResult
	inPart int64

	parts []PartInfo
}

type putResult struct {
	res PutResult
	err error
}

// NewPartWriter starts a PartWriter: part n is stored under name(n) with
// attrs(n); partSize 0 stores everything in one object.
func (r *Repo) NewPartWriter(ctx context.Context, name func(int) string, attrs func(int) map[string]string, partSize int64, opts ...PutOption) *PartWriter {
	return &PartWriter{ctx: ctx, r: r, name: name, attrs: attrs, partSize: partSize, opts: opts}
}

func (w *PartWriter) startPart() {
	pr, pw := io.Pipe()
	w.pw, w.done, w.inPart = pw, make(chan putResult, 1), 0
	name, attrs := w.name(len(w.parts)), w.attrs(len(w.parts))
	done := w.done
	go func() {
		res, err := w.r.Put(w.ctx, name, pr, attrs, w.opts...)
		// Unblock the writer whatever happened: after a failed Put nobody
		// reads the pipe any more.
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(io.ErrClosedPipe)
		}
		done <- putResult{res, err}
	}()
}

// Write streams p into the current part, starting and finishing parts at
// partSize boundaries. p is consumed before Write returns.
func (w *PartWriter) Write(p []byte) error {
	for len(p) > 0 {
		if w.pw == nil {
			w.startPart()
		}
		n := len(p)
		if w.partSize > 0 && int64(n) > w.partSize-w.inPart {
			n = int(w.partSize - w.inPart)
		}
		if _, err := w.pw.Write(p[:n]); err != nil {
			return w.fail(err)
		}
		w.inPart += int64(n)
		p = p[n:]
		if w.partSize > 0 && w.inPart >= w.partSize {
			if err := w.finishPart(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *PartWriter) finishPart() error {
	if w.pw == nil {
		return nil
	}
	w.pw.Close()
	res := <-w.done
	w.pw, w.done = nil, nil
	if res.err != nil {
		return fmt.Errorf("store %s: %w", w.name(len(w.parts)), res.err)
	}
	if res.res.Size != w.inPart {
		return fmt.Errorf("store %s: stored %d bytes, sent %d", w.name(len(w.parts)), res.res.Size, w.inPart)
	}
	w.parts = append(w.parts, PartInfo{Size: res.res.Size, StoredSize: res.res.StoredSize, Checksum: res.res.Checksum})
	return nil
}

// fail aborts the current part and returns the Put's error if it has one
// (it says more than the pipe's).
func (w *PartWriter) fail(err error) error {
	if w.pw == nil {
		return err
	}
	w.pw.CloseWithError(errPartAborted)
	res := <-w.done
	w.pw, w.done = nil, nil
	if res.err != nil && !errors.Is(res.err, errPartAborted) {
		return fmt.Errorf("store %s: %w", w.name(len(w.parts)), res.err)
	}
	return err
}

// Abort stops the current part without storing it.
func (w *PartWriter) Abort() { _ = w.fail(errPartAborted) }

// Close finishes the last part and returns the parts stored. The
// checksums are repo.Put's (of each part's plaintext): hashing the whole
// archive once more cost about 10% of a backup's CPU.
func (w *PartWriter) Close() ([]PartInfo, error) {
	if err := w.finishPart(); err != nil {
		return nil, err
	}
	return w.parts, nil
}

// PartsReader reads a stream stored by a PartWriter, part by part. Get
// checks each part against its own trailer; PartsReader also checks that
// the trailer's size and checksum are the ones the caller recorded (so that a
// part replaced by another valid object is caught), and its EOF comes only
// after every part was read and checked.
type PartsReader struct {
	ctx    context.Context
	r      *Repo
	name   func(int) string
	parts  []PartInfo
	onRead func(n int)
	opts   []GetOption
	next   int
	cur    *Reader
	n      int64
}

// OpenParts returns a reader of the parts named name(0..len(parts)-1);
// onRead (optional) is called with the byte count of every read.
func (r *Repo) OpenParts(ctx context.Context, name func(int) string, parts []PartInfo, onRead func(n int), opts ...GetOption) *PartsReader {
	return &PartsReader{ctx: ctx, r: r, name: name, parts: parts, onRead: onRead, opts: opts}
}

// N returns the number of plaintext bytes read so far.
func (p *PartsReader) N() int64 { return p.n }

func (p *PartsReader) Read(b []byte) (int, error) {
	for {
		if p.cur == nil {
			if p.next >= len(p.parts) {
				return 0, io.EOF
			}
			rd, err := p.r.Get(p.ctx, p.name(p.next), p.opts...)
			if err != nil {
				return 0, err
			}
			p.cur = rd
			p.next++
		}
		n, err := p.cur.Read(b)
		p.n += int64(n)
		if p.onRead != nil && n > 0 {
			p.onRead(n)
		}
		if err == io.EOF {
			info, want := p.cur.Info(), p.parts[p.next-1]
			cerr := p.cur.Close()
			p.cur = nil
			if cerr != nil {
				return n, cerr
			}
			if info.Size != want.Size || info.Checksum != want.Checksum {
				return n, fmt.Errorf("%s: %w: %d bytes with %s, the metadata recorded %d bytes with %s",
					info.Name, ErrCorrupt, info.Size, info.Checksum.Describe(), want.Size, want.Checksum.Describe())
			}
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Close releases the part being read, if any.
func (p *PartsReader) Close() error {
	if p.cur != nil {
		err := p.cur.Close()
		p.cur = nil
		return err
	}
	return nil
}

// Codec returns the compression Put uses by default.
func (r *Repo) Codec() Codec { return r.codec }
