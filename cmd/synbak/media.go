package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/mediawatch"
)

func newMediaCommand(st *rootState) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "media",
		Short: "Media store commands",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "sync",
		Short: "One full pass over the media store (the initial backup of an existing store)",
		Long: `media sync scans local_content, and local_thumbnails unless dynamic_thumbnails
is on, under homeserver.yaml's media_store_path, copies every file that is not
in the repository yet (in parallel; files still being written are copied once
they are complete), records files that disappeared as deleted (their copies
stay in the repository), and returns when all of it is durable.
remote_content, remote_thumbnail, url_cache and url_cache_thumbnails are never
copied. It is safe to run while the agent runs.

On a terminal it shows a progress line, otherwise a log line every 10 seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runMediaSync(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	})
	return cmd
}

// mediaOptions are the media watcher's options from media.* and
// homeserver.yaml.
func mediaOptions(cfg *config.Config, hs *synapse.Homeserver, log *slog.Logger) mediawatch.Options {
	opts := mediawatch.Options{
		DynamicThumbnails: hs.DynamicThumbnails, Workers: 32, Logger: log,
		ScanInterval: cfg.Media.ScanInterval.D(), QuietPeriod: cfg.Media.QuietPeriod.D(),
	}
	switch cfg.Media.Thumbnails {
	case "always":
		opts.Trees = []string{mediawatch.LocalContent, mediawatch.LocalThumbnails}
	case "never":
		opts.Trees = []string{mediawatch.LocalContent}
	}
	return opts
}

func runMediaSync(ctx context.Context, cfg *config.Config, stdout io.Writer) error {
	log := newLogger(cfg, os.Stderr)
	hs, err := loadHomeserver(cfg)
	if err != nil {
		return err
	}
	r, err := openRepo(ctx, cfg, true)
	if err != nil {
		return err
	}
	start := time.Now()
	st, err := syncMediaStore(ctx, cfg, hs, r, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "media sync of %s: %d files scanned, %d added (%s, %d uploaded, %d already in the repository), %d deleted, in %s\n",
		hs.MediaStorePath, st.Scanned, st.Added, humanBytes(st.Bytes), st.Uploaded, st.Deduplicated, st.Deleted, time.Since(start).Round(time.Millisecond))
	return nil
}

// mediaSummary is the closing line of a media sync on standard error.
func mediaSummary(store string, st mediawatch.Stats) string {
	return fmt.Sprintf("media sync of %s: %d files scanned, %d added (%s), %d deleted", store, st.Scanned, st.Added, humanBytes(st.Bytes), st.Deleted)
}

// mediaWatched is the dump fact for dumps the agent takes: its media
// watcher keeps the repository's media current.
func mediaWatched(cfg *config.Config) string {
	if !cfg.Media.Enabled {
		return "not synced (media.enabled is false)"
	}
	return "watched"
}

// syncMediaStore runs one full media sync pass (`media sync`, and `dump`
// before it dumps), with a progress line on a terminal.
func syncMediaStore(ctx context.Context, cfg *config.Config, hs *synapse.Homeserver, r *repo.Repo, log *slog.Logger) (mediawatch.Stats, error) {
	opts := mediaOptions(cfg, hs, log)
	if src, err := postgresSource(cfg, hs); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		db, err := mediawatch.OpenDBLengths(cctx, src.ConnString)
		cancel()
		if err != nil {
			log.Warn("database unreachable: recently written files are copied after the quiet period alone", "err", err)
		} else {
			defer db.Close(context.WithoutCancel(ctx))
			opts.Lengths = db
		}
	}
	p := newMediaProgress(os.Stderr, log)
	opts.Progress = p.update
	st, err := mediawatch.Sync(ctx, r, hs.MediaStorePath, opts)
	p.finish()
	if err != nil {
		return st, fmt.Errorf("media sync of %s: %w", hs.MediaStorePath, err)
	}
	return st, nil
}

// mediaProgress draws a progress line on a terminal, or logs every 10 s.
type mediaProgress struct {
	w       *os.File
	log     *slog.Logger
	tty     bool
	last    time.Time
	drawn   bool
	started time.Time
}

func newMediaProgress(w *os.File, log *slog.Logger) *mediaProgress {
	tty := isTerminal(w)
	return &mediaProgress{w: w, log: log, tty: tty, started: time.Now()}
}

func (p *mediaProgress) update(st mediawatch.Stats) {
	now := time.Now()
	if p.tty {
		rate := float64(st.Added) / max(now.Sub(p.started).Seconds(), 0.001)
		stderrConsole.Draw(fmt.Sprintf("media: %d scanned%s, %d added (%s, %.0f files/s), %d pending, %d deleted",
			st.Scanned, map[bool]string{false: " (scanning)", true: ""}[st.ScanDone], st.Added, humanBytes(st.Bytes), rate, st.Pending, st.Deleted))
		p.drawn = true
		return
	}
	if now.Sub(p.last) >= 10*time.Second {
		p.last = now
		p.log.Info("media sync progress", "scanned", st.Scanned, "scan_done", st.ScanDone, "added", st.Added, "bytes", st.Bytes, "pending", st.Pending, "deleted", st.Deleted)
	}
}

func (p *mediaProgress) finish() {
	if p.drawn {
		stderrConsole.Done()
	}
}
