// Package shutdown carries a stopping process's time budget down to its
// parts, so that the budgets nest: the outermost owner (the agent, `wal
// stream`) gives its parts a budget shorter than its own wait, and a part
// gives the steps of its own shutdown (a final status update, draining an
// upload queue) what is left of it, never more.
//
// A part's Run(ctx) stops taking new work when ctx is cancelled; the work
// that makes stopping clean runs under Grace(ctx), which is not cancelled
// with ctx but ends when the budget is spent.
package shutdown

import (
	"context"
	"sync"
	"time"
)

type graceKey struct{}

// WithBudget returns a copy of ctx carrying a shutdown budget: the grace
// context that Grace returns for it ends budget after ctx is done, and not
// later than the grace of a budget ctx already carries (budgets nest). The
// returned release ends the grace at once and frees its timer; call it when
// the work ctx was given for has returned.
func WithBudget(ctx context.Context, budget time.Duration) (context.Context, context.CancelFunc) {
	g, release := newGrace(ctx, budget)
	return context.WithValue(ctx, graceKey{}, g), release
}

// Grace returns the context for the work that stops cleanly after ctx is
// cancelled: it ends when the budget ctx carries (WithBudget) is spent, or,
// when ctx carries none, fallback after ctx is done. The caller must call
// the returned cancel function.
func Grace(ctx context.Context, fallback time.Duration) (context.Context, context.CancelFunc) {
	if g, ok := ctx.Value(graceKey{}).(context.Context); ok {
		return context.WithCancel(g)
	}
	return newGrace(ctx, fallback)
}

// newGrace returns a context that ends d after ctx is done, or with the
// grace ctx already carries, whichever comes first.
func newGrace(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	parent := context.WithoutCancel(ctx)
	if g, ok := ctx.Value(graceKey{}).(context.Context); ok {
		parent = g
	}
	g, cancel := context.WithCancel(parent)
	var (
		mu       sync.Mutex
		timer    *time.Timer
		released bool
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			timer = time.AfterFunc(max(d, 0), cancel)
		}
	})
	return g, func() {
		stop()
		mu.Lock()
		released = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}
