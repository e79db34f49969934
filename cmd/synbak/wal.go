package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
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
				log.Info("WAL progress", "timeline", st.Timeline, "received", st.Received, "flushed", st.Flushed, "archived", st.Archived, "streaming", st.Streaming)
			}
		}
	}()
	return rcv.Run(ctx)
}

func newWALFetchCommand(st *rootState) *cobra.Command {
	return &cobra.Command{
		Use:   "wal-fetch FILE DEST",
		Short: "PostgreSQL's restore_command: copy archived WAL file FILE to DEST",
		Long: `wal-fetch is what restore_command runs:

  restore_command = '/usr/bin/synbak -c /etc/synbak/restore.yaml wal-fetch %f %p'

It fetches a segment or timeline history file from the repository, checks its
checksum and writes it to DEST atomically. At the end of the archive it serves
the newest partial segment under its plain name. It prefetches the next
wal.prefetch segments into state_dir/wal-fetch-cache.

Exit codes (PostgreSQL reads them): 0 fetched; 1 FILE is not in the archive
(the normal end of recovery); 255 anything else (corrupt object, unreadable
repository, bad configuration), which makes PostgreSQL stop recovery rather
than promote early with data missing.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return withCode(255, fmt.Errorf("wal-fetch needs FILE and DEST (restore_command = 'synbak wal-fetch %%f %%p'), got %d arguments", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := st.load()
			if err != nil {
				return withCode(255, err)
			}
			return runWALFetch(cmd.Context(), cfg, args[0], args[1])
		},
	}
}

func runWALFetch(ctx context.Context, cfg *config.Config, file, dest string) error {
	log := newLogger(cfg, os.Stderr)
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return withCode(255, err)
	}
	f, err := wal.NewFetcher(ctx, r, filepath.Join(cfg.StateDir, "wal-fetch-cache"), cfg.WAL.PrefetchSegments, log)
	if err != nil {
		return withCode(255, err)
	}
	if err := f.Fetch(ctx, file, dest); err != nil {
		if wal.IsNotFound(err) {
			return withCode(1, err)
		}
		return withCode(255, err)
	}
	return nil
}
