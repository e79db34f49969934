package wait

import (
	"strings"
	"testing"
	"time"
)

type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = format
	panic(r)
}

func TestForPollsUntilTheCondition(t *testing.T) {
	n := 0
	For(t, 5*time.Second, "three polls", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("polled %d times", n)
	}
}

func TestForFailsAfterTheTimeout(t *testing.T) {
	r := &recorder{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if p := recover(); p != r {
				t.Fatalf("For did not fail the test (%v)", p)
			}
		}()
		For(r, 100*time.Millisecond, "never", func() bool { return false })
	}()
	if el := time.Since(start); el < 100*time.Millisecond || !strings.Contains(r.failed, "waiting for") {
		t.Errorf("failed after %s with %q", el, r.failed)
	}
}
