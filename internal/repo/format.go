package repo

import (
	"bytes"
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
//	0       8     magic "SYNBAK\x00\x01" (the last byte is the format version)
//	8       1     codec: 0 = none, 1 = zstd, 2 = s2; | 0x80 when the payload is
//	              age-encrypted (after compression; see crypt.go)
//	9       4     A = length of the attributes block, big-endian uint32 (at most 1 MiB)
//	13      A     attributes: a JSON object of string to string ("{}" when empty)
//	13+A    P     payload: codec(plaintext), or age(codec(plaintext)); with codec
//	              none and no encryption, the plaintext itself
//	13+A+P  32    sha256 of the plaintext
//	45+A+P  8     plaintext length, big-endian uint64
//	53+A+P  8     magic "SYNBKEND"
//
// The trailer (the last 48 bytes) is written after the payload, so a writer
// needs neither the length nor the checksum in advance; a reader that knows
// the stored size reads header and trailer with two ranged reads, and a
// streaming reader holds back the last 48 bytes until the end. "Identical
// content" means the same plaintext sha256 (and length), whatever the codec.

const (
	headerMagic  = "SYNBAK\x00\x01"
	trailerMagic = "SYNBKEND"
	// fixedHeaderSize is magic, codec and attributes length.
	fixedHeaderSize = 8 + 1 + 4
	// trailerSize is the size of the trailer at the end of every object.
	trailerSize = 32 + 8 + 8
	// maxAttrsSize bounds the attributes block.
	maxAttrsSize = 1 << 20
	// minObjectSize is the smallest well-formed object ("{}" attributes,
	// empty payload is possible only with codec none).
	minObjectSize = fixedHeaderSize + trailerSize
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
	codec     Codec
	encrypted bool
	attrs     map[string]string
	size      int64 // bytes the header occupies
}

// parseFixedHeader checks the first fixedHeaderSize bytes and returns the
// codec and the length of the attributes block. The returned error is a
// reason for a corruption error.
func parseFixedHeader(b []byte) (Codec, bool, int, error) {
	if len(b) < fixedHeaderSize {
		return 0, false, 0, fmt.Errorf("header truncated (%d bytes)", len(b))
	}
	if string(b[:8]) != headerMagic {
		if string(b[:6]) == headerMagic[:6] {
			return 0, false, 0, fmt.Errorf("unsupported object format version %d (this synbak reads version %d; upgrade synbak)", b[7], headerMagic[7])
		}
		return 0, false, 0, fmt.Errorf("bad header magic %q", b[:8])
	}
	c, encrypted := Codec(b[8]&^flagEncrypted), b[8]&flagEncrypted != 0
	if c != CodecNone && c != CodecZstd && c != CodecS2 {
		return 0, false, 0, fmt.Errorf("unknown codec %d", b[8])
	}
	n := binary.BigEndian.Uint32(b[9:13])
	if n > maxAttrsSize {
		return 0, false, 0, fmt.Errorf("attributes block of %d bytes exceeds the limit of %d", n, maxAttrsSize)
	}
	return c, encrypted, int(n), nil
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
	c, encrypted, n, err := parseFixedHeader(fixed[:])
	if err != nil {
		return header{}, err
	}
	a := make([]byte, n)
	if _, err := io.ReadFull(r, a); err != nil {
		return header{}, noEOF(err)
	}
	attrs, err := parseAttrs(a)
	if err != nil {
		return header{}, err
	}
	return header{codec: c, encrypted: encrypted, attrs: attrs, size: int64(fixedHeaderSize + n)}, nil
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
}

func encodeTrailer(sum [32]byte, size int64) []byte {
	t := make([]byte, 0, trailerSize)
	t = append(t, sum[:]...)
	t = binary.BigEndian.AppendUint64(t, uint64(size))
	return append(t, trailerMagic...)
}

func parseTrailer(b []byte) (trailer, error) {
	if len(b) != trailerSize {
		return trailer{}, fmt.Errorf("trailer truncated (%d bytes)", len(b))
	}
	if !bytes.Equal(b[40:], []byte(trailerMagic)) {
		return trailer{}, fmt.Errorf("bad trailer magic (object truncated?)")
	}
	var t trailer
	copy(t.sum[:], b[:32])
	size := binary.BigEndian.Uint64(b[32:40])
	if size > 1<<62 {
		return trailer{}, fmt.Errorf("implausible plaintext length %d in trailer", size)
	}
	t.size = int64(size)
	return t, nil
}

func hexSum(s [32]byte) string { return hex.EncodeToString(s[:]) }
