package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

func newWALFetchCommand(st *rootState) *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "wal-fetch [--socket DIR] FILE DEST",
		Short: "PostgreSQL's restore_command: copy archived WAL file FILE to DEST",
		Long: `wal-fetch is what restore_command runs. It has two modes.

During 'synbak restore' and 'synbak drill' the restore serves the WAL itself:
it is the only reader of the repository, fetches (and prefetches along its
plan), verifies, decrypts and decompresses each file, and hands it over on a
Unix socket in the restored server's private socket directory. The restore
writes the restored server's restore_command for you:

  restore_command = '/usr/bin/synbak wal-fetch --socket /tmp/synbak-restore-123 %f %p'

With --socket, wal-fetch reads no configuration and never touches the
repository: it asks the restore serving DIR for FILE and writes it to DEST
(a temp file renamed into place). The server's OS user needs nothing but
this binary and the socket directory, which the restore gives it.

Standalone, for a server you recover from the archive yourself (a standby
built from the archive):

  restore_command = '/usr/bin/synbak -c /etc/synbak/restore.yaml wal-fetch %f %p'

it reads the repository named in the configuration directly (the server's OS
user then needs that configuration, the repository's credentials and, when
encrypted, the age identity), checks each file's checksum and writes it to
DEST atomically. At the end of the archive it serves the newest partial
segment under its plain name, zero-padded. It prefetches the next
wal.prefetch segments into state_dir/wal-fetch-cache.

Exit codes (PostgreSQL reads them): 0 fetched; 1 FILE is not in the archive
(the normal end of recovery); 255 anything else (corrupt object, unreadable
repository, bad configuration, the restore's socket unreachable), which makes
PostgreSQL stop recovery rather than promote early with data missing.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return withCode(255, fmt.Errorf("wal-fetch needs FILE and DEST (restore_command = 'synbak wal-fetch %%f %%p'), got %d arguments", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket != "" {
				return runWALFetchSocket(cmd.Context(), socket, args[0], args[1])
			}
			cfg, err := st.load()
			if err != nil {
				return withCode(255, err)
			}
			return runWALFetch(cmd.Context(), cfg, args[0], args[1])
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "ask the restore serving the WAL on its socket in DIR instead of reading the repository")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(255, err) })
	return cmd
}

// runWALFetchSocket is restore_command's client during a restore.
func runWALFetchSocket(ctx context.Context, dir, file, dest string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	if err := restore.FetchViaSocket(ctx, dir, file, dest); err != nil {
		if wal.IsNotFound(err) {
			return withCode(1, err)
		}
		return withCode(255, err)
	}
	return nil
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
