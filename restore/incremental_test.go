package restore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// incrementalFile builds an INCREMENTAL. file as the server writes it
// (sendFile with GetIncrementalHeaderSize): header, padding to BLCKSZ when
// it carries blocks, the blocks.
func incrementalFile(trunc uint32, blocks map[uint32][]byte) []byte {
	var nums []uint32
	for b := range blocks {
		nums = append(nums, b)
	}
	for i := range nums { // ascending, as the server sorts them
		for j := i + 1; j < len(nums); j++ {
			if nums[j] < nums[i] {
				nums[i], nums[j] = nums[j], nums[i]
			}
		}
	}
	var buf bytes.Buffer
	w := func(v uint32) { _ = binary.Write(&buf, binary.LittleEndian, v) }
	w(incrementalMagic)
	w(uint32(len(nums)))
	w(trunc)
	for _, n := range nums {
		w(n)
	}
	if len(nums) > 0 {
		for buf.Len()%blockSize != 0 {
			buf.WriteByte(0)
		}
	}
	for _, n := range nums {
		buf.Write(blocks[n])
	}
	return buf.Bytes()
}

func page(tag byte) []byte { return bytes.Repeat([]byte{tag}, blockSize) }

func pages(tags ...byte) []byte {
	var out []byte
	for _, t := range tags {
		out = append(out, page(t)...)
	}
	return out
}

func TestIncrementalHeaderLen(t *testing.T) {
	for _, c := range []struct {
		n    uint32
		want int64
	}{{0, 12}, {1, blockSize}, {2045, blockSize}, {2046, 2 * blockSize}, {relSegSize, 65 * blockSize}} {
		if got := incrementalHeaderLen(c.n); got != c.want {
			t.Errorf("incrementalHeaderLen(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

func TestReadIncrementalHeader(t *testing.T) {
	good := incrementalFile(7, map[uint32][]byte{9: page('b'), 2: page('a')})
	h, err := readIncrementalHeader(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	if h.TruncateBlocks != 7 || len(h.Blocks) != 2 || h.Blocks[0] != 2 || h.Blocks[1] != 9 || h.Len != blockSize || h.Length() != 10 {
		t.Errorf("header = %+v, length %d", h, h.Length())
	}
	empty := incrementalFile(5, nil)
	if len(empty) != 12 {
		t.Fatalf("an INCREMENTAL. file without blocks is %d bytes, want the 12-byte header alone", len(empty))
	}
	if h, err := readIncrementalHeader(bytes.NewReader(empty), 12); err != nil || h.Length() != 5 || len(h.Blocks) != 0 {
		t.Errorf("empty: %+v, %v", h, err)
	}

	patch := func(b []byte, off int, v uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	for name, c := range map[string]struct {
		data []byte
		size int64
	}{
		"bad magic":          {patch(good, 0, 0xd3ae1f0e), int64(len(good))},
		"big endian":         {func() []byte { b := bytes.Clone(good); binary.BigEndian.PutUint32(b, incrementalMagic); return b }(), int64(len(good))},
		"size mismatch":      {good, int64(len(good)) - 1},
		"no padding":         {append(bytes.Clone(good[:20]), good[blockSize:]...), int64(len(good)) - blockSize + 20},
		"too many blocks":    {patch(empty, 4, relSegSize+1), 12},
		"truncation too big": {patch(empty, 8, relSegSize+1), 12},
		"block past segment": {patch(good, 12, relSegSize), int64(len(good))},
		"not ascending":      {patch(good, 16, 2), int64(len(good))},
		"short":              {good[:10], int64(len(good))},
		"short block list":   {good[:14], int64(len(good))},
	} {
		_, err := readIncrementalHeader(bytes.NewReader(c.data), c.size)
		if !errors.Is(err, ErrBadIncremental) {
			t.Errorf("%s: %v, want ErrBadIncremental", name, err)
		}
	}
}

// applyBytes applies inc to a file holding old (nil: none yet, as for a
// relation the full backup already had empty) and returns the result.
func applyBytes(t *testing.T, old, inc []byte, bufBlocks int) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rel")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bytes.NewReader(inc)
	h, err := readIncrementalHeader(r, int64(len(inc)))
	if err != nil {
		t.Fatal(err)
	}
	changed, err := applyIncremental(f, h, r, make([]byte, bufBlocks*blockSize))
	if err != nil {
		t.Fatal(err)
	}
	if want := len(h.Blocks) > 0 || int64(h.Length())*blockSize != int64(len(old)); changed != want {
		t.Errorf("changed = %v, want %v", changed, want)
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes of the INCREMENTAL. file left unread", r.Len())
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestApplyIncremental(t *testing.T) {
	old := pages('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')
	for _, c := range []struct {
		name   string
		trunc  uint32
		blocks map[uint32][]byte
		want   []byte
	}{
		{"unchanged", 10, nil, old},
		{"changed in place", 10, map[uint32][]byte{2: page('a'), 3: page('b'), 9: page('c')},
			pages('0', '1', 'a', 'b', '4', '5', '6', '7', '8', 'c')},
		// VACUUM cut the relation to 4 blocks and changed block 1.
		{"shrunk", 4, map[uint32][]byte{1: page('a')}, pages('0', 'a', '2', '3')},
		{"truncated to nothing", 0, nil, nil},
		// Extended by new blocks (WAL-logged, so listed).
		{"extended", 12, map[uint32][]byte{10: page('a'), 11: page('b')},
			pages('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b')},
		// Blocks past the truncation length that are not listed are
		// zeros; listed ones past it extend the file.
		{"listed past truncation", 3, map[uint32][]byte{6: page('x')},
			append(append(pages('0', '1', '2'), make([]byte, 3*blockSize)...), page('x')...)},
		// A block below the truncation length that no older copy has (an
		// extension the server never WAL-logged) is zeros.
		{"unlogged extension", 12, map[uint32][]byte{11: page('b')},
			append(append(bytes.Clone(old), make([]byte, blockSize)...), page('b')...)},
		// Truncated and re-extended since the older backup: the new
		// blocks are listed.
		{"truncated then extended", 6, map[uint32][]byte{3: page('p'), 4: page('q'), 5: page('r')},
			pages('0', '1', '2', 'p', 'q', 'r')},
	} {
		for _, bufBlocks := range []int{1, 2, 128} {
			got := applyBytes(t, old, incrementalFile(c.trunc, c.blocks), bufBlocks)
			if !bytes.Equal(got, c.want) {
				t.Errorf("%s (buffer of %d blocks): got %d blocks %q, want %d blocks %q", c.name, bufBlocks, len(got)/blockSize, tags(got), len(c.want)/blockSize, tags(c.want))
			}
		}
	}
	// Blocks cut short in the stream.
	inc := incrementalFile(10, map[uint32][]byte{2: page('a'), 3: page('b')})
	path := filepath.Join(t.TempDir(), "rel")
	_ = os.WriteFile(path, old, 0o600)
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	defer f.Close()
	r := bytes.NewReader(inc[:len(inc)-100])
	h, err := readIncrementalHeader(r, int64(len(inc)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := applyIncremental(f, h, r, make([]byte, blockSize)); !errors.Is(err, ErrBadIncremental) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short blocks: %v", err)
	}
}

// tags summarizes pages by their first byte ('.' for a zero page).
func tags(b []byte) string {
	var out []byte
	for i := 0; i+blockSize <= len(b); i += blockSize {
		c := b[i]
		if c == 0 {
			c = '.'
		}
		out = append(out, c)
	}
	return string(out)
}

// TestApplyChainModel simulates a relation segment on a server (blocks
// written, the relation extended by logged and unlogged blocks, truncated
// by VACUUM), takes incremental "backups" of it as the server does
// (GetFileBackupMethod: the blocks the WAL summary names below the
// current length, the truncation length = the current length), applies
// them oldest first to the full copy, and checks that every step gives the
// server's file.
func TestApplyChainModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for run := 0; run < 200; run++ {
		var server [][]byte // the segment's blocks
		highest := 0        // the longest it has been: beyond, blocks never existed
		grow := func(n int, logged bool, modified map[uint32]bool) {
			for i := 0; i < n; i++ {
				p := make([]byte, blockSize)
				if logged {
					fill(rng, p[:64])
					modified[uint32(len(server))] = true
				}
				server = append(server, p)
			}
			highest = max(highest, len(server))
		}
		grow(rng.IntN(40), true, map[uint32]bool{})
		restored := bytes.Join(server, nil)
		for step := 0; step < 6; step++ {
			modified := map[uint32]bool{}
			for op := 0; op < 8; op++ {
				switch k := rng.IntN(5); {
				case k <= 1 && len(server) > 0: // write a block
					b := rng.IntN(len(server))
					server[b] = bytes.Clone(server[b])
					fill(rng, server[b][:64])
					modified[uint32(b)] = true
				case k == 2: // extend, WAL-logged
					grow(1+rng.IntN(5), true, modified)
				case k == 3 && len(server) == highest: // extend with zero pages, not logged
					grow(1+rng.IntN(3), false, modified)
				case k == 4 && len(server) > 0: // VACUUM truncates
					n := rng.IntN(len(server))
					server = server[:n]
					for b := range modified {
						if int(b) >= n {
							delete(modified, b)
						}
					}
				}
			}
			blocks := map[uint32][]byte{}
			for b := range modified {
				blocks[b] = server[b]
			}
			restored = applyBytes(t, restored, incrementalFile(uint32(len(server)), blocks), 1+rng.IntN(4))
			if want := bytes.Join(server, nil); !bytes.Equal(restored, want) {
				t.Fatalf("run %d step %d: rebuilt %q, the server has %q", run, step, tags(restored), tags(want))
			}
		}
	}
}

func fill(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(1 + rng.IntN(255))
	}
}

func TestStripIncrementalLabel(t *testing.T) {
	in := "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nCHECKPOINT LOCATION: 0/6000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-06 05:00:00 UTC\nLABEL: synbak\nSTART TIMELINE: 1\nINCREMENTAL FROM LSN: 0/4000028\nINCREMENTAL FROM TLI: 1\n"
	want := "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nCHECKPOINT LOCATION: 0/6000080\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-06 05:00:00 UTC\nLABEL: synbak\nSTART TIMELINE: 1\n"
	if got := string(stripIncrementalLabel([]byte(in))); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := string(stripIncrementalLabel([]byte(want))); got != want {
		t.Errorf("a full backup's label changed: %q", got)
	}
}

func TestIsIncremental(t *testing.T) {
	for in, want := range map[string]string{
		"base/5/INCREMENTAL.16384":       "base/5/16384",
		"INCREMENTAL.16384_fsm":          "16384_fsm",
		"PG_17_1/5/INCREMENTAL.16390.1":  "PG_17_1/5/16390.1",
		"base/5/16384":                   "",
		"base/INCREMENTAL./x":            "",
		"global/INCREMENTAL.":            "",
		"base/5/NOTINCREMENTAL.16384":    "",
		"pg_tblspc/16385/INCREMENTAL.12": "pg_tblspc/16385/12",
	} {
		got, ok := isIncremental(in)
		if ok != (want != "") || (ok && got != want) {
			t.Errorf("isIncremental(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
