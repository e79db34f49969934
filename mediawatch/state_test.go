package mediawatch

import (
	"fmt"
	"testing"
	"time"
)

// TestStateArena: the state's paths and entries come from a few blocks,
// not one allocation each, and hold what was recorded.
func TestStateArena(t *testing.T) {
	const n = 10000
	evs := make([]Event, n)
	for i := range evs {
		evs[i] = Event{Path: fmt.Sprintf("local_thumbnails/ab/cd/%020d/32-32-image-png-crop", i), Event: Added,
			SHA256: fmt.Sprintf("%064x", i), Size: int64(i), MTime: time.Unix(int64(i), 0)}
	}
	var state map[string]*entry
	allocs := testing.AllocsPerRun(1, func() {
		state = make(map[string]*entry, n)
		var a stateArena
		for _, ev := range evs {
			applyEvent(state, &a, ev)
		}
	})
	// Path bytes: n×52/64 KiB blocks; entries: n/1024 blocks; the map's
	// own tables. One allocation per path would be 2n.
	if allocs > 100 {
		t.Errorf("%v allocations for %d paths, want a few blocks", allocs, n)
	}
	if len(state) != n {
		t.Fatalf("%d paths, want %d", len(state), n)
	}
	for i, ev := range evs {
		st := state[ev.Path]
		if st == nil || st.size != int64(i) || st.mtime != ev.MTime.UnixNano() || fmt.Sprintf("%x", st.sha) != ev.SHA256 {
			t.Fatalf("state of %s: %+v", ev.Path, st)
		}
	}
	// Keys do not alias the caller's bytes.
	b := []byte("local_content/ab/cd/efghijklmnopqrstuvwxyz")
	var a stateArena
	k := a.name(string(b))
	b[0] = 'X'
	if k != "local_content/ab/cd/efghijklmnopqrstuvwxyz" {
		t.Errorf("arena name changed with its source: %q", k)
	}
}
