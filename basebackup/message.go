package basebackup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// MessageKind is the type byte that starts every CopyData message of a
// PostgreSQL 15+ BASE_BACKUP stream.
type MessageKind byte

// The CopyData message kinds of PostgreSQL 15+.
const (
	// KindNewArchive starts an archive: its name and tablespace path.
	KindNewArchive MessageKind = 'n'
	// KindData carries bytes of the current archive (or of the manifest).
	KindData MessageKind = 'd'
	// KindProgress carries the uncompressed bytes sent so far.
	KindProgress MessageKind = 'p'
	// KindManifest says that the backup manifest follows.
	KindManifest MessageKind = 'm'
)

// Message is one decoded CopyData message of a BASE_BACKUP stream.
type Message struct {
	Kind MessageKind
	// Archive and Path are set for KindNewArchive: the archive's name
	// (base.tar, 16385.tar, base.tar.zst ...) and its tablespace's location
	// (empty for the data directory).
	Archive, Path string
	// Data is set for KindData. It aliases the input buffer.
	Data []byte
	// Progress is set for KindProgress.
	Progress int64
}

// ErrProtocol marks a BASE_BACKUP stream synbak cannot decode.
var ErrProtocol = errors.New("unexpected BASE_BACKUP protocol message")

// IsProtocol reports whether err says that the server sent something the
// BASE_BACKUP decoder does not understand.
func IsProtocol(err error) bool { return errors.Is(err, ErrProtocol) }

// DecodeMessage decodes one CopyData payload of a PostgreSQL 15+
// BASE_BACKUP stream. Unknown type bytes and malformed messages are errors
// for which IsProtocol is true.
func DecodeMessage(b []byte) (Message, error) {
	if len(b) == 0 {
		return Message{}, fmt.Errorf("%w: empty CopyData message", ErrProtocol)
	}
	m := Message{Kind: MessageKind(b[0])}
	body := b[1:]
	switch m.Kind {
	case KindNewArchive:
		name, rest, ok := cstring(body)
		if !ok {
			return Message{}, fmt.Errorf("%w: new-archive message without a NUL-terminated archive name", ErrProtocol)
		}
		path, rest, ok := cstring(rest)
		if !ok {
			return Message{}, fmt.Errorf("%w: new-archive message for %q without a NUL-terminated tablespace path", ErrProtocol, name)
		}
		if len(rest) != 0 || name == "" {
			return Message{}, fmt.Errorf("%w: malformed new-archive message (name %q, %d trailing bytes)", ErrProtocol, name, len(rest))
		}
		m.Archive, m.Path = name, path
	case KindData:
		m.Data = body
	case KindProgress:
		if len(body) != 8 {
			return Message{}, fmt.Errorf("%w: progress message of %d bytes, want 8", ErrProtocol, len(body))
		}
		m.Progress = int64(binary.BigEndian.Uint64(body))
	case KindManifest:
		if len(body) != 0 {
			return Message{}, fmt.Errorf("%w: manifest message with %d unexpected bytes", ErrProtocol, len(body))
		}
	default:
		return Message{}, fmt.Errorf("%w: unknown CopyData type byte %q (0x%02x) in the BASE_BACKUP stream; this synbak understands PostgreSQL 15+ streams with types n, d, p, m", ErrProtocol, rune(b[0]), b[0])
	}
	return m, nil
}

func cstring(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}
