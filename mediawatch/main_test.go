package mediawatch

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: every
// goroutine a Watcher or Sync starts is joined before it returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
