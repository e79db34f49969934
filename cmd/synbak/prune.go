package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/retention"
)

func newPruneCommand(st *rootState) *cobra.Command {
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Apply the retention policy (retention.backups, retention.window, retention.dumps)",
		Long: `prune deletes what the retention policy no longer needs, reading and writing
the repository only (no PostgreSQL, no homeserver.yaml needed).

It keeps the newest retention.backups complete base backups, and everything
needed to restore to any moment of the last retention.window: the newest
backup that ended at or before the window's start (the anchor) and every
newer one; the WAL from the oldest kept backup's start (on its timeline and
every later one); every history file; the media and config files present at
any time from the oldest kept backup's start, and the newest content of each
config file. The newest backup is never deleted; an incomplete backup only
when it started before the oldest kept one and nothing was written to it for
24 hours.

Logical dumps: the newest retention.dumps complete dumps stay (0: every
complete dump stays), with the media and config files present at the start
of each; an incomplete dump goes when nothing was written to it for 24 hours.

Deletion order is crash-safe: backups oldest first (each loses its
backup.json first, so nothing offers it for restore any more), then dumps
likewise (dump.json first), then WAL in ascending order, then media and
config objects. An interrupted prune leaves
a repository that restores every time in the window; run prune again to
finish.

--dry-run prints what would go and the recovery window before and after,
and deletes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runPrune(cmd.Context(), cfg, cmd.OutOrStdout(), newLogger(cfg, cmd.ErrOrStderr()), dryRun, asJSON, time.Now())
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be deleted; delete nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

// pruneReport is what `synbak prune --json` prints.
type pruneReport struct {
	DryRun bool              `json:"dry_run"`
	Plan   retention.Plan    `json:"plan"`
	Result *retention.Result `json:"result,omitempty"`
}

func runPrune(ctx context.Context, cfg *config.Config, out io.Writer, log *slog.Logger, dryRun, asJSON bool, now time.Time) error {
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return err
	}
	p, err := retention.NewPlan(ctx, r, retention.Options{Backups: cfg.Retention.Backups, Window: cfg.Retention.Window.D(), Dumps: cfg.Retention.Dumps, Now: now})
	if err != nil {
		return fmt.Errorf("prune %s: %w", r, err)
	}
	rep := pruneReport{DryRun: dryRun, Plan: p}
	var applyErr error
	if !dryRun {
		res, err := retention.Apply(ctx, r, p, log)
		rep.Result = &res
		if err != nil {
			applyErr = fmt.Errorf("prune %s: %w", r, err)
		}
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		return applyErr
	}
	printPrune(out, cfg, rep)
	return applyErr
}

func printPrune(out io.Writer, cfg *config.Config, rep pruneReport) {
	p := rep.Plan
	fmt.Fprintf(out, "Retention: keep the newest %d backups and everything needed for the last %s (since %s)\n",
		p.Backups, cfg.Retention.Window, p.WindowStart.Format(time.RFC3339))
	if p.Anchor != "" {
		fmt.Fprintf(out, "Anchor: %s\n", p.Anchor)
	}
	fmt.Fprintf(out, "Backups kept (%d): %s\n", len(p.Kept), orNone(strings.Join(p.Kept, ", ")))
	if len(p.Untouched) > 0 {
		fmt.Fprintf(out, "Incomplete backups left alone (running, or not abandoned for %s yet): %s\n", retention.AbandonedAfter, strings.Join(p.Untouched, ", "))
	}
	keepDumps := fmt.Sprintf("the newest %d", p.Dumps)
	if p.Dumps == 0 {
		keepDumps = "all (retention.dumps 0)"
	}
	fmt.Fprintf(out, "Dumps kept (%d, %s): %s\n", len(p.KeptDumps), keepDumps, orNone(strings.Join(p.KeptDumps, ", ")))
	if len(p.UntouchedDumps) > 0 {
		fmt.Fprintf(out, "Incomplete dumps left alone (running, or not abandoned for %s yet): %s\n", retention.AbandonedAfter, strings.Join(p.UntouchedDumps, ", "))
	}
	if !p.Horizon.IsZero() {
		fmt.Fprintf(out, "Media and config kept as of: %s\n", p.Horizon.Format(time.RFC3339))
	}
	verb := "Deleted"
	if rep.DryRun {
		verb = "Would delete"
	}
	fmt.Fprintf(out, "\n%s:\n", verb)
	printDeletedSets(out, "backup", p.Delete)
	printDeletedSets(out, "dump", p.DeleteDumps)
	if len(p.WAL) == 0 {
		fmt.Fprintln(out, "  WAL: none")
	}
	for _, w := range p.WAL {
		fmt.Fprintf(out, "  WAL timeline %d: %s .. %s  (%d objects, %s)\n", w.Timeline, w.First, w.Last, w.Objects, humanBytes(w.Bytes))
	}
	fmt.Fprintf(out, "  media objects: %d (%s)\n", p.Media.Objects, humanBytes(p.Media.Bytes))
	fmt.Fprintf(out, "  config objects: %d (%s)\n", p.Config.Objects, humanBytes(p.Config.Bytes))
	fmt.Fprintf(out, "  total: %d objects, %s\n", p.Objects(), humanBytes(p.Bytes()))
	if res := rep.Result; res != nil && (res.Objects != p.Objects() || res.Skipped > 0) {
		fmt.Fprintf(out, "  done: %d objects, %s deleted; %d kept because an index entry written since needs them\n",
			res.Objects, humanBytes(res.Bytes), res.Skipped)
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "Recovery window before: %s\n", windowText(p.Before))
	fmt.Fprintf(out, "Recovery window after:  %s\n", windowText(p.After))
	if rep.DryRun {
		fmt.Fprintln(out, "\nDry run: nothing was deleted.")
	}
}

func windowText(w *retention.Window) string {
	if w == nil {
		return "none (a complete base backup and archived WAL are needed)"
	}
	return w.From.UTC().Format(time.RFC3339) + " to " + w.To.UTC().Format(time.RFC3339)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// printDeletedSets lists the backups or dumps (kind) a prune deletes.
func printDeletedSets(out io.Writer, kind string, sets []retention.Backup) {
	if len(sets) == 0 {
		fmt.Fprintf(out, "  %ss: none\n", kind)
	}
	for _, b := range sets {
		state := "complete  "
		if !b.Complete {
			state = "incomplete"
		}
		fmt.Fprintf(out, "  %s %s  %s  %d objects, %s  (%s)\n", kind, b.ID, state, b.Objects, humanBytes(b.Bytes), b.Reason)
	}
}
