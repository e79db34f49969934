package restore

import (
	"strings"
	"testing"

	"github.com/synbak/synbak/internal/repo"
)

func TestManifestCheck(t *testing.T) {
	// CRC32C("123456789") is 0xe3069283; PostgreSQL writes the pg_crc32c
	// as it lies in memory (little-endian here).
	m, err := parseManifest(strings.NewReader(`{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7,
"Files": [
{ "Path": "base/5/16384", "Size": 9, "Last-Modified": "2026-12-06 05:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "839206e3" },
{ "Encoded-Path": "6261642f6e616d65", "Size": 9, "Last-Modified": "2026-12-06 05:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225" },
{ "Path": "global/pg_control", "Size": 3, "Last-Modified": "2026-12-06 05:00:00 GMT" }
],
"WAL-Ranges": [], "Manifest-Checksum": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, data string
		ok         bool
	}{
		{"base/5/16384", "123456789", true},
		{"base/5/16384", "123456780", false}, // checksum
		{"base/5/16384", "12345678", false},  // size
		{"bad/name", "123456789", true},      // Encoded-Path, SHA256
		{"bad/name", "023456789", false},
		{"global/pg_control", "abc", true}, // no checksum: size only
		{"global/pg_control", "abcd", false},
	} {
		check, err := m.check(c.path)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		check.Write([]byte(c.data))
		if err := check.done(); (err == nil) != c.ok || (err != nil && !repo.IsCorrupt(err)) {
			t.Errorf("%s with %q: %v, want ok=%v (corrupt otherwise)", c.path, c.data, err, c.ok)
		}
	}
	if _, err := m.check("base/5/99999"); err == nil || !repo.IsCorrupt(err) {
		t.Errorf("a file the manifest lacks: %v", err)
	}
	for _, bad := range []string{
		`{"PostgreSQL-Backup-Manifest-Version": 3, "Files": []}`,
		`{"PostgreSQL-Backup-Manifest-Version": 2, "Files": [{"Path": "x", "Size": 1, "Checksum-Algorithm": "MD5", "Checksum": "00"}]}`,
		`{"PostgreSQL-Backup-Manifest-Version": 2, "Files": [{"Size": 1}]}`,
		`not json`,
	} {
		if _, err := parseManifest(strings.NewReader(bad)); err == nil {
			t.Errorf("parseManifest(%s) accepted it", bad)
		}
	}
}
