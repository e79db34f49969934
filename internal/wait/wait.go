// Package wait is the tests' one way to wait for a condition: poll it,
// never sleep for a guessed time. Tests only.
package wait

import (
	"testing"
	"time"
)

// Interval is how often For polls.
const Interval = 20 * time.Millisecond

// For polls cond every Interval until it holds, and fails the test (naming
// what it waited for) when timeout passes first.
func For(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(Interval)
	}
}
