package shutdown

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ended reports whether c ends within d.
func ended(c context.Context, d time.Duration) bool {
	select {
	case <-c.Done():
		return true
	case <-time.After(d):
		return false
	}
}

func TestGraceOutlivesTheContextByTheBudget(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	bctx, release := WithBudget(ctx, 300*time.Millisecond)
	defer release()
	g, gcancel := Grace(bctx, time.Hour)
	defer gcancel()
	if ended(g, 100*time.Millisecond) {
		t.Fatal("the grace ended before the context was cancelled")
	}
	cancel()
	start := time.Now()
	if ended(g, 100*time.Millisecond) {
		t.Fatal("the grace ended with the context, not after its budget")
	}
	if !ended(g, 2*time.Second) {
		t.Fatal("the grace did not end after its budget")
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("the grace ended %s after the cancellation, before its 300ms budget", el)
	}
}

func TestBudgetsNest(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	outer, release := WithBudget(ctx, 200*time.Millisecond)
	defer release()
	// An inner budget longer than the outer one ends with the outer.
	inner, irelease := WithBudget(outer, time.Hour)
	defer irelease()
	g, gcancel := Grace(inner, time.Hour)
	defer gcancel()
	// A shorter one ends first.
	short, srelease := WithBudget(outer, 10*time.Millisecond)
	defer srelease()
	sg, sgcancel := Grace(short, time.Hour)
	defer sgcancel()
	cancel()
	if !ended(sg, 150*time.Millisecond) {
		t.Fatal("the shorter inner budget did not end first")
	}
	if g.Err() != nil {
		t.Fatal("the longer inner budget ended before the outer one")
	}
	if !ended(g, 2*time.Second) {
		t.Fatal("an inner budget outlived the outer one")
	}
}

func TestGraceFallbackAndRelease(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g, gcancel := Grace(ctx, 50*time.Millisecond)
	defer gcancel()
	cancel()
	if !ended(g, 2*time.Second) {
		t.Fatal("without a budget, the grace did not end after the fallback")
	}

	// Release ends the grace at once, cancelled or not.
	bctx, release := WithBudget(context.Background(), time.Hour)
	g2, g2cancel := Grace(bctx, time.Hour)
	defer g2cancel()
	release()
	if !ended(g2, time.Second) {
		t.Fatal("release did not end the grace")
	}
}
