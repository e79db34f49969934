package durable

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// flushBehindBytes is how much of a file is written before the kernel is
// asked to start writing it back.
const flushBehindBytes = 4 << 20

// FlushBehind writes to a file and, every 4 MiB, starts the kernel's
// writeback of what was written (sync_file_range SYNC_FILE_RANGE_WRITE,
// which does not wait). Without it a big file stays dirty in the page
// cache, below the kernel's background threshold, until the fsync (or
// syncfs) at the end writes all of it while nothing else runs; with it the
// disk writes while the rest of the file is still being produced, and the
// final sync waits for little. It is only a hint: the sync is still what
// makes the file durable, so its errors are ignored (a file system without
// sync_file_range behaves as before).
type FlushBehind struct {
	f            *os.File
	fd           int
	off, flushed int64
}

// NewFlushBehind returns a FlushBehind writing to f at its current offset.
func NewFlushBehind(f *os.File) *FlushBehind {
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		off = 0
	}
	return &FlushBehind{f: f, fd: int(f.Fd()), off: off, flushed: off}
}

// Write writes p to the file.
func (w *FlushBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.flushed >= flushBehindBytes {
		w.Flush()
	}
	return n, err
}

// Flush starts the writeback of what was written since the last one.
func (w *FlushBehind) Flush() {
	if w.off > w.flushed {
		_ = unix.SyncFileRange(w.fd, w.flushed, w.off-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.off
	}
}
