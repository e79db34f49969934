package repo

import (
	"errors"
	"fmt"

	"github.com/synbak/synbak/internal/storage"
)

// Sentinel errors. Callers test with the predicates below.
var (
	// ErrCorrupt says that a stored object failed a check: bad framing, a
	// truncated object, a decompression error, or a checksum or length that
	// does not match the trailer.
	ErrCorrupt = errors.New("object is corrupt")
	// ErrWrongCluster says that the repository belongs to another PostgreSQL
	// cluster (another system identifier).
	ErrWrongCluster = errors.New("repository belongs to another PostgreSQL cluster")
	// ErrNotInitialized says that the repository has no metadata yet.
	ErrNotInitialized = errors.New("repository is not initialized")
	// ErrMetadataMissing says that the repository holds objects but no
	// metadata: an existing repository whose metadata was deleted, never a
	// new one. Init refuses to create metadata over it.
	ErrMetadataMissing = errors.New("repository holds objects but no metadata")
	// ErrUnexpectedContent says that a Put with WantSHA256 read another
	// plaintext than the expected one (a file that changed while it was
	// copied); nothing was stored.
	ErrUnexpectedContent = errors.New("plaintext differs from the expected sha256")
)

// IsNotExist reports whether err says that an object does not exist.
func IsNotExist(err error) bool { return storage.IsNotExist(err) }

// IsConflict reports whether err says that an object of the same name exists
// with a different plaintext.
func IsConflict(err error) bool { return storage.IsConflict(err) }

// IsCorrupt reports whether err says that a stored object is damaged.
func IsCorrupt(err error) bool { return errors.Is(err, ErrCorrupt) }

// IsUnexpectedContent reports whether err says that a Put with WantSHA256
// read another plaintext than the expected one.
func IsUnexpectedContent(err error) bool { return errors.Is(err, ErrUnexpectedContent) }

// IsWrongCluster reports whether err says that the repository belongs to
// another PostgreSQL cluster.
func IsWrongCluster(err error) bool { return errors.Is(err, ErrWrongCluster) }

// IsNotInitialized reports whether err says that the repository has not been
// initialized.
func IsNotInitialized(err error) bool { return errors.Is(err, ErrNotInitialized) }

// IsMetadataMissing reports whether err says that the repository holds
// objects but no metadata (Init refuses to create a repository over them).
func IsMetadataMissing(err error) bool { return errors.Is(err, ErrMetadataMissing) }

// corruptError builds an IsCorrupt error naming the object and the reason.
func (r *Repo) corrupt(name string, reason error) error {
	return fmt.Errorf("object %s in repository %s: %w: %v (run synbak verify; the object cannot be trusted)", name, r.b, ErrCorrupt, reason)
}
