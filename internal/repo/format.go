package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
)

// Object format
//
// Every object the repository stores is framed so that it carries its own
// checksum and can be written as a stream of unknown length:
//
//	offset  size  field
//	0       8     magic "SYNBAK\x00\x02" (the last byte is the format version)
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
// Version 1 (magic "SYNBAK\x00\x01", written before the binding existed)
// has the same header and a 48-byte trailer without the binding: its
// payload is checked, its name and attributes are not. It stays readable, so
// old repositories stay restorable; new objects are always version 2.

const (
	headerMagic   = "SYNBAK\x00\x02"
	headerMagicV1 = "SYNBAK\x00\x01"
	trailerMagic  = "SYNBKEND"
	// fixedHeaderSize is magic, codec and attributes length.
	fixedHeaderSize = 8 + 1 + 4
	// trailerSize is the size of the trailer of a version 2 object.
	trailerSize = 32 + 8 + 32 + 8
	// trailerSizeV1 is the size of the trailer of a version 1 object.
	trailerSizeV1 = 32 + 8 + 8
	// bindDomain starts the binding digest's input.
	bindDomain = "synbak object v2\x00"
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

// encodeHeader returns the header for codec and attrs.
func encodeHeader(c Codec, attrs map[string]string) ([]byte, error) {
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
	h = append(h, headerMagic...)
	h = append(h, byte(c))
	h = binary.BigEndian.AppendUint32(h, uint32(len(a)))
	return append(h, a...), nil
}

// header is a parsed object header.
type header struct {
	version   int // 1 or 2
	codec     Codec
	encrypted bool
	attrs     map[string]string
	raw       []byte // the attributes block as stored
	size      int64  // bytes the header occupies
}

// trailerLen returns the size of the trailer of an object of this version.
func (h header) trailerLen() int {
	if h.version == 1 {
		return trailerSizeV1
	}
	return trailerSize
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
	case headerMagicV1:
		f.version = 1
	default:
		if string(b[:6]) == headerMagic[:6] {
			return fixedHeader{}, fmt.Errorf("unsupported object format version %d (this synbak reads versions 1 and %d; upgrade synbak)", b[7], headerMagic[7])
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
	sum  [32]byte
	size int64
	bind [32]byte // version 2 only
}

// bindDigest returns the binding of a version 2 object: its name, its
// attributes block as stored, and its plaintext's sha256 and length.
func bindDigest(name string, rawAttrs []byte, sum [32]byte, size int64) [32]byte {
	h := sha256.New()
	h.Write([]byte(bindDomain))
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(len(name)))
	h.Write(n[:4])
	h.Write([]byte(name))
	binary.BigEndian.PutUint32(n[:4], uint32(len(rawAttrs)))
	h.Write(n[:4])
	h.Write(rawAttrs)
	h.Write(sum[:])
	binary.BigEndian.PutUint64(n[:], uint64(size))
	h.Write(n[:])
	var b [32]byte
	h.Sum(b[:0])
	return b
}

// encodeTrailer returns a version 2 trailer for an object named name whose
// attributes block is rawAttrs.
func encodeTrailer(name string, rawAttrs []byte, sum [32]byte, size int64) []byte {
	t := make([]byte, 0, trailerSize)
	t = append(t, sum[:]...)
	t = binary.BigEndian.AppendUint64(t, uint64(size))
	bind := bindDigest(name, rawAttrs, sum, size)
	t = append(t, bind[:]...)
	return append(t, trailerMagic...)
}

// parseTrailer parses the trailer of an object of the given version.
func parseTrailer(version int, b []byte) (trailer, error) {
	want := trailerSize
	if version == 1 {
		want = trailerSizeV1
	}
	if len(b) != want {
		return trailer{}, fmt.Errorf("trailer truncated (%d bytes)", len(b))
	}
	if !bytes.Equal(b[want-8:], []byte(trailerMagic)) {
		return trailer{}, fmt.Errorf("bad trailer magic (object truncated?)")
	}
	var t trailer
	copy(t.sum[:], b[:32])
	size := binary.BigEndian.Uint64(b[32:40])
	if size > 1<<62 {
		return trailer{}, fmt.Errorf("implausible plaintext length %d in trailer", size)
	}
	t.size = int64(size)
	if version != 1 {
		copy(t.bind[:], b[40:72])
	}
	return t, nil
}

// checkBinding checks a version 2 object's binding against its name and
// attributes block; version 1 objects have none.
func checkBinding(version int, name string, rawAttrs []byte, t trailer) error {
	if version == 1 {
		return nil
	}
	if bindDigest(name, rawAttrs, t.sum, t.size) != t.bind {
		return fmt.Errorf("its name, attributes or checksum do not match the binding in its trailer (an object renamed, swapped or copied from elsewhere, or attributes changed)")
	}
	return nil
}

func hexSum(s [32]byte) string { return hex.EncodeToString(s[:]) }
