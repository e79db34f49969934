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

func (s *BackupSchedule) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
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
	for {
		last, err := s.refresh(ctx)
		if err != nil {
			return err
		}
		next := s.now()
		if last != nil {
			if s.Interval <= 0 {
				s.mu.Lock()
				s.status.Next = time.Time{}
				s.mu.Unlock()
				<-ctx.Done()
				return nil
			}
			next = last.EndTime.Add(s.Interval)
		}
		s.mu.Lock()
		s.status.Next = next
		s.mu.Unlock()
		if wait := next.Sub(s.now()); wait > 0 {
			s.Log.Info("next base backup", "at", next.UTC().Format(time.RFC3339))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		s.mu.Lock()
		s.status.Running = true
		s.mu.Unlock()
		s.Log.Info("taking a base backup")
		b, err := s.Take(ctx)
		s.mu.Lock()
		s.status.Running = false
		if err != nil && ctx.Err() == nil {
			s.status.LastError = err.Error()
		} else if err == nil {
			s.status.LastError = ""
		}
		s.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("base backup: %w", err)
		}
		s.Log.Info("base backup done", "id", b.ID, "size", b.Size(), "seconds", b.EndTime.Sub(b.StartTime).Seconds())
		s.mu.Lock()
		s.status.Taken++
		s.mu.Unlock()
		if s.AfterBackup != nil {
			msg := s.AfterBackup(ctx, b)
			s.mu.Lock()
			s.status.LastPrune = msg
			s.mu.Unlock()
		}
	}
}
