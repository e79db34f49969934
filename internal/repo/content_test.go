package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"

	"filippo.io/age"

	"github.com/synbak/synbak/internal/storage"
)

// TestPutContent: PutContent stores the same object as Put would (any
// codec, encrypted or not), with the checksum NewContent computed.
func TestPutContent(t *testing.T) {
	ctx := context.Background()
	key := newIdentity(t)
	for _, enc := range []bool{false, true} {
		for _, codec := range []string{"none", "zstd", "s2"} {
			t.Run(fmt.Sprintf("%s/encrypted=%v", codec, enc), func(t *testing.T) {
				opts := Options{Compression: codec}
				if enc {
					opts.Recipients, opts.Identities = []age.Recipient{key.Recipient()}, []age.Identity{key}
				}
				r, _ := initRepo(t, opts)
				for _, data := range [][]byte{nil, []byte("x"), mixedPayload(3<<20 + 5)} {
					c := NewContent(data)
					if c.Sum() != sha256.Sum256(data) || c.SHA256() != sumHex(data) || c.Len() != len(data) {
						t.Fatalf("NewContent: sum %s, len %d", c.SHA256(), c.Len())
					}
					name := "media/objects/" + c.SHA256()
					res, err := r.PutContent(ctx, name, c, map[string]string{"a": "b"})
					if err != nil {
						t.Fatal(err)
					}
					if res.SHA256 != sumHex(data) || res.Size != int64(len(data)) {
						t.Fatalf("PutResult %+v", res)
					}
					if _, err := r.Verify(ctx, name); err != nil {
						t.Fatal(err)
					}
					info, err := r.Stat(ctx, name)
					if err != nil {
						t.Fatal(err)
					}
					if info.StoredSize != res.StoredSize || info.Attrs["a"] != "b" || info.Encrypted != enc {
						t.Fatalf("Info %+v, PutResult %+v", info, res)
					}
					got, err := readAll(t, r, name)
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("read back %d bytes, %v", len(got), err)
					}
					// Again, and as a stream: the same plaintext is no conflict.
					if _, err := r.PutContent(ctx, name, c, nil); err != nil {
						t.Fatal(err)
					}
					if _, err := r.Put(ctx, name, bytes.NewReader(data), nil, Uncompressed()); err != nil {
						t.Fatal(err)
					}
					other := NewContent(append(bytes.Clone(data), 'x'))
					if _, err := r.PutContent(ctx, name, other, nil); !IsConflict(err) {
						t.Fatalf("PutContent of other content: %v, want a conflict", err)
					}
				}
			})
		}
	}
}

// TestWantSHA256: a stream that is not the expected plaintext stores
// nothing, whatever the codec; the expected one is stored.
func TestWantSHA256(t *testing.T) {
	ctx := context.Background()
	data := mixedPayload(1<<20 + 3)
	changed := bytes.Clone(data)
	changed[len(changed)/2] ^= 1
	for _, codec := range []string{"none", "zstd", "s2"} {
		r, b := initRepo(t, Options{Compression: codec})
		if _, err := r.Put(ctx, "x/changed", onlyReader{bytes.NewReader(changed)}, nil, WantSHA256(sha256.Sum256(data))); !IsUnexpectedContent(err) {
			t.Fatalf("%s: Put of changed content: %v, want IsUnexpectedContent", codec, err)
		}
		if _, err := b.Stat(ctx, "x/changed"); !storage.IsNotExist(err) {
			t.Fatalf("%s: the changed content was stored: %v", codec, err)
		}
		if _, err := r.PutContent(ctx, "x/changed", NewContent(changed), nil, WantSHA256(sha256.Sum256(data))); !IsUnexpectedContent(err) {
			t.Fatalf("%s: PutContent of changed content: %v, want IsUnexpectedContent", codec, err)
		}
		res, err := r.Put(ctx, "x/same", onlyReader{bytes.NewReader(data)}, nil, WantSHA256(sha256.Sum256(data)))
		if err != nil || res.SHA256 != sumHex(data) {
			t.Fatalf("%s: Put of the expected content: %+v, %v", codec, res, err)
		}
	}
}

// groupBackend counts the Puts that went through a sync group, and the
// Includes and Syncs.
type groupBackend struct {
	storage.DeferredSyncer
	grouped, included, synced int
}

func (g *groupBackend) NewSyncGroup() storage.SyncGroup {
	return &countingGroup{g.DeferredSyncer.NewSyncGroup(), g}
}

type countingGroup struct {
	storage.SyncGroup
	b *groupBackend
}

func (c *countingGroup) Put(ctx context.Context, name string, r io.Reader) error {
	c.b.grouped++
	return c.SyncGroup.Put(ctx, name, r)
}
func (c *countingGroup) Include(name string) { c.b.included++; c.SyncGroup.Include(name) }
func (c *countingGroup) Sync(ctx context.Context) error {
	c.b.synced++
	return c.SyncGroup.Sync(ctx)
}

func TestSyncGroup(t *testing.T) {
	ctx := context.Background()
	gb := &groupBackend{DeferredSyncer: newBackend(t)}
	r, _, err := Init(ctx, gb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := r.NewSyncGroup()
	if _, err := r.PutContent(ctx, "o/a", NewContent([]byte("a")), nil, InSyncGroup(g)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "o/b", bytes.NewReader([]byte("b")), nil, InSyncGroup(g)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "o/c", bytes.NewReader([]byte("c")), nil); err != nil {
		t.Fatal(err)
	}
	if gb.grouped != 2 {
		t.Fatalf("%d Puts went through the group, want 2", gb.grouped)
	}
	// The same plaintext stored differently: a backend conflict that is
	// success, and the existing object's durability joins the group.
	if _, err := r.Put(ctx, "o/b", bytes.NewReader([]byte("b")), nil, InSyncGroup(g), Uncompressed()); err != nil {
		t.Fatal(err)
	}
	if gb.included != 1 {
		t.Fatalf("Includes = %d after a re-Put of the same plaintext, want 1", gb.included)
	}
	if err := g.Sync(ctx); err != nil || gb.synced != 1 {
		t.Fatalf("Sync: %v (%d syncs)", err, gb.synced)
	}

	// A backend without deferral: Puts are durable, Sync does nothing.
	plain, _ := initRepo(t, Options{})
	var nilGroup *SyncGroup
	for _, g := range []*SyncGroup{(&Repo{b: failingSyncer{}}).NewSyncGroup(), nilGroup} {
		g.Include("x")
		if err := g.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := plain.Put(ctx, "o/x", bytes.NewReader([]byte("x")), nil, InSyncGroup(g)); err != nil {
			t.Fatal(err)
		}
	}
}

// failingSyncer is a Backend that is not a DeferredSyncer.
type failingSyncer struct{ storage.Backend }

func TestSegments(t *testing.T) {
	s := &segments{parts: [][]byte{[]byte("head"), nil, []byte("payload"), []byte("trailer")}}
	all, err := io.ReadAll(s)
	if err != nil || string(all) != "headpayloadtrailer" {
		t.Fatalf("ReadAll = %q, %v", all, err)
	}
	if _, err := s.Seek(6, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if n, err := s.WriteTo(&buf); err != nil || n != 12 || buf.String() != "yloadtrailer" {
		t.Fatalf("WriteTo after Seek = %d %q, %v", n, buf.String(), err)
	}
	if pos, _ := s.Seek(-3, io.SeekEnd); pos != 15 {
		t.Fatalf("Seek from the end = %d", pos)
	}
	if _, err := s.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("Seek to a negative position succeeded")
	}
}
