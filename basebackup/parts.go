package basebackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/synbak/synbak/internal/repo"
)

// errPartAborted closes a part's pipe when the backup fails.
var errPartAborted = errors.New("base backup aborted")

// partWriter streams one archive (or the manifest) into the repository as
// a sequence of objects of at most partSize plaintext bytes each (partSize
// 0: one object). Each part is a repo.Put reading from an io.Pipe, so no
// archive is held in memory or on disk.
type partWriter struct {
	ctx      context.Context
	r        *repo.Repo
	name     func(part int) string
	attrs    func(part int) map[string]string
	partSize int64
	opts     []repo.PutOption

	pw     *io.PipeWriter
	done   chan putResult
	inPart int64

	parts []Part
}

type putResult struct {
	res repo.PutResult
	err error
}

func newPartWriter(ctx context.Context, r *repo.Repo, name func(int) string, attrs func(int) map[string]string, partSize int64, opts []repo.PutOption) *partWriter {
	return &partWriter{ctx: ctx, r: r, name: name, attrs: attrs, partSize: partSize, opts: opts}
}

func (w *partWriter) startPart() {
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
func (w *partWriter) Write(p []byte) error {
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

func (w *partWriter) finishPart() error {
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
	w.parts = append(w.parts, Part{Size: res.res.Size, StoredSize: res.res.StoredSize, SHA256: res.res.SHA256})
	return nil
}

// fail aborts the current part and returns the Put's error if it has one
// (it says more than the pipe's).
func (w *partWriter) fail(err error) error {
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
func (w *partWriter) Abort() { _ = w.fail(errPartAborted) }

// Close finishes the last part and returns the parts stored. The
// checksums are repo.Put's (sha256 of each part's plaintext): hashing the
// whole archive once more cost about 10% of a backup's CPU.
func (w *partWriter) Close() ([]Part, error) {
	if err := w.finishPart(); err != nil {
		return nil, err
	}
	return w.parts, nil
}

func partAttrs(id, archive string) func(int) map[string]string {
	return func(n int) map[string]string {
		return map[string]string{"kind": "basebackup", "backup_id": id, "archive": archive, "part": strconv.Itoa(n)}
	}
}
