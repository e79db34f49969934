package benchpg

import (
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"
)

// Measured is what RunMeasured saw of a process.
type Measured struct {
	// Wall is the elapsed time in seconds; CPU the process's user + system
	// time, its waited-for children included; RSSMB its peak resident set
	// (VmHWM, sampled every 20 ms: children not included).
	Wall, CPU, RSSMB float64
}

// RunMeasured starts cmd, samples its peak RSS until it exits, and
// returns what it measured (and cmd.Wait's error).
func RunMeasured(cmd *exec.Cmd) (Measured, error) {
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Measured{}, err
	}
	var hwm atomic.Int64
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := VmHWM(cmd.Process.Pid); kb > hwm.Load() {
				hwm.Store(kb)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	err := cmd.Wait()
	m := Measured{Wall: time.Since(start).Seconds()}
	close(done)
	if err != nil {
		return m, err
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	m.CPU = tv(ru.Utime) + tv(ru.Stime)
	m.RSSMB = float64(hwm.Load()) / 1024
	return m, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
