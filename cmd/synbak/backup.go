package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/wal"
)

func newBackupCommand(st *rootState) *cobra.Command {
	var full, incremental bool
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Take a base backup now",
		Long: `backup runs BASE_BACKUP over a replication connection and streams the data
directory, every tablespace and the backup manifest into the repository
(compressed with zstd, or as the server compressed them with
basebackup.server_compression), in parts of at most basebackup.part_size_mb.

A backup is complete, and usable by restore, only once the WAL from its start
to its end is archived in the repository too. While it runs, backup streams
WAL itself (like wal stream); when an agent or a wal stream already does so
for this state_dir, it leaves that to them. If the WAL does not arrive within
basebackup.wal_timeout the backup fails and is not listed as complete.

Full and incremental backups: on PostgreSQL 17 or later with summarize_wal
on, a backup can be incremental: only the blocks changed since its parent
(the newest complete backup) are read and stored, and a restore needs the
whole chain from the full backup it builds on. Without --full or
--incremental the agent's rule applies: incremental while the newest full
backup is younger than basebackup.full_interval (default 7d), full
otherwise. --incremental builds on the newest backup whatever its age;
--full takes a full backup. When the server cannot take an incremental
backup (an older server, summarize_wal off, the parent gone or on another
timeline, WAL summaries that no longer reach back to it) a full backup is
taken instead and the summary says why.

On a terminal it shows a progress bar, otherwise a log line every 10 seconds.
It prints the backup's id on standard output at the end.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if full && incremental {
				return usageError{errors.New("--full and --incremental exclude each other")}
			}
			cfg, err := st.load()
			if err != nil {
				return err
			}
			mode := basebackup.ModeAuto
			switch {
			case full:
				mode = basebackup.ModeFull
			case incremental:
				mode = basebackup.ModeIncremental
			}
			return runBackup(cmd.Context(), cfg, mode, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "take a full backup")
	cmd.Flags().BoolVar(&incremental, "incremental", false, "take an incremental backup on top of the newest one (PostgreSQL 17+, summarize_wal = on), whatever basebackup.full_interval says")
	return cmd
}

// chooseParent applies the full/incremental policy and logs its choice.
func chooseParent(ctx context.Context, r *repo.Repo, mode basebackup.Mode, cfg *config.Config, log *slog.Logger) (*basebackup.Backup, error) {
	parent, reason, err := basebackup.ChooseParent(ctx, r, mode, cfg.Basebackup.FullInterval.D(), time.Now())
	if err != nil {
		return nil, err
	}
	if parent == nil && reason != "" {
		log.Info("taking a full backup", "reason", reason)
	}
	return parent, nil
}

func runBackup(ctx context.Context, cfg *config.Config, mode basebackup.Mode, stdout io.Writer) error {
	log := newLogger(cfg, os.Stderr)
	src, hsFacts, err := backupSource(cfg)
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
	conn, err := src.ConnectReplication(ctx, cfg.Postgres.Slot+"_backup")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := wal.BindRepository(ctx, conn, r); err != nil {
		return err
	}

	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	rcv, err := startBackupReceiver(bctx, cancel, src, r, cfg, log)
	if err != nil {
		return err
	}
	defer rcv.stop()

	parent, err := chooseParent(ctx, r, mode, cfg, log)
	if err != nil {
		return err
	}
	prog := newProgressPrinter(os.Stderr, log)
	b, err := basebackup.Take(bctx, conn, r, basebackup.Options{
		Incremental:       parent,
		Checkpoint:        cfg.Basebackup.Checkpoint,
		ServerCompression: cfg.Basebackup.ServerCompression,
		PartSize:          int64(cfg.Basebackup.PartSizeMB) << 20,
		CompressWorkers:   cfg.Basebackup.CompressWorkers,
		WALTimeout:        cfg.Basebackup.WALTimeout.D(),
		Facts:             hsFacts,
		Progress:          prog.update,
	}, log)
	prog.finish()
	if err != nil {
		if cause := context.Cause(bctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return fmt.Errorf("%w (%w)", err, cause)
		}
		return err
	}
	if err := rcv.stop(); err != nil {
		log.Warn("WAL receiver", "err", err)
	}
	stderrConsole.Println(backupSummary(b, time.Since(prog.start)))
	fmt.Fprintln(stdout, b.ID)
	return nil
}

// backupSummary is the closing line of `synbak backup` on standard error:
// what was read, what was stored, the WAL the backup needs and how long it
// took.
func backupSummary(b *basebackup.Backup, took time.Duration) string {
	stored := b.StoredSize()
	ratio := ""
	if stored > 0 {
		ratio = fmt.Sprintf(" (%.1f:1)", float64(b.Size())/float64(stored))
	}
	kind := "full"
	if b.Incremental() {
		kind = fmt.Sprintf("incremental on %s (chain of %d)", b.Parent, len(b.Chain)+1)
	}
	s := fmt.Sprintf("backup %s (%s) complete: %s read, %s stored%s; needs WAL %s to %s (timeline %d); took %s",
		b.ID, kind, humanBytes(b.Size()), humanBytes(stored), ratio, b.StartLSN, b.EndLSN, b.EndTimeline, took.Round(100*time.Millisecond))
	if b.IncrementalRefused != "" {
		s += "; not incremental: " + b.IncrementalRefused
	}
	return s
}

// backupSource finds PostgreSQL and the Synapse facts recorded with the
// backup (best effort: postgres.dsn works without homeserver.yaml).
func backupSource(cfg *config.Config) (pgsource.Source, map[string]string, error) {
	hs, _, src, err := homeserverSource(cfg)
	if err != nil {
		return src, nil, err
	}
	return src, homeserverFacts(hs), nil
}

// backupReceiver is the WAL receiver a backup runs for its duration.
type backupReceiver struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
}

// stop stops the receiver (it stores the open segment as a partial) and
// returns its error. It may be called more than once.
func (b *backupReceiver) stop() error {
	b.cancel()
	<-b.done
	return b.err
}

// startBackupReceiver runs a WAL receiver for the duration of the backup,
// so that a standalone backup gets its WAL. When another synbak process
// holds the spool it leaves the WAL to that process. It returns once the
// receiver streams (so that a new slot reserves WAL from before the
// backup's checkpoint). A receiver that fails permanently for another
// reason cancels the backup with that cause.
func startBackupReceiver(ctx context.Context, cancelBackup context.CancelCauseFunc, src pgsource.Source, r *repo.Repo, cfg *config.Config, log *slog.Logger) (*backupReceiver, error) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	br := &backupReceiver{cancel: cancel, done: make(chan struct{})}
	opts := walOptions(cfg)
	// An agent or a wal stream holds the spool for its whole life: then it
	// archives the backup's WAL, and this receiver steps aside at once
	// (never taking the spool from it).
	opts.YieldSpool = true
	rcv := wal.NewReceiver(src, r, opts, log.With("component", "wal"))
	go func() {
		defer close(br.done)
		err := rcv.Run(rctx)
		switch {
		case err == nil:
		case wal.IsSpoolLocked(err):
			log.Info("another synbak process (agent or wal stream) is archiving WAL; the backup waits for it to archive the backup's WAL")
		default:
			br.err = err
			cancelBackup(fmt.Errorf("WAL receiver: %w", err))
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	for !rcv.Status().Streaming {
		select {
		case <-br.done:
			if br.err != nil {
				return nil, fmt.Errorf("WAL receiver: %w", br.err)
			}
			return br, nil
		case <-ctx.Done():
			_ = br.stop()
			return nil, ctx.Err()
		case <-deadline:
			log.Warn("the WAL receiver is not streaming yet; starting the backup anyway", "last_error", rcv.Status().LastError)
			return br, nil
		case <-tick.C:
		}
	}
	return br, nil
}

// progressPrinter shows backup progress: a one-line bar on a terminal,
// a log line every 10 s otherwise.
type progressPrinter struct {
	w        io.Writer
	log      *slog.Logger
	tty      bool
	start    time.Time
	last     time.Time
	lastLine int
	p        basebackup.Progress
}

func newProgressPrinter(w *os.File, log *slog.Logger) *progressPrinter {
	return &progressPrinter{w: w, log: log, tty: isTerminal(w), start: time.Now()}
}

func (p *progressPrinter) update(pr basebackup.Progress) {
	p.p = pr
	now := time.Now()
	if p.tty {
		if now.Sub(p.last) < 200*time.Millisecond && pr.Phase == "streaming" {
			return
		}
		p.last = now
		stderrConsole.Draw(p.line(now))
		return
	}
	if now.Sub(p.last) < 10*time.Second && pr.Phase == "streaming" {
		return
	}
	p.last = now
	rate := float64(pr.Done) / max(now.Sub(p.start).Seconds(), 0.001)
	p.log.Info("backup progress", "phase", pr.Phase, "done", pr.Done, "estimated_total", pr.Total, "rate_bytes_per_second", math.Round(rate), "archive", pr.Archive)
}

func (p *progressPrinter) line(now time.Time) string {
	pr := p.p
	el := now.Sub(p.start).Seconds()
	rate := float64(pr.Done) / max(el, 0.001)
	if pr.Phase != "streaming" {
		return fmt.Sprintf("%s: %s, %s", pr.ID, humanBytes(pr.Done), pr.Phase)
	}
	frac := 0.0
	if pr.Total > 0 {
		frac = min(float64(pr.Done)/float64(pr.Total), 1)
	}
	const width = 30
	fill := int(frac * width)
	eta := "?"
	if rate > 0 && pr.Total > pr.Done {
		eta = time.Duration(float64(pr.Total-pr.Done) / rate * float64(time.Second)).Round(time.Second).String()
	} else if pr.Total > 0 {
		eta = "0s"
	}
	return fmt.Sprintf("[%s%s] %3.0f%% %s / %s  %s/s  ETA %s",
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill), frac*100,
		humanBytes(pr.Done), humanBytes(pr.Total), humanBytes(int64(rate)), eta)
}

func (p *progressPrinter) finish() {
	if p.tty {
		stderrConsole.Done()
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
