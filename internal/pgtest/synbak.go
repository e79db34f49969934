package pgtest

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// SynbakBinary builds cmd/synbak once per test binary into a directory the
// postgres OS user can traverse (PostgreSQL runs restore_command as that
// user), and returns its path. Inside `go test`, os.Executable is the test
// binary, so tests that need the real command use this.
func SynbakBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "synbak-bin")
		if err != nil {
			buildErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "synbak")
		buildOut, buildErr = exec.Command("go", "build", "-o", binPath, "github.com/synbak/synbak/cmd/synbak").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build synbak: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// Logger returns a debug-level logger writing to the test's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
