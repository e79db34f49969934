package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
)

// DumpStatus is what the schedule knows about logical dumps.
type DumpStatus struct {
	// Count is the number of complete dumps in the repository.
	Count int `json:"count"`
	// LastID, LastEnd, LastDuration, LastSize (pg_dump's output) and
	// LastStoredSize describe the newest complete dump (taken by this
	// agent or not).
	LastID         string    `json:"last_id,omitempty"`
	LastEnd        time.Time `json:"last_end,omitzero"`
	LastDuration   float64   `json:"last_duration_seconds"`
	LastSize       int64     `json:"last_size_bytes"`
	LastStoredSize int64     `json:"last_stored_size_bytes"`
	// Interval is dump.interval.
	Interval float64 `json:"interval_seconds"`
	// Next is when the next dump is due; Running is true while one runs.
	Next    time.Time `json:"next,omitzero"`
	Running bool      `json:"running"`
	// LastError is the newest failure's message, cleared by a success.
	LastError string `json:"last_error,omitempty"`
	// Taken counts the dumps this agent took.
	Taken int `json:"taken"`
	// LastPrune says what the retention policy did after the newest one.
	LastPrune string `json:"last_prune,omitempty"`
}

// DumpSchedule takes a logical dump when none exists (or the newest ended
// more than Interval ago) and then every Interval after the newest one
// ended. A failed dump is returned as an error, so that the supervisor
// reports it and retries with backoff.
type DumpSchedule struct {
	Repo *repo.Repo
	// Interval between dumps (> 0; cmd adds no schedule for 0).
	Interval time.Duration
	// Take takes one dump (cmd runs pg_dump).
	Take func(ctx context.Context) (dump.Dump, error)
	Log  *slog.Logger
	// Now is the clock and After the timer (tests); nil means time.Now
	// and a time.Timer.
	Now   func() time.Time
	After func(d time.Duration) <-chan time.Time
	// AfterDump, when set, runs after each successful dump (retention);
	// what it returns is reported as LastPrune.
	AfterDump func(ctx context.Context, d dump.Dump) string

	mu     sync.Mutex
	status DumpStatus
}

// Status returns a snapshot.
func (s *DumpSchedule) Status() DumpStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Interval = s.Interval.Seconds()
	return st
}

// refresh reads the newest complete dump from the repository.
func (s *DumpSchedule) refresh(ctx context.Context) (*dump.Dump, error) {
	ds, err := dump.List(ctx, s.Repo)
	if err != nil {
		return nil, fmt.Errorf("list dumps: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Count = len(ds)
	if len(ds) == 0 {
		return nil, nil
	}
	d := ds[len(ds)-1]
	s.status.LastID, s.status.LastEnd = d.ID, d.EndTime
	s.status.LastDuration = d.EndTime.Sub(d.StartTime).Seconds()
	s.status.LastSize, s.status.LastStoredSize = d.Size(), d.StoredSize()
	return &d, nil
}

// Run is the schedule's loop.
func (s *DumpSchedule) Run(ctx context.Context) error {
	if s.Interval <= 0 {
		return fmt.Errorf("dump schedule: interval %s must be positive", s.Interval)
	}
	var last dump.Dump // the one just taken, for AfterDump
	return periodic{
		what: "dump", interval: s.Interval, log: s.Log, now: clock(s.Now), after: s.After,
		newest: func(ctx context.Context) (time.Time, bool, error) {
			d, err := s.refresh(ctx)
			if err != nil || d == nil {
				return time.Time{}, false, err
			}
			return d.EndTime, true, nil
		},
		take: func(ctx context.Context) ([]any, error) {
			d, err := s.Take(ctx)
			if err != nil {
				return nil, err
			}
			last = d
			return []any{"id", d.ID, "size", d.Size(), "stored_size", d.StoredSize(), "seconds", d.EndTime.Sub(d.StartTime).Seconds()}, nil
		},
		afterTake: func(ctx context.Context) {
			if s.AfterDump == nil {
				return
			}
			msg := s.AfterDump(ctx, last)
			s.mu.Lock()
			s.status.LastPrune = msg
			s.mu.Unlock()
		},
		update: func(f func(*scheduleState)) {
			s.mu.Lock()
			defer s.mu.Unlock()
			st := scheduleState{Next: s.status.Next, Running: s.status.Running, LastError: s.status.LastError, Taken: s.status.Taken}
			f(&st)
			s.status.Next, s.status.Running, s.status.LastError, s.status.Taken = st.Next, st.Running, st.LastError, st.Taken
		},
	}.run(ctx)
}

// dumpSlack is added to twice the interval before a missing dump is a
// problem (at least; a dump that took longer adds its duration instead).
const dumpSlack = time.Hour

// dumpProblems returns the health problems of the dump schedule: the
// last attempt failed, or no dump ended within 2×Interval plus slack
// (since the newest dump's end, or since the agent started when there is
// none).
func dumpProblems(d DumpStatus, interval time.Duration, started, now time.Time) []string {
	var out []string
	slack := max(dumpSlack, time.Duration(d.LastDuration*float64(time.Second)))
	limit := 2*interval + slack
	switch {
	case d.Count == 0 && now.Sub(started) > limit:
		out = append(out, fmt.Sprintf("dumps: none complete although the agent started %s ago (dump.interval %s)", now.Sub(started).Round(time.Second), interval))
	case d.Count > 0 && now.Sub(d.LastEnd) > limit:
		out = append(out, fmt.Sprintf("dumps: the newest (%s) ended %s ago, more than twice dump.interval (%s) plus %s", d.LastID, now.Sub(d.LastEnd).Round(time.Second), interval, slack.Round(time.Second)))
	}
	if d.LastError != "" {
		out = append(out, "dumps: the last dump failed: "+d.LastError)
	}
	return out
}
