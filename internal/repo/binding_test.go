package repo

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/synbak/synbak/internal/storage/local"
)

// TestBindingNameAndAttributes: an object moved to another name (a copy, two
// objects swapped) or with one bit of its attributes changed fails its check,
// by Stat (header and trailer) and by reading, for every codec and with
// encryption.
func TestBindingNameAndAttributes(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		opts Options
		put  []PutOption
	}{
		{"zstd", Options{}, nil},
		{"s2", Options{Compression: "s2"}, nil},
		{"none", Options{Compression: "none"}, nil},
		{"encrypted", Options{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}, nil},
		{"zstd, version 3", Options{}, []PutOption{FastChecksum(), WithWorkers(2)}},
		{"none, version 3", Options{Compression: "none"}, []PutOption{FastChecksum()}},
		{"encrypted, version 3", Options{Recipients: []age.Recipient{id.Recipient()}, Identities: []age.Identity{id}}, []PutOption{FastChecksum()}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			r, b := initRepo(t, tc.opts)
			a, c := mixedPayload(70000), mixedPayload(90000)
			attrsA := map[string]string{"start_lsn": "0/1000000", "timeline": "1"}
			attrsB := map[string]string{"start_lsn": "0/2000000", "timeline": "1"}
			put := func(name string, data []byte, attrs map[string]string) {
				t.Helper()
				if _, err := r.Put(ctx, name, bytes.NewReader(data), attrs, tc.put...); err != nil {
					t.Fatal(err)
				}
			}
			put("wal/a", a, attrsA)
			put("wal/b", c, attrsB)
			put("wal/c", a, attrsA) // same plaintext and attributes as wal/a, other name

			// Intact objects read back.
			for _, n := range []string{"wal/a", "wal/b", "wal/c"} {
				if _, err := r.Verify(ctx, n); err != nil {
					t.Fatalf("Verify %s: %v", n, err)
				}
			}
			// Swap wal/a and wal/b on disk.
			pa, pb := objPath(b, "wal/a"), objPath(b, "wal/b")
			da, _ := os.ReadFile(pa)
			db, _ := os.ReadFile(pb)
			writeFile(t, pa, db)
			writeFile(t, pb, da)
			for _, n := range []string{"wal/a", "wal/b"} {
				wantCorrupt(t, r, n, "swapped "+n)
				if _, err := r.Stat(ctx, n); !IsCorrupt(err) || !strings.Contains(err.Error(), n) {
					t.Errorf("swapped %s: Stat error = %v, want IsCorrupt naming it", n, err)
				}
			}
			// wal/a's bytes under wal/c: the same plaintext and attributes, but
			// another name.
			writeFile(t, objPath(b, "wal/c"), da)
			writeFile(t, pa, da) // restore wal/a
			if _, err := r.Verify(ctx, "wal/a"); err != nil {
				t.Fatalf("restored wal/a: %v", err)
			}
			wantCorrupt(t, r, "wal/c", "wal/a copied to wal/c")

			// One bit of an attribute value: "0/1000000" -> "0/1000001".
			put("wal/d", a, attrsA)
			edit(t, b, "wal/d", func(d []byte) []byte {
				i := bytes.Index(d, []byte("0/1000000"))
				if i < 0 {
					t.Fatal("attribute not found in the header")
				}
				d[i+8] ^= 1
				return d
			})
			wantCorrupt(t, r, "wal/d", "attribute bit flipped")
			if _, err := r.Stat(ctx, "wal/d"); !IsCorrupt(err) {
				t.Errorf("attribute bit flipped: Stat error = %v, want IsCorrupt", err)
			}
		})
	}
}

// TestIdenticalContentWithBinding: a Put over an existing name with the same
// plaintext is success whatever codec stored it (the binding does not depend
// on the codec); another plaintext is a conflict.
func TestIdenticalContentWithBinding(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{Compression: "zstd"})
	data := mixedPayload(50000)
	attrs := map[string]string{"k": "v"}
	if _, err := r.Put(ctx, "x", bytes.NewReader(data), attrs); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, b, Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Put(ctx, "x", bytes.NewReader(data), attrs); err != nil {
		t.Fatalf("same plaintext, other codec: %v", err)
	}
	other := append([]byte{}, data...)
	other[0] ^= 1
	if _, err := r2.Put(ctx, "x", bytes.NewReader(other), attrs); !IsConflict(err) {
		t.Fatalf("other plaintext: err = %v, want IsConflict", err)
	}
}

// TestReadVersion1: objects written by synbak before the binding existed
// (format version 1, testdata/v1repo, made by that version) stay readable and
// checked; a flipped payload bit in one is still corruption.
func TestReadVersion1(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/v1repo")); err != nil {
		t.Fatal(err)
	}
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte(strings.Repeat("synbak format version 1 golden object\n", 40))
	for _, c := range []struct {
		name  string
		want  []byte
		attrs map[string]string
	}{
		{"golden/zstd", plain, map[string]string{"kind": "full", "n": "1"}},
		{"golden/none", plain[:100], map[string]string{"kind": "none"}},
	} {
		raw, err := os.ReadFile(objPath(b, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if string(raw[:8]) != headerMagicV1 {
			t.Fatalf("%s is not a version 1 object", c.name)
		}
		rd, err := r.Get(ctx, c.name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("%s: read %d bytes, %v", c.name, len(got), err)
		}
		for k, v := range c.attrs {
			if rd.Attrs()[k] != v {
				t.Errorf("%s: attribute %s = %q, want %q", c.name, k, rd.Attrs()[k], v)
			}
		}
		info, err := r.Stat(ctx, c.name)
		if err != nil || info.Size != int64(len(c.want)) {
			t.Fatalf("Stat %s = %+v, %v", c.name, info, err)
		}
		// A new Put of the same plaintext is "identical content".
		if _, err := r.Put(ctx, c.name, bytes.NewReader(c.want), c.attrs); err != nil {
			t.Errorf("Put over v1 %s with the same plaintext: %v", c.name, err)
		}
	}
	edit(t, b, "golden/none", func(d []byte) []byte { d[len(d)-trailerSizeV1-1] ^= 1; return d })
	wantCorrupt(t, r, "golden/none", "v1 payload bit flipped")
}

func objPath(b *local.Backend, name string) string {
	return filepath.Join(b.Dir(), filepath.FromSlash(name))
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
