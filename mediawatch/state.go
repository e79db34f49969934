package mediawatch

import "unsafe"

// Blocks of the state arena: 64 KiB of path bytes, 1024 entries (56 KiB).
const (
	nameBlock  = 64 << 10
	entryBlock = 1024
)

// stateArena carves the engine's per-path state, the paths' bytes (the
// state map's keys) and their entries, out of large blocks. A path then
// costs its length and an entry exactly its size, with no allocation of its
// own: before, each was a small object of a rounded-up size class, and the
// paths, allocated by the scan among its short-lived garbage, kept the heap
// spans they shared with it alive (at 100,000 files the heap in use was
// almost twice the live state). Paths and entries are never freed one by
// one (a deleted path keeps its entry, marked deleted), so nothing is
// wasted until the state is rebuilt (reset).
type stateArena struct {
	names   []byte
	entries []entry
}

// name returns a copy of p in the arena. The bytes behind it are never
// written again.
func (a *stateArena) name(p string) string {
	if len(p) == 0 || len(p) > nameBlock/16 {
		return string([]byte(p)) // a copy, not a reference into a caller's buffer
	}
	if cap(a.names)-len(a.names) < len(p) {
		a.names = make([]byte, 0, nameBlock)
	}
	off := len(a.names)
	a.names = append(a.names, p...)
	return unsafe.String(&a.names[off], len(p))
}

// entry returns a new zero entry.
func (a *stateArena) entry() *entry {
	if len(a.entries) == cap(a.entries) {
		a.entries = make([]entry, 0, entryBlock)
	}
	a.entries = a.entries[:len(a.entries)+1]
	return &a.entries[len(a.entries)-1]
}

// reset starts new blocks: the old ones are freed with the map that
// points into them.
func (a *stateArena) reset() { *a = stateArena{} }
