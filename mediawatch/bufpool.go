package mediawatch

import (
	"context"
	"math/bits"
	"sync"
)

// minBufClass is the smallest buffer class: most media files (thumbnails,
// small images) fit.
const minBufClass = 16 << 10

// bufPool hands out the buffers of the copy workers' in-memory copies. At
// most budget bytes of buffers exist at once, in use or kept free, however
// many workers there are: get waits for room, tryGet gives up. A buffer for
// n bytes has the smallest power-of-two class (from minBufClass) that holds
// them; free buffers of other classes are given up to make room. drop gives
// up every free buffer (after bulk work, so that an idle agent holds none).
//
// Unlike a sync.Pool, what it holds does not depend on the garbage
// collector's timing: while workers copy, memory stays at most budget; once
// they stop, drop leaves nothing behind.
type bufPool struct {
	budget int64

	mu        sync.Mutex
	allocated int64      // bytes of buffers in use or free
	free      [][][]byte // by class index
	freeBytes int64
	// changed is closed (and replaced) whenever a buffer is given back.
	changed chan struct{}
}

func newBufPool(budget int64) *bufPool {
	return &bufPool{budget: budget, changed: make(chan struct{})}
}

// class returns the class index and capacity of a buffer for n bytes.
func bufClass(n int) (int, int) {
	if n <= minBufClass {
		return 0, minBufClass
	}
	c := bits.Len(uint(n-1)) - bits.Len(uint(minBufClass-1))
	return c, minBufClass << c
}

// get returns a buffer of length n, waiting while the budget is used up;
// n must not exceed the budget. A buffer's capacity is its class plus one
// byte: a file of the class's size and the byte more that tells it grew.
func (p *bufPool) get(ctx context.Context, n int) ([]byte, error) {
	for {
		b, wait := p.take(n)
		if b != nil {
			return b, nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tryGet returns a buffer of length n, or nil when the budget is used up.
func (p *bufPool) tryGet(n int) []byte {
	b, _ := p.take(n)
	return b
}

// take returns a buffer of length n, or nil and a channel closed when
// another buffer is given back.
func (p *bufPool) take(n int) ([]byte, <-chan struct{}) {
	c, size := bufClass(max(n-1, 1))
	p.mu.Lock()
	defer p.mu.Unlock()
	if c < len(p.free) {
		if f := p.free[c]; len(f) > 0 {
			b := f[len(f)-1]
			f[len(f)-1] = nil
			p.free[c] = f[:len(f)-1]
			p.freeBytes -= int64(size)
			return b[:n], nil
		}
	}
	// Make room by giving up free buffers of other classes.
	for i := len(p.free) - 1; i >= 0 && p.allocated+int64(size) > p.budget && p.freeBytes > 0; i-- {
		for len(p.free[i]) > 0 && p.allocated+int64(size) > p.budget {
			f := p.free[i]
			b := f[len(f)-1]
			f[len(f)-1] = nil
			p.free[i] = f[:len(f)-1]
			_, bs := bufClass(cap(b) - 1)
			p.freeBytes -= int64(bs)
			p.allocated -= int64(bs)
		}
	}
	if p.allocated+int64(size) > p.budget {
		return nil, p.changed
	}
	p.allocated += int64(size)
	return make([]byte, n, size+1), nil
}

// put gives b (from get or tryGet) back.
func (p *bufPool) put(b []byte) {
	c, size := bufClass(cap(b) - 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if size+1 != cap(b) {
		// Not one of ours: forget it.
		return
	}
	for len(p.free) <= c {
		p.free = append(p.free, nil)
	}
	p.free[c] = append(p.free[c], b[:0])
	p.freeBytes += int64(size)
	close(p.changed)
	p.changed = make(chan struct{})
}

// drop gives up every free buffer.
func (p *bufPool) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.free)
	p.free = nil
	p.allocated -= p.freeBytes
	p.freeBytes = 0
}

// usage returns the bytes of buffers in use or free, and of those free.
func (p *bufPool) usage() (allocated, free int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.allocated, p.freeBytes
}
