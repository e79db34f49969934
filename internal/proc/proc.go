// Package proc starts child processes that die with synbak.
//
// SysProcAttr.Pdeathsig makes the kernel signal a child when its parent
// goes away — but "parent" is the OS thread that forked it, and Go retires
// idle threads, so a child started from an arbitrary goroutine can be
// killed at a random moment (go.dev/issue/27505). Start forks from a locked
// thread that lives exactly as long as the child.
package proc

import (
	"os/exec"
	"runtime"
)

// Start starts cmd (with whatever SysProcAttr the caller set) from a
// locked thread that lives until cmd exits, and waits for it there. done is
// closed once cmd has exited and been reaped; cmd.ProcessState is set then.
func Start(cmd *exec.Cmd) (done <-chan struct{}, err error) {
	ch := make(chan struct{})
	started := make(chan error)
	go func() {
		defer close(ch)
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return ch, nil
}
