package proc

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

func TestStartWaitsOnItsOwnThread(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done, err := Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	// Idle threads may be retired meanwhile; the child's fate must not
	// depend on it.
	runtime.GC()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("done not closed after the child exited")
	}
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 3 {
		t.Errorf("process state %v, want exit code 3", cmd.ProcessState)
	}
}

func TestStartError(t *testing.T) {
	if _, err := Start(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}
