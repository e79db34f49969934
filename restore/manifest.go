package restore

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"github.com/synbak/synbak/internal/repo"
)

// manifestFile is one file of a PostgreSQL backup_manifest.
type manifestFile struct {
	Size      int64
	Algorithm string
	Checksum  string
}

// manifest is the file list of a backup_manifest, by path relative to the
// data directory (tablespace files under pg_tblspc/<OID>/).
type manifest map[string]manifestFile

// parseManifest reads a backup_manifest (version 1 or 2).
func parseManifest(r io.Reader) (manifest, error) {
	var m struct {
		Version int `json:"PostgreSQL-Backup-Manifest-Version"`
		Files   []struct {
			Path        string `json:"Path"`
			EncodedPath string `json:"Encoded-Path"`
			Size        int64  `json:"Size"`
			Algorithm   string `json:"Checksum-Algorithm"`
			Checksum    string `json:"Checksum"`
		} `json:"Files"`
	}
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		return nil, fmt.Errorf("backup_manifest: %w", err)
	}
	if m.Version != 1 && m.Version != 2 {
		return nil, fmt.Errorf("backup_manifest: version %d is not one synbak reads (1 or 2)", m.Version)
	}
	out := make(manifest, len(m.Files))
	for _, f := range m.Files {
		p := f.Path
		if f.EncodedPath != "" {
			b, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				return nil, fmt.Errorf("backup_manifest: Encoded-Path %q: %w", f.EncodedPath, err)
			}
			p = string(b)
		}
		if p == "" {
			return nil, fmt.Errorf("backup_manifest: a file without a path")
		}
		alg := f.Algorithm
		if alg == "" {
			alg = "NONE"
		}
		if _, err := newManifestHash(alg); err != nil {
			return nil, fmt.Errorf("backup_manifest: %s: %w", p, err)
		}
		out[p] = manifestFile{Size: f.Size, Algorithm: alg, Checksum: f.Checksum}
	}
	return out, nil
}

// newManifestHash returns the hash for a manifest's checksum algorithm
// (nil for NONE). CRC32C is written in the server's byte order
// (pg_checksum_final copies the pg_crc32c as is): little-endian here.
func newManifestHash(alg string) (hash.Hash, error) {
	switch alg {
	case "NONE":
		return nil, nil
	case "CRC32C":
		return &crc32cLE{crc32.New(crc32.MakeTable(crc32.Castagnoli))}, nil
	case "SHA224":
		return sha256.New224(), nil
	case "SHA256":
		return sha256.New(), nil
	case "SHA384":
		return sha512.New384(), nil
	case "SHA512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unknown checksum algorithm %q", alg)
}

type crc32cLE struct{ hash.Hash32 }

func (c *crc32cLE) Sum(b []byte) []byte { return binary.LittleEndian.AppendUint32(b, c.Sum32()) }

// fileCheck checks one file against its manifest entry as it is read.
type fileCheck struct {
	path string
	want manifestFile
	h    hash.Hash
	n    int64
}

func (m manifest) check(path string) (*fileCheck, error) {
	f, ok := m[path]
	if !ok {
		return nil, fmt.Errorf("%w: the backup's manifest does not list it", repo.ErrCorrupt)
	}
	h, err := newManifestHash(f.Algorithm)
	if err != nil {
		return nil, err
	}
	return &fileCheck{path: path, want: f, h: h}, nil
}

func (c *fileCheck) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	if c.h != nil {
		c.h.Write(b)
	}
	return len(b), nil
}

// done returns an error unless what was written matches the manifest.
func (c *fileCheck) done() error {
	if c.n != c.want.Size {
		return fmt.Errorf("%w: %d bytes, the backup's manifest says %d", repo.ErrCorrupt, c.n, c.want.Size)
	}
	if c.h != nil {
		if got := hex.EncodeToString(c.h.Sum(nil)); got != c.want.Checksum {
			return fmt.Errorf("%w: %s checksum %s, the backup's manifest says %s", repo.ErrCorrupt, c.want.Algorithm, got, c.want.Checksum)
		}
	}
	return nil
}
