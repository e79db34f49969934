// Package durable writes local files so that a reader sees either the old
// file or the whole new one, and, once a call returns nil, the new one
// survives a crash: a temporary file in the same directory is written,
// fsynced and renamed over the target (or linked to it, never replacing an
// existing file), then the directory is fsynced.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
)

// Options say how Write publishes a file.
type Options struct {
	// Mode is the file's exact permission bits, whatever the umask
	// (0: 0600).
	Mode os.FileMode
	// NoOverwrite publishes with link(2) instead of rename(2): an existing
	// target is left alone and Write returns an error satisfying
	// errors.Is(err, fs.ErrExist).
	NoOverwrite bool
	// SkipDirSync leaves the directory's fsync to the caller, who syncs
	// it once after publishing many files (SyncDir). Until then a crash
	// may lose the new name, never expose a partial file.
	SkipDirSync bool
}

// Write creates path durably with the content fill writes into the
// temporary file (fill may also set the file's owner or times; it must not
// close it). On error nothing is left behind.
func Write(path string, opts Options, fill func(f *os.File) error) (err error) {
	mode := opts.Mode
	if mode == 0 {
		mode = 0o600
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		os.Remove(tmp) // after a link the target keeps the content
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return err
	}
	if opts.NoOverwrite {
		err = os.Link(tmp, path)
	} else {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return err
	}
	if opts.SkipDirSync {
		return nil
	}
	return SyncDir(dir)
}

// WriteFile writes data to path durably with exactly mode, replacing an
// existing file.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return Write(path, Options{Mode: mode}, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// SyncDir fsyncs a directory, so that the entries created, renamed or
// removed in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
