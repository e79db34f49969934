// Package storage defines the interface every repository backend implements
// (a local directory, S3-compatible object storage) and the errors callers
// test with predicates.
//
// A backend stores immutable, named objects. Names are slash-separated
// relative paths ("wal/00000001/000000010000000000000003"); they never start
// with a slash, never contain "." or ".." elements or empty elements, and are
// treated as opaque keys: the interface relies on neither rename nor
// directories, so an object store fits it as well as a file system. One rule
// comes from file systems: no name may equal a leading part of another name
// up to a slash (objects "a" and "a/b" cannot coexist).
//
// Backends know nothing about checksums, compression or encryption: that is
// the repository layer's job (internal/repo).
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Backend is the storage interface. All methods are safe for concurrent use.
type Backend interface {
	// Put stores everything read from r under name, atomically: a reader
	// never sees a partial object, and an interrupted Put leaves no object
	// (and, eventually, no garbage visible through List).
	//
	// Objects are immutable. If name already exists, Put compares contents:
	// byte-identical content is success (nil); different content is an
	// error for which IsConflict is true, and the existing object is left
	// untouched. Concurrent Puts of the same name and content all succeed.
	//
	// r is read to EOF; its length need not be known in advance.
	Put(ctx context.Context, name string, r io.Reader) error

	// Get opens the object for reading from offset. length < 0 reads to the
	// end. A missing object is an error for which IsNotExist is true.
	Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's size and modification time. A missing
	// object is an error for which IsNotExist is true.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for every object whose name starts with prefix (a plain
	// string prefix, not a directory), in lexical order of names. An error
	// returned by fn stops the listing and is returned. Objects being
	// written by an unfinished Put are not listed.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object. Deleting a missing object is success, so
	// that an interrupted deletion can be repeated.
	Delete(ctx context.Context, name string) error

	// String describes the backend for messages (a path or a URL without
	// credentials).
	String() string
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Sentinel errors; backends wrap them (with %w) so that the predicates below
// answer for any backend.
var (
	ErrNotExist = errors.New("object does not exist")
	ErrConflict = errors.New("object already exists with different content")
	ErrBadName  = errors.New("invalid object name")
)

// IsNotExist reports whether err says that an object does not exist.
func IsNotExist(err error) bool { return errors.Is(err, ErrNotExist) }

// IsConflict reports whether err says that a Put found an object of the same
// name with different content.
func IsConflict(err error) bool { return errors.Is(err, ErrConflict) }

// ValidName checks the naming rules above.
func ValidName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el == "." || el == ".." || strings.ContainsRune(el, 0) {
			return fmt.Errorf("%w: %q", ErrBadName, name)
		}
	}
	return nil
}

// DeferredSyncer is implemented by backends whose Put can leave part of its
// durability work to be done later, once for many objects: the local
// backend fsyncs the directory an object was linked into, and one fsync
// covers every object linked into it before. A caller that stores many
// objects and then a record naming them (the media index) puts them through
// a SyncGroup and calls Sync before storing the record; every other Put
// stays durable when it returns. Backends whose Put is durable on return
// (S3) need not implement it.
type DeferredSyncer interface {
	Backend
	// NewSyncGroup returns an empty group.
	NewSyncGroup() SyncGroup
}

// SyncGroup collects deferred durability work. It is safe for concurrent
// use.
type SyncGroup interface {
	// Put is Backend.Put, except that when it returns the object may not be
	// durable until Sync returns nil. Its content is: a crash never leaves a
	// partial object under the name, only the whole object or none.
	Put(ctx context.Context, name string, r io.Reader) error
	// Include makes the next Sync make name durable too: an object that was
	// found to exist (by Stat, say) and that a Put, of this process or
	// another, may have published moments ago with its durability still
	// pending.
	Include(name string)
	// Sync makes durable every object stored by Put or named by Include
	// before Sync was called. After an error, the work is kept for the next
	// Sync.
	Sync(ctx context.Context) error
}
