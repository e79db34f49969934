package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"

	"github.com/synbak/synbak/internal/storage"
)

// Content is a plaintext held in memory together with its sha256, which
// NewContent computes from exactly these bytes. It lets a caller that needs
// the checksum before storing (a content-addressed name) hash the bytes
// once: PutContent writes the checksum it carries instead of hashing again.
// The bytes must not change until the last PutContent with them returns.
type Content struct {
	data []byte
	sum  [32]byte
}

// NewContent hashes data.
func NewContent(data []byte) Content { return Content{data: data, sum: sha256.Sum256(data)} }

// Sum returns the sha256 of the content.
func (c Content) Sum() [32]byte { return c.sum }

// SHA256 returns the sha256 of the content, lowercase hex.
func (c Content) SHA256() string { return hex.EncodeToString(c.sum[:]) }

// Len returns the length of the content.
func (c Content) Len() int { return len(c.data) }

// PutContent is Put for a plaintext in memory: the trailer's checksum is the
// one NewContent computed from these bytes, and an object stored without
// compression or encryption goes to the backend without a copy.
func (r *Repo) PutContent(ctx context.Context, name string, c Content, attrs map[string]string, opts ...PutOption) (PutResult, error) {
	return r.put(ctx, name, &segments{parts: [][]byte{c.data}}, &c, attrs, opts)
}

// WantSHA256 makes Put fail with an error for which IsUnexpectedContent is
// true, storing nothing, when the plaintext it reads does not have this
// sha256: for a stream whose checksum the caller computed on an earlier
// read (a file that may change meanwhile). The check is on the bytes Put
// reads, hashed as they are framed.
func WantSHA256(sum [32]byte) PutOption { return func(c *putConfig) { c.want = &sum } }

// SyncGroup defers part of the durability of many Puts to one Sync, on
// backends that can (storage.DeferredSyncer: the local backend fsyncs each
// directory once for all the objects linked into it); on other backends
// Puts are durable when they return and Sync does nothing. Whoever stores a
// record naming objects put through a group (an index) must call Sync
// first. A nil *SyncGroup is a group that defers nothing.
type SyncGroup struct {
	g storage.SyncGroup
}

// NewSyncGroup returns an empty group for this repository's backend.
func (r *Repo) NewSyncGroup() *SyncGroup {
	if d, ok := r.b.(storage.DeferredSyncer); ok {
		return &SyncGroup{g: d.NewSyncGroup()}
	}
	return &SyncGroup{}
}

// InSyncGroup makes a Put's object durable only once g.Sync returns nil.
func InSyncGroup(g *SyncGroup) PutOption { return func(c *putConfig) { c.group = g } }

// Include makes the next Sync make the existing object name durable too:
// an object found by Stat that a Put (of this group, or of another writer)
// may have published with its durability still pending.
func (g *SyncGroup) Include(name string) {
	if g != nil && g.g != nil {
		g.g.Include(name)
	}
}

// Sync makes every object put through the group, or named by Include,
// before Sync was called durable.
func (g *SyncGroup) Sync(ctx context.Context) error {
	if g == nil || g.g == nil {
		return nil
	}
	return g.g.Sync(ctx)
}

// segments reads byte slices one after the other; it is an io.WriterTo
// (the local backend writes them without a copy) and an io.Seeker (the
// retry decorator rewinds it for another try).
type segments struct {
	parts [][]byte
	off   int64
}

func (s *segments) size() int64 {
	var n int64
	for _, p := range s.parts {
		n += int64(len(p))
	}
	return n
}

// at returns the part and the offset in it where off falls.
func (s *segments) at() (int, int64) {
	rest := s.off
	for i, p := range s.parts {
		if rest < int64(len(p)) {
			return i, rest
		}
		rest -= int64(len(p))
	}
	return len(s.parts), 0
}

func (s *segments) Read(b []byte) (int, error) {
	i, o := s.at()
	if i == len(s.parts) {
		return 0, io.EOF
	}
	n := copy(b, s.parts[i][o:])
	s.off += int64(n)
	return n, nil
}

func (s *segments) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		i, o := s.at()
		if i == len(s.parts) {
			return total, nil
		}
		n, err := w.Write(s.parts[i][o:])
		s.off += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

func (s *segments) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size()
	default:
		return s.off, errors.New("segments: bad whence")
	}
	if offset < 0 {
		return s.off, errors.New("segments: negative position")
	}
	s.off = offset
	return offset, nil
}
