package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"

	"github.com/zeebo/xxh3"
)

// Object format
//
// Every object the repository stores is framed so that it carries its own
// checksum and can be written as a stream of unknown length:
//
//	offset  size  field
//	0       8     magic "SYNBAK\x00\x02" or "SYNBAK\x00\x03" (the last byte is
//	              the format version; see below for version 3)
//	8       1     codec: 0 = none, 1 = zstd, 2 = s2; | 0x80 when the payload is
//	              age-encrypted (after compression; see crypt.go)
//	9       4     A = length of the attributes block, big-endian uint32 (at most 1 MiB)
//	13      A     attributes: a JSON object of string to string ("{}" when empty)
//	13+A    P     payload: codec(plaintext), or age(codec(plaintext)); with codec
//	              none and no encryption, the plaintext itself
//	13+A+P  32    sha256 of the plaintext
//	45+A+P  8     plaintext length, big-endian uint64
//	53+A+P  32    binding: sha256 of "synbak object v2\x00", the object's name
//	              and the attributes block (each preceded by its length, a
//	              big-endian uint32), the plaintext sha256 and the plaintext
//	              length (big-endian uint64)
//	85+A+P  8     magic "SYNBKEND"
//
// The trailer (the last 80 bytes) is written after the payload, so a writer
// needs neither the length nor the checksum in advance; a reader that knows
// the stored size reads header and trailer with two ranged reads, and a
// streaming reader holds back the trailer until the end.
//
// The binding ties an object to its name and attributes: an object renamed
// or copied to another name (two WAL segments swapped), or one whose
// attributes changed by one bit (a WAL object's LSNs, a backup's kind),
// fails its check like a damaged payload. It covers nothing the codec or
// the encryption changes, so Stat checks it from header and trailer alone
// (verify --quick), and two stores of one plaintext under one name with one
// set of attributes carry the same binding whatever codec stored them.
// "Identical content" (a Put over an existing name) means the same plaintext
// sha256 and length, whatever the codec; the existing object, with its
// attributes, is kept.
//
// A zstd payload written WithWorkers is a sequence of independent frames,
// each preceded by a skippable frame giving its size (frames.go): still one
// valid zstd stream, read by the streaming reader as any other.
//
// Version 3 (magic "SYNBAK\x00\x03") is version 2 with another plaintext
// checksum: XXH3-128 (seed 0; 16 bytes, high half first, as xxhsum -H2
// prints it) instead of sha256, so its trailer is 64 bytes (checksum 16,
// length 8, binding 32, magic 8) and its binding's input starts with
// "synbak object v3\x00" and holds the 16-byte checksum. The binding stays
// a sha256. Bulk objects nothing addresses by their sha256 (base-backup
// and dump parts, WAL segments) are written as version 3 (FastChecksum):
// sha256 of the plaintext was a quarter of the CPU time of a base backup and
// of restore's extract, XXH3 costs about a twentieth of that. XXH3 detects
// damage as well as sha256 does; neither protects an unencrypted repository
// against someone who can rewrite its objects (they can recompute either),
// and an encrypted one is protected by age's authentication. Objects named
// by their content's sha256 (media, configuration files: PutContent,
// WantSHA256) stay version 2. "Identical content" between a version 2 and a
// version 3 object is decided by reading the existing one and hashing it
// with the new one's algorithm.
//
// Version 1 (magic "SYNBAK\x00\x01", written before the binding existed)
// has the same header and a 48-byte trailer without the binding: its
// payload is checked, its name and attributes are not. It stays readable, so
// old repositories stay restorable; new objects are version 2 or 3.

const (
	headerMagic   = "SYNBAK\x00\x02"
	headerMagicV3 = "SYNBAK\x00\x03"
	headerMagicV1 = "SYNBAK\x00\x01"
	trailerMagic  = "SYNBKEND"
	// fixedHeaderSize is magic, codec and attributes length.
	fixedHeaderSize = 8 + 1 + 4
	// trailerSize is the size of the trailer of a version 2 object.
	trailerSize = 32 + 8 + 32 + 8
	// trailerSizeV1 is the size of the trailer of a version 1 object.
	trailerSizeV1 = 32 + 8 + 8
	// trailerSizeV3 is the size of the trailer of a version 3 object.
	trailerSizeV3 = 16 + 8 + 32 + 8
	// bindDomain starts the binding digest's input (version 2).
	bindDomain = "synbak object v2\x00"
	// bindDomainV3 starts a version 3 object's binding digest's input.
	bindDomainV3 = "synbak object v3\x00"
	// maxAttrsSize bounds the attributes block.
	maxAttrsSize = 1 << 20
	// minObjectSize is the smallest well-formed object ("{}" attributes,
	// empty payload is possible only with codec none).
	minObjectSize = fixedHeaderSize + trailerSizeV1
)

// Codec identifies how the payload encodes the plaintext.
type Codec byte

// Codecs.
const (
	CodecNone Codec = 0
	CodecZstd Codec = 1
	// CodecS2 is klauspost's S2 stream format (Snappy-compatible, about
	// 3-7x faster than zstd's fastest level, 70% of its ratio on WAL).
	CodecS2 Codec = 2
)

// String returns the codec's name as used in Options.Compression.
func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// encodeHeader returns the header of a version 2 or 3 object for codec and
// attrs.
func encodeHeader(version int, c Codec, attrs map[string]string) ([]byte, error) {
	if attrs == nil {
		attrs = map[string]string{}
	}
	a, err := json.Marshal(attrs)
	if err != nil {
		return nil, fmt.Errorf("encode attributes: %w", err)
	}
	if len(a) > maxAttrsSize {
		return nil, fmt.Errorf("attributes are %d bytes, more than the limit of %d", len(a), maxAttrsSize)
	}
	h := make([]byte, 0, fixedHeaderSize+len(a))
	if version == 3 {
		h = append(h, headerMagicV3...)
	} else {
		h = append(h, headerMagic...)
	}
	h = append(h, byte(c))
	h = binary.BigEndian.AppendUint32(h, uint32(len(a)))
	return append(h, a...), nil
}

// header is a parsed object header.
type header struct {
	version   int // 1, 2 or 3
	codec     Codec
	encrypted bool
	attrs     map[string]string
	raw       []byte // the attributes block as stored
	size      int64  // bytes the header occupies
}

// trailerLen returns the size of the trailer of an object of this version.
func (h header) trailerLen() int { return trailerLen(h.version) }

// trailerLen returns the size of the trailer of an object of version v.
func trailerLen(v int) int {
	switch v {
	case 1:
		return trailerSizeV1
	case 3:
		return trailerSizeV3
	}
	return trailerSize
}

// sumLen returns the length of the plaintext checksum of version v.
func sumLen(v int) int {
	if v == 3 {
		return 16
	}
	return 32
}

// newSum returns the plaintext checksum's hash for version v: sha256, or
// XXH3-128 for version 3.
func newSum(v int) hash.Hash {
	if v == 3 {
		return &xxh128{xxh3.New()}
	}
	return sha256.New()
}

// xxh128 is XXH3-128 (seed 0) as a hash.Hash whose Sum appends the 16-byte
// canonical form (high half first, big-endian).
type xxh128 struct{ *xxh3.Hasher }

func (x *xxh128) Size() int { return 16 }

func (x *xxh128) Sum(b []byte) []byte {
	s := x.Sum128().Bytes()
	return append(b, s[:]...)
}

// fixedHeader is the parsed fixed part of a header.
type fixedHeader struct {
	version   int
	codec     Codec
	encrypted bool
	attrsLen  int
}

// parseFixedHeader checks the first fixedHeaderSize bytes and returns the
// version, codec and the length of the attributes block. The returned error
// is a reason for a corruption error.
func parseFixedHeader(b []byte) (fixedHeader, error) {
	if len(b) < fixedHeaderSize {
		return fixedHeader{}, fmt.Errorf("header truncated (%d bytes)", len(b))
	}
	var f fixedHeader
	switch string(b[:8]) {
	case headerMagic:
		f.version = 2
	case headerMagicV3:
		f.version = 3
	case headerMagicV1:
		f.version = 1
	default:
		if string(b[:6]) == headerMagic[:6] {
			return fixedHeader{}, fmt.Errorf("unsupported object format version %d (this synbak reads versions 1 to %d; upgrade synbak)", b[7], headerMagicV3[7])
		}
		return fixedHeader{}, fmt.Errorf("bad header magic %q", b[:8])
	}
	f.codec, f.encrypted = Codec(b[8]&^flagEncrypted), b[8]&flagEncrypted != 0
	if f.codec != CodecNone && f.codec != CodecZstd && f.codec != CodecS2 {
		return fixedHeader{}, fmt.Errorf("unknown codec %d", b[8])
	}
	n := binary.BigEndian.Uint32(b[9:13])
	if n > maxAttrsSize {
		return fixedHeader{}, fmt.Errorf("attributes block of %d bytes exceeds the limit of %d", n, maxAttrsSize)
	}
	f.attrsLen = int(n)
	return f, nil
}

func parseAttrs(b []byte) (map[string]string, error) {
	attrs := map[string]string{}
	if err := json.Unmarshal(b, &attrs); err != nil {
		return nil, fmt.Errorf("attributes: %v", err)
	}
	return attrs, nil
}

// readHeader reads and parses a header from r.
func readHeader(r io.Reader) (header, error) {
	var fixed [fixedHeaderSize]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return header{}, noEOF(err)
	}
	f, err := parseFixedHeader(fixed[:])
	if err != nil {
		return header{}, err
	}
	a := make([]byte, f.attrsLen)
	if _, err := io.ReadFull(r, a); err != nil {
		return header{}, noEOF(err)
	}
	attrs, err := parseAttrs(a)
	if err != nil {
		return header{}, err
	}
	return header{version: f.version, codec: f.codec, encrypted: f.encrypted, attrs: attrs, raw: a, size: int64(fixedHeaderSize + f.attrsLen)}, nil
}

// noEOF turns an end of stream into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// trailer is a parsed object trailer.
type trailer struct {
	sum  []byte // sha256 (32 bytes) or, version 3, XXH3-128 (16)
	size int64
	bind [32]byte // versions 2 and 3
}

// bindDigest returns the binding of a version 2 or 3 object: its name, its
// attributes block as stored, and its plaintext's checksum and length.
func bindDigest(version int, name string, rawAttrs []byte, sum []byte, size int64) [32]byte {
	h := sha256.New()
	if version == 3 {
		h.Write([]byte(bindDomainV3))
	} else {
		h.Write([]byte(bindDomain))
	}
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(len(name)))
	h.Write(n[:4])
	h.Write([]byte(name))
	binary.BigEndian.PutUint32(n[:4], uint32(len(rawAttrs)))
	h.Write(n[:4])
	h.Write(rawAttrs)
	h.Write(sum)
	binary.BigEndian.PutUint64(n[:], uint64(size))
	h.Write(n[:])
	var b [32]byte
	h.Sum(b[:0])
	return b
}

// encodeTrailer returns the trailer of a version 2 or 3 object named name
// whose attributes block is rawAttrs.
func encodeTrailer(version int, name string, rawAttrs []byte, sum []byte, size int64) []byte {
	t := make([]byte, 0, trailerLen(version))
	t = append(t, sum...)
	t = binary.BigEndian.AppendUint64(t, uint64(size))
	bind := bindDigest(version, name, rawAttrs, sum, size)
	t = append(t, bind[:]...)
	return append(t, trailerMagic...)
}

// parseTrailer parses the trailer of an object of the given version.
func parseTrailer(version int, b []byte) (trailer, error) {
	want := trailerLen(version)
	if len(b) != want {
		return trailer{}, fmt.Errorf("trailer truncated (%d bytes)", len(b))
	}
	if !bytes.Equal(b[want-8:], []byte(trailerMagic)) {
		return trailer{}, fmt.Errorf("bad trailer magic (object truncated?)")
	}
	sl := sumLen(version)
	t := trailer{sum: bytes.Clone(b[:sl])}
	size := binary.BigEndian.Uint64(b[sl : sl+8])
	if size > 1<<62 {
		return trailer{}, fmt.Errorf("implausible plaintext length %d in trailer", size)
	}
	t.size = int64(size)
	if version != 1 {
		copy(t.bind[:], b[sl+8:sl+40])
	}
	return t, nil
}

// checkBinding checks a version 2 or 3 object's binding against its name
// and attributes block; version 1 objects have none.
func checkBinding(version int, name string, rawAttrs []byte, t trailer) error {
	if version == 1 {
		return nil
	}
	if bindDigest(version, name, rawAttrs, t.sum, t.size) != t.bind {
		return fmt.Errorf("its name, attributes or checksum do not match the binding in its trailer (an object renamed, swapped or copied from elsewhere, or attributes changed)")
	}
	return nil
}

func hexSum(s [32]byte) string { return hex.EncodeToString(s[:]) }

// The names of the plaintext checksums, for messages.
const (
	sumSHA256 = "sha256"
	sumXXH3   = "xxh3-128"
)

// sumName returns the name of version v's plaintext checksum.
func sumName(v int) string {
	if v == 3 {
		return sumXXH3
	}
	return sumSHA256
}
