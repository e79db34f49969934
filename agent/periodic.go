package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// periodic is the loop BackupSchedule and DumpSchedule share: take one at
// once when none exists, then one Interval after the newest one ended
// (interval 0: only the first). A failure is returned, so that the
// supervisor reports it and restarts the loop with backoff.
type periodic struct {
	what     string        // "base backup", "dump": logs and errors
	interval time.Duration // 0: only when none exists
	log      *slog.Logger
	now      func() time.Time
	after    func(time.Duration) <-chan time.Time // nil: a time.Timer
	// newest reads the repository (and updates the status) and returns
	// when the newest one ended; ok is false when there is none.
	newest func(ctx context.Context) (end time.Time, ok bool, err error)
	// take takes one and returns what to log about it.
	take func(ctx context.Context) (attrs []any, err error)
	// afterTake runs after each success (retention).
	afterTake func(ctx context.Context)
	// update changes the status under the schedule's lock.
	update func(func(*scheduleState))
}

// scheduleState is the part of a schedule's status the loop maintains.
type scheduleState struct {
	Next      time.Time
	Running   bool
	LastError string
	Taken     int
}

func (p periodic) wait(ctx context.Context, d time.Duration) bool {
	var c <-chan time.Time
	if p.after != nil {
		c = p.after(d)
	} else {
		t := time.NewTimer(d)
		defer t.Stop()
		c = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-c:
		return true
	}
}

func (p periodic) run(ctx context.Context) error {
	for {
		end, ok, err := p.newest(ctx)
		if err != nil {
			return err
		}
		next := p.now()
		if ok {
			if p.interval <= 0 {
				p.update(func(s *scheduleState) { s.Next = time.Time{} })
				<-ctx.Done()
				return nil
			}
			next = end.Add(p.interval)
		}
		p.update(func(s *scheduleState) { s.Next = next })
		if wait := next.Sub(p.now()); wait > 0 {
			p.log.Info("next "+p.what, "at", next.UTC().Format(time.RFC3339))
			if !p.wait(ctx, wait) {
				return nil
			}
		}
		p.update(func(s *scheduleState) { s.Running = true })
		p.log.Info("taking a " + p.what)
		attrs, err := p.take(ctx)
		p.update(func(s *scheduleState) {
			s.Running = false
			switch {
			case err == nil:
				s.LastError = ""
				s.Taken++
			case ctx.Err() == nil:
				s.LastError = err.Error()
			}
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: %w", p.what, err)
		}
		p.log.Info(p.what+" done", attrs...)
		if p.afterTake != nil {
			p.afterTake(ctx)
		}
	}
}

// clock returns now, or time.Now when now is nil.
func clock(now func() time.Time) func() time.Time {
	if now != nil {
		return now
	}
	return time.Now
}
