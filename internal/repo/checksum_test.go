package repo

import (
	"strings"
	"testing"
)

func TestChecksumValid(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	xxh := strings.Repeat("0f", 16)
	for _, c := range []struct {
		sum  Checksum
		want bool
		text string
	}{
		{Checksum{SHA256: sha}, true, "sha256 " + sha},
		{Checksum{XXH3: xxh}, true, "xxh3-128 " + xxh},
		{Checksum{}, false, "checksum {"},
		{Checksum{SHA256: sha, XXH3: xxh}, false, "checksum {"},
		{Checksum{SHA256: xxh}, false, "sha256 " + xxh},                   // too short for a sha256
		{Checksum{XXH3: sha}, false, "xxh3-128 " + sha},                   // too long for an XXH3-128
		{Checksum{SHA256: strings.ToUpper(sha)}, false, "sha256 ABAB"},    // not lowercase
		{Checksum{XXH3: strings.Repeat("g", 32)}, false, "xxh3-128 gggg"}, // not hex
	} {
		if got := c.sum.Valid(); got != c.want {
			t.Errorf("%+v: Valid = %v, want %v", c.sum, got, c.want)
		}
		if d := c.sum.Describe(); !strings.HasPrefix(d, c.text) {
			t.Errorf("%+v: Describe = %q, want it to start with %q", c.sum, d, c.text)
		}
	}
}
