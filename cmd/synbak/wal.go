package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/shutdown"
	"github.com/synbak/synbak/wal"
)

func newWALCommand(st *rootState) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "WAL archive commands",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "stream",
		Short: "Stream WAL into the repository in the foreground (the agent's WAL receiver alone)",
		Long: `wal stream connects to PostgreSQL over the physical replication protocol through
the replication slot postgres.slot (created with RESERVE_WAL if missing),
writes WAL to a durable spool under state_dir, reports it flushed only after
fsync, and stores every completed segment (and, every wal.partial_interval,
the open one) in the repository. It runs until interrupted (SIGINT/SIGTERM),
reconnecting after transient errors.

It holds the spool (and its lock) for its whole life: when the connection
drops, or the server cannot be reached at start, it stores the spool's open
segment as a partial object at once and uploads the finished segments left
in the spool, so that what PostgreSQL was told is flushed reaches the
repository even if the server never comes back. SIGTERM stores the open
segment whatever the connection state. A synbak backup started meanwhile
leaves the WAL to it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runWALStream(cmd.Context(), cfg)
		},
	})
	return cmd
}

func walOptions(cfg *config.Config) wal.Options {
	return wal.Options{
		Slot:            cfg.Postgres.Slot,
		SpoolDir:        filepath.Join(cfg.StateDir, "wal"),
		StatusInterval:  cfg.WAL.StatusInterval.D(),
		Synchronous:     cfg.WAL.Synchronous,
		PartialInterval: cfg.WAL.PartialInterval.D(),
	}
}

func runWALStream(ctx context.Context, cfg *config.Config) error {
	log := newLogger(cfg, os.Stderr)
	src, err := postgresSource(cfg, nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir %s: %w", cfg.StateDir, err)
	}
	r, err := openRepo(ctx, cfg, true)
	if err != nil {
		return err
	}
	rcv := wal.NewReceiver(src, r, walOptions(cfg), log)
	// After SIGTERM the receiver stores what it can of the spool within
	// shutdown_timeout; what is left is fsynced and stored at the next start.
	ctx, release := shutdown.WithBudget(ctx, cfg.ShutdownTimeout.D())
	defer release()
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				st := rcv.Status()
				log.Info("WAL progress", "timeline", st.Timeline, "received", st.Received.String(), "flushed", st.Flushed.String(), "archived", st.Archived.String(), "streaming", st.Streaming)
			}
		}
	}()
	return rcv.Run(ctx)
}
