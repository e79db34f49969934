package repo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestEncryptedRepository(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	key, other := newIdentity(t), newIdentity(t)
	offline := newIdentity(t) // a second recipient, kept offline
	w, created, err := Init(ctx, b, Options{Recipients: []age.Recipient{key.Recipient(), offline.Recipient()}, Identities: []age.Identity{key}})
	if err != nil || !created || !w.Meta().Encrypted {
		t.Fatalf("Init: %v created %v encrypted %v", err, created, w.Meta().Encrypted)
	}
	plain := bytes.Repeat([]byte("a secret message in the homeserver's history\n"), 5000)
	for _, codec := range []string{"zstd", "s2", "none"} {
		r, err := Open(ctx, b, Options{Compression: codec, Recipients: []age.Recipient{key.Recipient(), offline.Recipient()}, Identities: []age.Identity{key}})
		if err != nil {
			t.Fatal(err)
		}
		name := "wal/00000001/" + codec
		res, err := r.Put(ctx, name, bytes.NewReader(plain), map[string]string{"k": "v"})
		if err != nil {
			t.Fatalf("%s: Put: %v", codec, err)
		}
		// Stored bytes hold no plaintext.
		raw, err := os.ReadFile(filepath.Join(b.String(), name))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("secret message")) {
			t.Errorf("%s: the stored object holds plaintext", codec)
		}
		got, err := readAll(t, r, name)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: read back %d bytes, %v", codec, len(got), err)
		}
		// The offline key decrypts too.
		ro, err := Open(ctx, b, Options{Identities: []age.Identity{offline}})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readAll(t, ro, name); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%s: the second recipient cannot read: %v", codec, err)
		}
		// The same plaintext again encrypts to other bytes, but is the same object.
		if _, err := r.Put(ctx, name, bytes.NewReader(plain), map[string]string{"k": "v"}); err != nil {
			t.Errorf("%s: identical re-put: %v", codec, err)
		}
		if _, err := r.Put(ctx, name, strings.NewReader("other"), nil); !IsConflict(err) {
			t.Errorf("%s: different re-put: %v, want a conflict", codec, err)
		}
		// Without any key: Stat works (clear framing), reading does not.
		nokey, err := Open(ctx, b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		info, err := nokey.Stat(ctx, name)
		if err != nil || !info.Encrypted || info.SHA256 != res.SHA256 || info.Attrs["k"] != "v" {
			t.Errorf("%s: Stat without a key: %+v, %v", codec, info, err)
		}
		if _, err := readAll(t, nokey, name); !IsEncryption(err) || !strings.Contains(err.Error(), "identity_file") {
			t.Errorf("%s: Get without a key: %v, want an encryption error naming identity_file", codec, err)
		}
		if _, err := nokey.Put(ctx, "wal/x", strings.NewReader("x"), nil); !IsEncryption(err) || !strings.Contains(err.Error(), "recipients") {
			t.Errorf("%s: unencrypted write: %v, want an encryption error", codec, err)
		}
		wrong, err := Open(ctx, b, Options{Identities: []age.Identity{other}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readAll(t, wrong, name); !IsEncryption(err) || !strings.Contains(err.Error(), "wrong key") {
			t.Errorf("%s: Get with the wrong key: %v, want an encryption error", codec, err)
		}
		// A flipped byte in the encrypted payload is corruption.
		raw[len(raw)/2] ^= 1
		if err := os.WriteFile(filepath.Join(b.String(), name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readAll(t, r, name); !IsCorrupt(err) {
			t.Errorf("%s: flipped byte: %v, want corrupt", codec, err)
		}
	}
	// The metadata stays readable without the key.
	if _, err := Open(ctx, b, Options{}); err != nil {
		t.Errorf("Open without a key: %v", err)
	}
}

func TestEncryptionCannotBeTurnedOn(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	if _, _, err := Init(ctx, b, Options{}); err != nil {
		t.Fatal(err)
	}
	key := newIdentity(t)
	if _, err := Open(ctx, b, Options{Recipients: []age.Recipient{key.Recipient()}}); !IsEncryption(err) || !strings.Contains(err.Error(), "new repository") {
		t.Errorf("Open of a clear repository with recipients: %v", err)
	}
	if _, _, err := Init(ctx, b, Options{Recipients: []age.Recipient{key.Recipient()}}); !IsEncryption(err) {
		t.Errorf("Init of a clear repository with recipients: %v", err)
	}
	// Without recipients it stays usable as before.
	r, err := Open(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "wal/a", strings.NewReader("clear"), nil); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, r, "wal/a"); err != nil || string(got) != "clear" {
		t.Errorf("%q %v", got, err)
	}
}
