package confsnap

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/synbak/synbak/internal/synapse"
)

// The seed of the restored key, and its public key computed independently.
var (
	oldSeed = []byte("0123456789abcdef0123456789abcdef")
	oldPub  = base64.RawStdEncoding.EncodeToString(ed25519.NewKeyFromSeed(oldSeed).Public().(ed25519.PublicKey))
)

const oldKeyLine = "ed25519 a_OLDk MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\n"

var expired = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// restoredConfig writes config files (name → content, in read order) and
// the signing key into a fake /etc, snapshots them and restores them into
// a new directory, which it returns with the manifest.
func restoredConfig(t *testing.T, configs [][2]string) (string, Manifest) {
	t.Helper()
	ctx := context.Background()
	etc := filepath.Join(t.TempDir(), "etc", "matrix-synapse")
	var files []synapse.File
	for _, c := range configs {
		p := filepath.Join(etc, c[0])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c[1]), 0o640); err != nil {
			t.Fatal(err)
		}
		files = append(files, synapse.File{Path: p, Role: "config", Secret: true})
	}
	key := filepath.Join(etc, "example.com.signing.key")
	if err := os.WriteFile(key, []byte(oldKeyLine), 0o600); err != nil {
		t.Fatal(err)
	}
	files = append(files, synapse.File{Path: key, Role: "signing_key", Secret: true})
	r := newTestRepo(t)
	if _, err := Snapshot(ctx, r, files, nil, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	m, err := Restore(ctx, r, time.Time{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func restoredPath(t *testing.T, dir string, m Manifest, base string) string {
	t.Helper()
	for _, f := range m.Files {
		if filepath.Base(f.Path) == base {
			return filepath.Join(dir, filepath.FromSlash(f.File))
		}
	}
	t.Fatalf("%s not restored", base)
	return ""
}

var keyLineRE = regexp.MustCompile(`^ed25519 a_[A-Za-z]{4} [A-Za-z0-9+/]{43}\n$`)

// checkNewKey checks the new key file: Synapse's format (what
// signedjson.key.read_signing_keys accepts: "<alg> <version> <base64
// seed>" per line), a new version and a new seed.
func checkNewKey(t *testing.T, dir string, m Manifest, ch KeyChange) {
	t.Helper()
	p := restoredPath(t, dir, m, "example.com.signing.key")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !keyLineRE.Match(b) {
		t.Fatalf("new key file is not one line in Synapse's format: %d bytes", len(b))
	}
	fields := strings.Fields(string(b))
	seed, err := base64.RawStdEncoding.DecodeString(fields[2])
	if err != nil || len(seed) != ed25519.SeedSize {
		t.Fatalf("new key seed: %d bytes, %v", len(seed), err)
	}
	keys, err := ParseSigningKeys(b)
	if err != nil || len(keys) != 1 {
		t.Fatalf("ParseSigningKeys: %v, %v", keys, err)
	}
	if keys[0].ID() != ch.NewKeyID || ch.NewKeyID == "ed25519:a_OLDk" || string(seed) == string(oldSeed) {
		t.Errorf("new key %s (reported %s) is not new", keys[0].ID(), ch.NewKeyID)
	}
	pub := base64.RawStdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey))
	if pub != ch.NewPublicKey {
		t.Errorf("reported public key %s, the file's is %s", ch.NewPublicKey, pub)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("new key file mode: %v %v", fi.Mode(), err)
	}
	// The manifest describes the files as they are now.
	m2, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m2.Files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.File)))
		if err != nil {
			t.Fatal(err)
		}
		if shaOf(string(b)) != f.SHA256 || int64(len(b)) != f.Size {
			t.Errorf("manifest entry of %s does not match the file", f.File)
		}
	}
	if m2.SigningKeyReplaced == nil || m2.SigningKeyReplaced.NewKeyID != ch.NewKeyID {
		t.Errorf("manifest does not record the change: %+v", m2.SigningKeyReplaced)
	}
	// A second run would expire the new key: refused.
	if _, err := NewSigningKey(dir, KeyOptions{}); err == nil || !strings.Contains(err.Error(), "already replaced") {
		t.Errorf("second NewSigningKey: %v", err)
	}
}

// loadOldKeys parses the restored config files the way synbak's Synapse
// reader does and returns old_signing_keys.
func loadOldKeys(t *testing.T, paths ...string) map[string]synapse.OldSigningKey {
	t.Helper()
	h, err := synapse.Load(paths, t.TempDir())
	if err != nil {
		t.Fatalf("the rewritten config does not load: %v", err)
	}
	return h.OldSigningKeys
}

const baseConfig = `# Homeserver configuration: comments must survive.
server_name: "example.com"   # the server's name

database:
  name: psycopg2
  args:
    user: synapse
    password: "pw"   # secret
    database: synapse
    host: localhost

signing_key_path: "/etc/matrix-synapse/example.com.signing.key"
`

func TestNewSigningKeyAppendsOldSigningKeys(t *testing.T) {
	dir, m := restoredConfig(t, [][2]string{{"homeserver.yaml", baseConfig + "# trailing comment without newline"}})
	ch, err := NewSigningKey(dir, KeyOptions{ExpiredAt: expired})
	if err != nil {
		t.Fatal(err)
	}
	cfg := restoredPath(t, dir, m, "homeserver.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), baseConfig+"# trailing comment without newline\n") {
		t.Errorf("the original text is not kept:\n%s", b)
	}
	want := map[string]synapse.OldSigningKey{"ed25519:a_OLDk": {Key: oldPub, ExpiredTS: expired.UnixMilli()}}
	if diff := cmp.Diff(want, loadOldKeys(t, cfg)); diff != "" {
		t.Errorf("old_signing_keys (-want +got):\n%s\n%s", diff, b)
	}
	if fi, err := os.Stat(cfg); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode: %v %v", fi.Mode(), err)
	}
	if diff := cmp.Diff([]OldKey{{ID: "ed25519:a_OLDk", PublicKey: oldPub}}, ch.OldKeys); diff != "" {
		t.Errorf("reported old keys: %s", diff)
	}
	if ch.ConfigPath != m.Files[0].Path || ch.ExpiredTS != expired.UnixMilli() {
		t.Errorf("change: %+v", ch)
	}
	checkNewKey(t, dir, m, ch)
}

func TestNewSigningKeyAddsToExistingEntries(t *testing.T) {
	const before = baseConfig + `
old_signing_keys:
  # an earlier rotation
  "ed25519:a_jFMJ": { key: "1xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw", expired_ts: 1795000000000 }
  ed25519:a_blck:
    key: "2xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw"
    expired_ts: 1796000000000

# Media settings follow.
media_store_path: /var/lib/matrix-synapse/media
`
	dir, m := restoredConfig(t, [][2]string{{"homeserver.yaml", before}})
	ch, err := NewSigningKey(dir, KeyOptions{ExpiredAt: expired})
	if err != nil {
		t.Fatal(err)
	}
	cfg := restoredPath(t, dir, m, "homeserver.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]synapse.OldSigningKey{
		"ed25519:a_jFMJ": {Key: "1xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw", ExpiredTS: 1795000000000},
		"ed25519:a_blck": {Key: "2xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw", ExpiredTS: 1796000000000},
		"ed25519:a_OLDk": {Key: oldPub, ExpiredTS: expired.UnixMilli()},
	}
	if diff := cmp.Diff(want, loadOldKeys(t, cfg)); diff != "" {
		t.Errorf("old_signing_keys (-want +got):\n%s\n%s", diff, b)
	}
	// Minimal change: exactly one line inserted, right after the last entry.
	added := "    expired_ts: 1796000000000\n  \"ed25519:a_OLDk\": {key: \"" + oldPub + "\", expired_ts: " + itoa(expired.UnixMilli()) + "}\n"
	if got, want := string(b), strings.Replace(before, "    expired_ts: 1796000000000\n", added, 1); got != want {
		t.Errorf("rewritten config:\n%s\nwant:\n%s", got, want)
	}
	checkNewKey(t, dir, m, ch)
}

func itoa(n int64) string { b, _ := yaml.Marshal(n); return strings.TrimSpace(string(b)) }

func TestNewSigningKeyFlowAndEmpty(t *testing.T) {
	for name, value := range map[string]string{
		"empty flow": "old_signing_keys: {}   # none yet\n",
		"null":       "old_signing_keys:\n",
		"flow":       `old_signing_keys: {"ed25519:a_jFMJ": {key: "1xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw", expired_ts: 1795000000000}}` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			before := baseConfig + value + "report_stats: false\n"
			dir, m := restoredConfig(t, [][2]string{{"homeserver.yaml", before}})
			ch, err := NewSigningKey(dir, KeyOptions{ExpiredAt: expired})
			if err != nil {
				t.Fatal(err)
			}
			cfg := restoredPath(t, dir, m, "homeserver.yaml")
			b, _ := os.ReadFile(cfg)
			got := loadOldKeys(t, cfg)
			if got["ed25519:a_OLDk"] != (synapse.OldSigningKey{Key: oldPub, ExpiredTS: expired.UnixMilli()}) {
				t.Errorf("old_signing_keys: %v\n%s", got, b)
			}
			if name == "flow" && got["ed25519:a_jFMJ"].ExpiredTS != 1795000000000 {
				t.Errorf("the existing entry was lost:\n%s", b)
			}
			if !strings.HasPrefix(string(b), baseConfig) || !strings.HasSuffix(string(b), "report_stats: false\n") {
				t.Errorf("text around the entry changed:\n%s", b)
			}
			checkNewKey(t, dir, m, ch)
		})
	}
}

func TestNewSigningKeyConfDir(t *testing.T) {
	// old_signing_keys lives in conf.d/keys.yaml (read after
	// homeserver.yaml): that file is the one to edit.
	keys := "old_signing_keys:\n  \"ed25519:a_jFMJ\": {key: \"1xqQwMJPGuPipzs0F8xFQnPmYmBN/xJSKYj1jAyu1Vw\", expired_ts: 1795000000000}\n"
	dir, m := restoredConfig(t, [][2]string{
		{"homeserver.yaml", baseConfig},
		{"conf.d/keys.yaml", keys},
		{"conf.d/other.yaml", "report_stats: false\n"},
	})
	ch, err := NewSigningKey(dir, KeyOptions{ExpiredAt: expired})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(ch.ConfigPath, "conf.d/keys.yaml") || !strings.HasSuffix(ch.ConfigFile, "/conf.d/keys.yaml") || strings.HasPrefix(ch.ConfigFile, "/") {
		t.Errorf("edited %s (%s), want conf.d/keys.yaml", ch.ConfigPath, ch.ConfigFile)
	}
	hs := restoredPath(t, dir, m, "homeserver.yaml")
	if b, _ := os.ReadFile(hs); string(b) != baseConfig {
		t.Errorf("homeserver.yaml changed:\n%s", b)
	}
	got := loadOldKeys(t, hs, filepath.Join(filepath.Dir(hs), "conf.d"))
	if len(got) != 2 || got["ed25519:a_OLDk"].Key != oldPub {
		t.Errorf("merged old_signing_keys: %v", got)
	}
	checkNewKey(t, dir, m, ch)
}

func TestParseSigningKeys(t *testing.T) {
	keys, err := ParseSigningKeys([]byte(oldKeyLine + "\ned25519 a_two MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"))
	if err != nil || len(keys) != 2 {
		t.Fatalf("%v %v", keys, err)
	}
	if keys[0].PublicKey() != oldPub || keys[1].ID() != "ed25519:a_two" || string(keys[0].Seed) != string(oldSeed) {
		t.Errorf("parsed %v", keys)
	}
	if keys[0].Line() != oldKeyLine {
		t.Errorf("Line() = %q", keys[0].Line())
	}
	for _, bad := range []string{"", "ed25519 a_x\n", "rsa a_x MDEy\n", "ed25519 a_x c2hvcnQ\n", "ed25519 a-x " + strings.Repeat("A", 43) + "\n"} {
		if _, err := ParseSigningKeys([]byte(bad)); err == nil {
			t.Errorf("ParseSigningKeys(%q) accepted", bad)
		}
	}
	// The seed never shows in formatting or errors.
	seedB64 := strings.Fields(oldKeyLine)[2]
	if s := keys[0].String(); strings.Contains(s, seedB64) {
		t.Errorf("String() shows the seed")
	}
	if _, err := ParseSigningKeys([]byte("ed25519 a_x " + seedB64 + " extra\n")); err == nil || strings.Contains(err.Error(), seedB64) {
		t.Errorf("error shows the seed: %v", err)
	}
}

func TestNewSigningKeyWithoutKey(t *testing.T) {
	dir := t.TempDir()
	r := newTestRepo(t)
	etc := t.TempDir()
	p := filepath.Join(etc, "homeserver.yaml")
	if err := os.WriteFile(p, []byte(baseConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	files := []synapse.File{{Path: p, Role: "config", Secret: true}, {Path: filepath.Join(etc, "k.key"), Role: "signing_key", Secret: true}}
	if _, err := Snapshot(context.Background(), r, files, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), r, time.Time{}, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSigningKey(dir, KeyOptions{}); err == nil || !strings.Contains(err.Error(), "missing from the snapshot") {
		t.Errorf("NewSigningKey without a key: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, p)); string(b) != baseConfig {
		t.Errorf("config changed")
	}
}
