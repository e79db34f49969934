package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo"
)

// BackupStatus is what the schedule knows about base backups.
type BackupStatus struct {
	// Count is the number of complete backups in the repository.
	Count int `json:"count"`
	// LastID, LastEnd, LastDuration and LastSize describe the newest
	// complete backup (taken by this agent or not).
	LastID       string    `json:"last_id,omitempty"`
	LastEnd      time.Time `json:"last_end,omitzero"`
	LastDuration float64   `json:"last_duration_seconds"`
	LastSize     int64     `json:"last_size_bytes"`
	// Next is when the next backup is due; Running is true while one runs.
	Next    time.Time `json:"next,omitzero"`
	Running bool      `json:"running"`
	// LastError is the newest failure's message, cleared by a success.
	LastError string `json:"last_error,omitempty"`
	// Taken counts the backups this agent took.
	Taken int `json:"taken"`
	// LastPrune says what the retention policy did after the newest one.
	LastPrune string `json:"last_prune,omitempty"`
}

// BackupSchedule takes a base backup when none exists and then every
// Interval after the newest one ended. A failed backup is returned as an
// error, so that the supervisor reports it and retries with backoff.
type BackupSchedule struct {
	Repo *repo.Repo
	// Interval between backups; 0 takes only the first one.
	Interval time.Duration
	// Take takes one backup (cmd opens the replication connection).
	Take func(ctx context.Context) (*basebackup.Backup, error)
	Log  *slog.Logger
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// AfterBackup, when set, runs after each successful backup (retention);
	// what it returns is reported as LastPrune.
	AfterBackup func(ctx context.Context, b *basebackup.Backup) string

	mu     sync.Mutex
	status BackupStatus
}

// Status returns a snapshot.
func (s *BackupSchedule) Status() BackupStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// refresh reads the newest complete backup from the repository.
func (s *BackupSchedule) refresh(ctx context.Context) (*basebackup.Backup, error) {
	bs, err := basebackup.List(ctx, s.Repo)
	if err != nil {
		return nil, fmt.Errorf("list base backups: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Count = len(bs)
	if len(bs) == 0 {
		return nil, nil
	}
	b := bs[len(bs)-1]
	s.status.LastID, s.status.LastEnd = b.ID, b.EndTime
	s.status.LastDuration = b.EndTime.Sub(b.StartTime).Seconds()
	s.status.LastSize = b.Size()
	return &b, nil
}

// Run is the schedule's loop.
func (s *BackupSchedule) Run(ctx context.Context) error {
	var last *basebackup.Backup // the one just taken, for AfterBackup
	return periodic{
		what: "base backup", interval: s.Interval, log: s.Log, now: clock(s.Now),
		newest: func(ctx context.Context) (time.Time, bool, error) {
			b, err := s.refresh(ctx)
			if err != nil || b == nil {
				return time.Time{}, false, err
			}
			return b.EndTime, true, nil
		},
		take: func(ctx context.Context) ([]any, error) {
			b, err := s.Take(ctx)
			if err != nil {
				return nil, err
			}
			last = b
			return []any{"id", b.ID, "kind", b.KindName(), "parent", b.Parent, "size", b.Size(), "seconds", b.EndTime.Sub(b.StartTime).Seconds()}, nil
		},
		afterTake: func(ctx context.Context) {
			if s.AfterBackup == nil {
				return
			}
			msg := s.AfterBackup(ctx, last)
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
