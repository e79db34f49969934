package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DrillResult is one restore drill's outcome.
type DrillResult struct {
	OK       bool
	Problems []string
	// Seconds is the measured recovery time.
	Seconds float64
}

// DrillStatus is what the drill schedule knows.
type DrillStatus struct {
	Runs         int       `json:"runs"`
	LastRun      time.Time `json:"last_run,omitzero"`
	LastOK       bool      `json:"last_ok"`
	LastSuccess  time.Time `json:"last_success,omitzero"`
	LastDuration float64   `json:"last_duration_seconds"`
	LastProblems []string  `json:"last_problems,omitempty"`
	Running      bool      `json:"running"`
}

// DrillSchedule runs a restore drill every Interval (the first one an
// Interval after the agent starts, so that a restarting agent does not
// drill at every start).
type DrillSchedule struct {
	Interval time.Duration
	// Drill runs one drill; an error means it could not run at all.
	Drill func(ctx context.Context) (DrillResult, error)
	Log   *slog.Logger
	// OnFailure is called after each failed drill (the agent counts it in
	// synbak_component_errors_total{component="drill"}).
	OnFailure func()

	mu     sync.Mutex
	status DrillStatus
}

// Status returns a snapshot.
func (d *DrillSchedule) Status() DrillStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.status
	s.LastProblems = append([]string(nil), s.LastProblems...)
	return s
}

// Run is the schedule's loop.
func (d *DrillSchedule) Run(ctx context.Context) error {
	for {
		t := time.NewTimer(d.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		d.mu.Lock()
		d.status.Running = true
		d.mu.Unlock()
		d.Log.Info("restore drill starting")
		res, err := d.Drill(ctx)
		if ctx.Err() != nil {
			return nil
		}
		d.mu.Lock()
		d.status.Running = false
		d.status.Runs++
		d.status.LastRun = time.Now()
		if err != nil {
			res = DrillResult{Problems: []string{err.Error()}}
		}
		d.status.LastOK, d.status.LastProblems, d.status.LastDuration = res.OK, res.Problems, res.Seconds
		if res.OK {
			d.status.LastSuccess = time.Now()
		}
		d.mu.Unlock()
		if res.OK {
			d.Log.Info("restore drill passed", "rto_seconds", res.Seconds)
		} else {
			d.Log.Error("restore drill FAILED", "problems", res.Problems)
			if d.OnFailure != nil {
				d.OnFailure()
			}
		}
	}
}
