package confsnap

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// SigningKey is one key of a Synapse signing-key file. Its String and
// LogValue give the key id only, never the seed.
type SigningKey struct {
	// Algorithm is "ed25519".
	Algorithm string
	// Version is the key version ("a_jFMJ").
	Version string
	// Seed is the 32-byte Ed25519 seed: the secret.
	Seed []byte
}

// ID is the key id, "ed25519:<version>".
func (k SigningKey) ID() string { return k.Algorithm + ":" + k.Version }

// PublicKey is the Ed25519 public key, unpadded standard base64 (what
// /_matrix/key/v2/server publishes and old_signing_keys holds).
func (k SigningKey) PublicKey() string {
	pub := ed25519.NewKeyFromSeed(k.Seed).Public().(ed25519.PublicKey)
	return base64.RawStdEncoding.EncodeToString(pub)
}

// String is the key id.
func (k SigningKey) String() string { return k.ID() }

// LogValue is the key id.
func (k SigningKey) LogValue() slog.Value { return slog.StringValue(k.ID()) }

// Line is the key in Synapse's file format, newline included.
func (k SigningKey) Line() string {
	return k.Algorithm + " " + k.Version + " " + base64.RawStdEncoding.EncodeToString(k.Seed) + "\n"
}

var keyVersionRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// ParseSigningKeys parses a Synapse signing-key file: one key a line,
// "<algorithm> <version> <base64 seed>", as signedjson's read_signing_keys
// does (blank lines are skipped). Errors never hold the seed.
func ParseSigningKeys(data []byte) ([]SigningKey, error) {
	var keys []SigningKey
	for i, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			return nil, fmt.Errorf("signing key line %d: want \"<algorithm> <version> <base64 seed>\", found %d fields", i+1, len(fields))
		}
		if fields[0] != "ed25519" {
			return nil, fmt.Errorf("signing key line %d: unsupported algorithm %q", i+1, fields[0])
		}
		if !keyVersionRE.MatchString(fields[1]) {
			return nil, fmt.Errorf("signing key line %d: invalid key version %q", i+1, fields[1])
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("signing key line %d (%s:%s): the seed is not %d bytes of base64", i+1, fields[0], fields[1], ed25519.SeedSize)
		}
		keys = append(keys, SigningKey{Algorithm: fields[0], Version: fields[1], Seed: seed})
	}
	if len(keys) == 0 {
		return nil, errors.New("signing key file holds no key")
	}
	return keys, nil
}

// KeyOptions configure NewSigningKey.
type KeyOptions struct {
	// ExpiredAt is the expired_ts given to the old key(s); zero means now.
	// Remote servers accept the old key's signatures on events up to
	// that time.
	ExpiredAt time.Time
	// Rand is the source of the new key and its version; nil means
	// crypto/rand.
	Rand io.Reader
}

// OldKey is a key moved to old_signing_keys.
type OldKey struct {
	ID        string `json:"id"`
	PublicKey string `json:"public_key"`
}

// KeyChange says what NewSigningKey did.
type KeyChange struct {
	// OldKeys are the keys of the restored key file, now in
	// old_signing_keys (unless they were there already).
	OldKeys []OldKey `json:"old_keys"`
	// NewKeyID and NewPublicKey describe the new key.
	NewKeyID     string `json:"new_key_id"`
	NewPublicKey string `json:"new_public_key"`
	// ExpiredTS is the old keys' expired_ts (ms since the epoch).
	ExpiredTS int64 `json:"expired_ts"`
	// KeyFile and ConfigFile are the files rewritten, relative to the
	// restore directory; ConfigPath is the config file's original path.
	KeyFile    string `json:"key_file"`
	ConfigFile string `json:"config_file"`
	ConfigPath string `json:"config_path"`
}

// NewSigningKey replaces the signing key of the restore directory dir (made
// by Restore) by a new ed25519 key, and adds the old key(s) with their
// public key and expired_ts to old_signing_keys in the restored config file
// that holds old_signing_keys (the last config file in read order that
// has it, else the first one), keeping every other line of it. It updates
// the manifest; a directory whose key was already replaced is refused.
func NewSigningKey(dir string, opts KeyOptions) (KeyChange, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return KeyChange{}, err
	}
	if m.SigningKeyReplaced != nil {
		return KeyChange{}, fmt.Errorf("the signing key in %s was already replaced by %s: doing it again would expire that new key", dir, m.SigningKeyReplaced.NewKeyID)
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.ExpiredAt.IsZero() {
		opts.ExpiredAt = time.Now()
	}
	ts := opts.ExpiredAt.UnixMilli()

	keyIdx := -1
	var configs []int
	for i, f := range m.Files {
		switch f.Role {
		case "signing_key":
			keyIdx = i
		case "config":
			configs = append(configs, i)
		}
	}
	if keyIdx < 0 {
		for _, f := range m.Missing {
			if f.Role == "signing_key" {
				return KeyChange{}, fmt.Errorf("the signing key %s was missing from the snapshot: there is no old key to expire; let Synapse generate one or write it by hand", f.Path)
			}
		}
		return KeyChange{}, errors.New("the restored snapshot holds no signing key file (is the key inline, as signing_key in the config? then replace it by hand)")
	}
	if len(configs) == 0 {
		return KeyChange{}, errors.New("the restored snapshot holds no homeserver config file to record old_signing_keys in")
	}
	keyFile := m.Files[keyIdx]
	keyPath := filepath.Join(dir, filepath.FromSlash(keyFile.File))
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return KeyChange{}, fmt.Errorf("read restored signing key: %w", err)
	}
	oldKeys, err := ParseSigningKeys(keyData)
	if err != nil {
		return KeyChange{}, fmt.Errorf("restored signing key %s: %w", keyPath, err)
	}

	// The config file: the last one that sets old_signing_keys, else the first.
	cfgIdx := configs[0]
	texts := map[int][]byte{}
	var existing map[string]any
	for _, i := range configs {
		p := filepath.Join(dir, filepath.FromSlash(m.Files[i].File))
		data, err := os.ReadFile(p)
		if err != nil {
			return KeyChange{}, fmt.Errorf("read restored config file: %w", err)
		}
		texts[i] = data
		var doc map[string]any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return KeyChange{}, fmt.Errorf("restored config file %s (%s): %w", p, m.Files[i].Path, err)
		}
		if v, ok := doc["old_signing_keys"]; ok {
			cfgIdx = i
			existing, _ = v.(map[string]any)
		}
	}
	cfgFile := m.Files[cfgIdx]

	var add []oldEntry
	change := KeyChange{ExpiredTS: ts, KeyFile: keyFile.File, ConfigFile: cfgFile.File, ConfigPath: cfgFile.Path}
	used := map[string]bool{}
	for id := range existing {
		used[id] = true
	}
	for _, k := range oldKeys {
		used[k.ID()] = true
		ok := OldKey{ID: k.ID(), PublicKey: k.PublicKey()}
		change.OldKeys = append(change.OldKeys, ok)
		if e, found := existing[k.ID()]; found {
			em, _ := e.(map[string]any)
			if em == nil || em["key"] != ok.PublicKey {
				return KeyChange{}, fmt.Errorf("%s already lists %s in old_signing_keys with another public key: fix it by hand", cfgFile.Path, k.ID())
			}
			continue
		}
		add = append(add, oldEntry{id: ok.ID, key: ok.PublicKey, ts: ts})
	}

	nk, err := generateKey(opts.Rand, used)
	if err != nil {
		return KeyChange{}, err
	}
	change.NewKeyID, change.NewPublicKey = nk.ID(), nk.PublicKey()

	newCfg := texts[cfgIdx]
	if len(add) > 0 {
		newCfg, err = addOldSigningKeys(texts[cfgIdx], add)
		if err != nil {
			return KeyChange{}, fmt.Errorf("%s: %w", cfgFile.Path, err)
		}
	}
	cfgPath := filepath.Join(dir, filepath.FromSlash(cfgFile.File))
	cfgMode := os.FileMode(0o644)
	if cfgFile.Secret {
		cfgMode = 0o600
	}
	if err := replaceFile(cfgPath, newCfg, cfgMode); err != nil {
		return KeyChange{}, fmt.Errorf("write restored config file: %w", err)
	}
	line := []byte(nk.Line())
	if err := replaceFile(keyPath, line, 0o600); err != nil {
		return KeyChange{}, fmt.Errorf("write new signing key: %w", err)
	}

	m.Files[cfgIdx].SHA256, m.Files[cfgIdx].Size = sha256Hex(newCfg), int64(len(newCfg))
	m.Files[keyIdx].SHA256, m.Files[keyIdx].Size = sha256Hex(line), int64(len(line))
	m.SigningKeyReplaced = &change
	if err := writeManifest(dir, m); err != nil {
		return KeyChange{}, err
	}
	return change, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

const keyVersionLetters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// generateKey makes a new ed25519 key whose version is "a_" and four
// random letters (as Synapse's generate_signing_key), avoiding used ids.
func generateKey(rnd io.Reader, used map[string]bool) (SigningKey, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	for range 100 {
		var b [4]byte
		if _, err := io.ReadFull(rnd, b[:]); err != nil {
			return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
		}
		v := []byte("a_")
		for _, c := range b {
			// 256 % 52 != 0: a slight bias, irrelevant for a key version.
			v = append(v, keyVersionLetters[int(c)%len(keyVersionLetters)])
		}
		k := SigningKey{Algorithm: "ed25519", Version: string(v), Seed: seed}
		if !used[k.ID()] {
			return k, nil
		}
	}
	return SigningKey{}, errors.New("generate signing key: no unused key version found")
}

type oldEntry struct {
	id, key string
	ts      int64
}

func (e oldEntry) line(indent string) string {
	return fmt.Sprintf("%s%q: {key: %q, expired_ts: %d}", indent, e.id, e.key, e.ts)
}

// addOldSigningKeys adds entries to the top-level old_signing_keys of a
// YAML document with as small a textual change as it can, and checks the
// result by parsing it back.
func addOldSigningKeys(src []byte, add []oldEntry) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, err
	}
	nl := "\n"
	if bytes.Contains(src, []byte("\r\n")) {
		nl = "\r\n"
	}
	var root *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	if root != nil && (root.Kind != yaml.MappingNode || root.Style&yaml.FlowStyle != 0) {
		return nil, errors.New("the top level is not a block mapping: add old_signing_keys by hand")
	}
	keyAt := -1
	if root != nil {
		for i := 0; i+1 < len(root.Content); i += 2 {
			if root.Content[i].Value == "old_signing_keys" {
				keyAt = i // the last one wins, as with PyYAML
			}
		}
	}

	var out []byte
	if keyAt < 0 {
		// Absent: append a block at the end.
		out = append(out, src...)
		if len(out) > 0 && !bytes.HasSuffix(out, []byte("\n")) {
			out = append(out, nl...)
		}
		out = append(out, "# Keys this server signed with before; added by synbak when it replaced the signing key."+nl...)
		out = append(out, "old_signing_keys:"+nl...)
		for _, e := range add {
			out = append(out, e.line("  ")+nl...)
		}
	} else {
		key, val := root.Content[keyAt], root.Content[keyAt+1]
		if key.Column != 1 {
			return nil, errors.New("old_signing_keys is not at the start of a line: add the entries by hand")
		}
		lines := strings.SplitAfter(string(src), "\n")
		end := len(lines) // exclusive 0-based bound of the entry's lines
		if keyAt+2 < len(root.Content) {
			end = root.Content[keyAt+2].Line - 1
		}
		last := key.Line - 1 // 0-based last line with content of the entry
		for i := key.Line; i < end; i++ {
			t := strings.TrimSpace(lines[i])
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			last = i
		}
		var middle []string
		switch {
		case val.Kind == yaml.MappingNode && val.Style&yaml.FlowStyle == 0 && len(val.Content) > 0 && val.Line > key.Line:
			// A block mapping: new lines after its last one, same indent.
			indent := strings.Repeat(" ", val.Content[0].Column-1)
			middle = append(middle, lines[key.Line-1:last+1]...)
			if !strings.HasSuffix(middle[len(middle)-1], "\n") {
				middle[len(middle)-1] += nl
			}
			for _, e := range add {
				middle = append(middle, e.line(indent)+nl)
			}
		case val.Kind == yaml.MappingNode || (val.Kind == yaml.ScalarNode && val.Tag == "!!null"):
			// Empty, null or flow style: rewrite the entry as a block.
			middle = append(middle, "old_signing_keys:"+nl)
			if val.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(val.Content); i += 2 {
					k, v := *val.Content[i], *val.Content[i+1]
					k.Style = yaml.DoubleQuotedStyle
					v.Style = yaml.FlowStyle
					kb, err := yaml.Marshal(&k)
					if err != nil {
						return nil, err
					}
					vb, err := yaml.Marshal(&v)
					if err != nil {
						return nil, err
					}
					middle = append(middle, "  "+strings.TrimSpace(string(kb))+": "+strings.TrimSpace(string(vb))+nl)
				}
			}
			for _, e := range add {
				middle = append(middle, e.line("  ")+nl)
			}
		default:
			return nil, errors.New("old_signing_keys is not a mapping: fix it by hand")
		}
		for _, l := range lines[:key.Line-1] {
			out = append(out, l...)
		}
		for _, l := range middle {
			out = append(out, l...)
		}
		for _, l := range lines[last+1:] {
			out = append(out, l...)
		}
	}
	if err := checkOldSigningKeys(src, out, add); err != nil {
		return nil, fmt.Errorf("editing old_signing_keys failed its check (%w): add the entries by hand", err)
	}
	return out, nil
}

// checkOldSigningKeys checks that after is before with the entries added
// to old_signing_keys and nothing else changed.
func checkOldSigningKeys(before, after []byte, add []oldEntry) error {
	var b, a map[string]any
	if err := yaml.Unmarshal(before, &b); err != nil {
		return err
	}
	if err := yaml.Unmarshal(after, &a); err != nil {
		return fmt.Errorf("the result does not parse: %w", err)
	}
	if b == nil {
		b = map[string]any{}
	}
	bo, _ := b["old_signing_keys"].(map[string]any)
	ao, ok := a["old_signing_keys"].(map[string]any)
	if !ok {
		return errors.New("old_signing_keys is not a mapping in the result")
	}
	delete(a, "old_signing_keys")
	delete(b, "old_signing_keys")
	if !reflect.DeepEqual(a, b) {
		return errors.New("other settings changed")
	}
	if len(ao) != len(bo)+len(add) {
		return fmt.Errorf("old_signing_keys has %d entries, want %d", len(ao), len(bo)+len(add))
	}
	for k, v := range bo {
		if !reflect.DeepEqual(ao[k], v) {
			return fmt.Errorf("entry %s changed", k)
		}
	}
	for _, e := range add {
		m, _ := ao[e.id].(map[string]any)
		if m == nil || m["key"] != e.key || fmt.Sprint(m["expired_ts"]) != fmt.Sprint(e.ts) {
			return fmt.Errorf("entry %s is not as written", e.id)
		}
	}
	return nil
}
