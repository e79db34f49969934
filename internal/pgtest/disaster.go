package pgtest

import (
	"os"
	"testing"
)

// LoseHost plays the loss of the database host: SIGKILL to the postmaster's
// whole process group (no shutdown checkpoint, no walsender goodbye), then
// its data directory is moved away (to DataDir+".lost", removed at cleanup)
// so that nothing can start from it again. DataDir is left naming the
// missing directory.
func (c *Cluster) LoseHost(t testing.TB) {
	t.Helper()
	if err := c.kill(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := os.Rename(c.DataDir, c.DataDir+".lost"); err != nil {
		t.Fatalf("pgtest: move the data directory away: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(c.DataDir + ".lost") })
}
