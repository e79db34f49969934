package restore

// Incremental base backups (PostgreSQL 17 and later) and how a restore
// rebuilds a data directory from a chain of them.
//
// The rules, as PostgreSQL's server writes the files
// (src/backend/backup/basebackup_incremental.c: GetFileBackupMethod,
// GetIncrementalHeaderSize; basebackup.c: sendFile) and pg_combinebackup
// reads them (src/bin/pg_combinebackup/reconstruct.c, backup_label.c,
// pg_combinebackup.c):
//
//   - An incremental backup sends some relation segment files as
//     INCREMENTAL.<name> in place of <name>. The file is, in the server's
//     byte order (little-endian here): uint32 magic 0xd3ae1f0d; uint32 n,
//     the number of blocks it carries (<= RELSEG_SIZE); uint32 the
//     truncation block length (<= RELSEG_SIZE); n uint32 block numbers
//     relative to the segment's start (ascending); then, when n > 0, zero
//     padding so that the header is a multiple of BLCKSZ (released 17.x and
//     later; a file with n = 0 is the 12-byte header alone); then the n
//     blocks of BLCKSZ bytes in the order of their numbers. Its size is
//     therefore exactly header + n*BLCKSZ.
//   - The reconstructed file is max(truncation length, highest listed
//     block + 1) blocks long. Listed blocks come from the INCREMENTAL.
//     file; a block below the truncation length that is not listed comes
//     from the older backups (the newest one that has it: its INCREMENTAL.
//     file's list, or its full copy); a block at or past the truncation
//     length that is not listed, and a block below it that no older backup
//     has (the relation was extended without WAL-logging that block), is
//     zeros.
//   - The server sends a file incrementally only if the parent's manifest
//     lists it (as <name> or INCREMENTAL.<name>), so an INCREMENTAL. file
//     without an older copy in the chain is a broken chain.
//   - Every other file is sent whole and replaces the older copies; a file
//     absent from the newest backup's manifest does not exist (dropped
//     relation, removed database, deleted file).
//   - backup_label of an incremental backup carries "INCREMENTAL FROM LSN:"
//     and "INCREMENTAL FROM TLI:" lines; the server refuses to start from a
//     data directory whose backup_label has them, so they are dropped (the
//     rest of the newest label is kept as is).
//   - backup_manifest lists the files as sent (INCREMENTAL. names, their
//     sizes and checksums). pg_combinebackup writes a new one for the
//     result; synbak checks every file against the manifest of the backup
//     it came from while extracting and the final file set against the
//     newest manifest, and then writes no backup_manifest for a chain (the
//     server never reads it; one listing INCREMENTAL. files would mislead
//     pg_verifybackup).
//
// Reconstruction order. pg_combinebackup works newest first, with random
// access to every member's files on disk. synbak's members are tar streams
// (compressed, encrypted, split into parts), readable in order only, so
// it goes oldest first: extract the full backup, then apply each
// incremental in order, each INCREMENTAL. file to the file rebuilt so far:
// truncate it to the truncation length when longer, write the listed
// blocks at their offsets, extend it with zeros to the reconstructed
// length. This writes the full backup once and each changed block once per
// member that carries it, with no second copy of the data directory and
// memory bounded by one buffer per file and the manifests' file lists.
// Both orders give the same file: for a block below the newest truncation
// length, the oldest-first result holds the last member's copy that
// wrote it, which is the newest member that has it. They differ only for
// a block that an intermediate member cut off (at or past its truncation
// length, unlisted) and a later member neither lists nor cuts: oldest
// first it is zeros, pg_combinebackup takes the full backup's copy. Such a
// block was re-added after that member without any WAL (the server would
// otherwise have listed it), so zeros are what the server had.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

const (
	// incrementalMagic starts every INCREMENTAL. file.
	incrementalMagic = 0xd3ae1f0d
	// blockSize is BLCKSZ: PostgreSQL's page size in every build synbak
	// supports (a server built otherwise fails the size check below).
	blockSize = 8192
	// relSegSize is RELSEG_SIZE: blocks per segment file (1 GB).
	relSegSize = 131072
	// incrementalPrefix marks an incrementally sent file.
	incrementalPrefix = "INCREMENTAL."
)

// ErrBadIncremental marks an INCREMENTAL. file that does not follow
// PostgreSQL's format.
var ErrBadIncremental = errors.New("malformed INCREMENTAL. file")

// incrementalHeader is the parsed header of an INCREMENTAL. file.
type incrementalHeader struct {
	// Blocks are the block numbers carried, relative to the segment.
	Blocks []uint32
	// TruncateBlocks is the truncation block length.
	TruncateBlocks uint32
	// Len is the header's length including its padding: the offset of the
	// first block.
	Len int64
}

// Length returns the reconstructed file's length in blocks.
func (h incrementalHeader) Length() uint32 {
	n := h.TruncateBlocks
	for _, b := range h.Blocks {
		if b >= n {
			n = b + 1
		}
	}
	return n
}

// incrementalHeaderLen returns the header length of an INCREMENTAL. file
// carrying n blocks (GetIncrementalHeaderSize).
func incrementalHeaderLen(n uint32) int64 {
	l := int64(12) + 4*int64(n)
	if n > 0 && l%blockSize != 0 {
		l += blockSize - l%blockSize
	}
	return l
}

// isIncremental reports whether the archive entry at path (slash
// separated) is an INCREMENTAL. file, and returns the name it rebuilds.
func isIncremental(path string) (string, bool) {
	dir, base := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, base = path[:i+1], path[i+1:]
	}
	if !strings.HasPrefix(base, incrementalPrefix) || len(base) == len(incrementalPrefix) {
		return path, false
	}
	return dir + strings.TrimPrefix(base, incrementalPrefix), true
}

// readIncrementalHeader reads the header (with its padding) of an
// INCREMENTAL. file of size bytes from r, leaving r at the first block.
func readIncrementalHeader(r io.Reader, size int64) (incrementalHeader, error) {
	var fixed [12]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return incrementalHeader{}, fmt.Errorf("%w: header: %w", ErrBadIncremental, unexpectedEOF(err))
	}
	magic := binary.LittleEndian.Uint32(fixed[0:])
	n := binary.LittleEndian.Uint32(fixed[4:])
	trunc := binary.LittleEndian.Uint32(fixed[8:])
	if magic != incrementalMagic {
		return incrementalHeader{}, fmt.Errorf("%w: magic 0x%x, not 0x%x", ErrBadIncremental, magic, uint32(incrementalMagic))
	}
	if n > relSegSize {
		return incrementalHeader{}, fmt.Errorf("%w: %d blocks, more than a segment's %d", ErrBadIncremental, n, relSegSize)
	}
	if trunc > relSegSize {
		return incrementalHeader{}, fmt.Errorf("%w: truncation length %d blocks, more than a segment's %d", ErrBadIncremental, trunc, relSegSize)
	}
	h := incrementalHeader{TruncateBlocks: trunc, Len: incrementalHeaderLen(n)}
	if want := h.Len + int64(n)*blockSize; size != want {
		return incrementalHeader{}, fmt.Errorf("%w: %d bytes for %d blocks, want %d (a page size other than %d?)", ErrBadIncremental, size, n, want, blockSize)
	}
	raw := make([]byte, 4*int(n))
	if _, err := io.ReadFull(r, raw); err != nil {
		return incrementalHeader{}, fmt.Errorf("%w: block numbers: %w", ErrBadIncremental, unexpectedEOF(err))
	}
	h.Blocks = make([]uint32, n)
	for i := range h.Blocks {
		b := binary.LittleEndian.Uint32(raw[4*i:])
		if b >= relSegSize {
			return incrementalHeader{}, fmt.Errorf("%w: block number %d beyond a segment's %d blocks", ErrBadIncremental, b, relSegSize)
		}
		if i > 0 && b <= h.Blocks[i-1] {
			return incrementalHeader{}, fmt.Errorf("%w: block numbers not ascending (%d after %d)", ErrBadIncremental, b, h.Blocks[i-1])
		}
		h.Blocks[i] = b
	}
	if _, err := io.CopyN(io.Discard, r, h.Len-12-4*int64(n)); err != nil {
		return incrementalHeader{}, fmt.Errorf("%w: header padding: %w", ErrBadIncremental, unexpectedEOF(err))
	}
	return h, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// applyIncremental applies an INCREMENTAL. file, its header h already read
// from r and its blocks next, to f, the file as rebuilt from the older
// backups: cut f to the truncation length, write the blocks, extend it to
// the reconstructed length. buf (a multiple of blockSize) batches runs of
// consecutive blocks into one write. changed reports whether the file
// differs from before: blocks written or its length changed.
func applyIncremental(f *os.File, h incrementalHeader, r io.Reader, buf []byte) (changed bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	before := fi.Size()
	if cut := int64(h.TruncateBlocks) * blockSize; fi.Size() > cut {
		if err := f.Truncate(cut); err != nil {
			return false, err
		}
	}
	for i := 0; i < len(h.Blocks); {
		// A run of consecutive block numbers, as long as buf holds.
		j := i + 1
		for j < len(h.Blocks) && h.Blocks[j] == h.Blocks[j-1]+1 && (j-i+1)*blockSize <= len(buf) {
			j++
		}
		chunk := buf[:(j-i)*blockSize]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return false, fmt.Errorf("%w: blocks: %w", ErrBadIncremental, unexpectedEOF(err))
		}
		if _, err := f.WriteAt(chunk, int64(h.Blocks[i])*blockSize); err != nil {
			return false, err
		}
		i = j
	}
	want := int64(h.Length()) * blockSize
	fi, err = f.Stat()
	if err != nil {
		return false, err
	}
	if fi.Size() < want {
		if err := f.Truncate(want); err != nil {
			return false, err
		}
	}
	return len(h.Blocks) > 0 || want != before, nil
}

// stripIncrementalLabel drops the INCREMENTAL FROM LSN/TLI lines from a
// backup_label, keeping every other line as is (write_backup_label).
func stripIncrementalLabel(label []byte) []byte {
	var out []byte
	for rest := label; len(rest) > 0; {
		line := rest
		if i := strings.IndexByte(string(rest), '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		s := string(line)
		if strings.HasPrefix(s, "INCREMENTAL FROM LSN: ") || strings.HasPrefix(s, "INCREMENTAL FROM TLI: ") {
			continue
		}
		out = append(out, line...)
	}
	return out
}
