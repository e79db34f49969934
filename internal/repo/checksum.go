package repo

import (
	"encoding/hex"
	"fmt"
)

// Checksum is an object's plaintext checksum as its trailer records it, in
// lowercase hex: SHA256 for format versions 1 and 2, XXH3 (XXH3-128) for
// version 3. Exactly one is set; two Checksums are equal only for the same
// algorithm and value. Info, PutResult and PartInfo embed it, so that
// backup.json and a dump's metadata record "sha256" or "xxh3".
type Checksum struct {
	SHA256 string `json:"sha256,omitempty"`
	XXH3   string `json:"xxh3,omitempty"`
}

// Describe returns the algorithm and value, for messages: "sha256 <hex>" or
// "xxh3-128 <hex>".
func (c Checksum) Describe() string {
	switch {
	case c.XXH3 != "" && c.SHA256 == "":
		return sumXXH3 + " " + c.XXH3
	case c.SHA256 != "" && c.XXH3 == "":
		return sumSHA256 + " " + c.SHA256
	}
	return fmt.Sprintf("checksum {sha256 %q, xxh3 %q}", c.SHA256, c.XXH3)
}

// Valid reports whether exactly one checksum is set, as lowercase hex of
// its algorithm's length.
func (c Checksum) Valid() bool {
	switch {
	case c.SHA256 != "" && c.XXH3 == "":
		return isLowerHex(c.SHA256, 64)
	case c.XXH3 != "" && c.SHA256 == "":
		return isLowerHex(c.XXH3, 32)
	}
	return false
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// checksumOf returns the Checksum of a version v object whose plaintext
// checksum is sum.
func checksumOf(v int, sum []byte) Checksum {
	h := hex.EncodeToString(sum)
	if v == 3 {
		return Checksum{XXH3: h}
	}
	return Checksum{SHA256: h}
}

// version returns the object format version that carries c's algorithm.
func (c Checksum) version() int {
	if c.XXH3 != "" {
		return 3
	}
	return 2
}

// FastChecksum makes Put write a version 3 object, whose plaintext
// checksum is XXH3-128 rather than sha256 (format.go): for bulk objects that
// nothing addresses by their sha256. PutContent and WantSHA256 need the
// sha256 and ignore it.
func FastChecksum() PutOption { return func(c *putConfig) { c.fast = true } }
