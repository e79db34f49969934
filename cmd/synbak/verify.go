package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/verify"
)

type verifyFlags struct {
	quick  bool
	media  bool
	asJSON bool
}

func newVerifyCommand(st *rootState) *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify [--quick] [--media] [--json]",
		Short: "Check every object's checksum and that every backup can be restored",
		Long: `verify reads the whole repository and checks what restores rely on:

  - every object's checksum (sha256, or XXH3-128 for WAL and base-backup
    parts; --quick: its framing, size and metadata only);
  - every base backup's parts and manifest against its backup.json;
  - the WAL from every backup's start to the newest WAL, across timelines
    (history files present and readable, no missing segment);
  - the media index and the config snapshot index against their objects;
  - with --media, the live database: every local_media_repository row (and
    thumbnail) the backup lacks or holds with a different size or sha256.

Each problem is printed on its own line with what it makes impossible.
Exit codes: 0 everything holds; 1 a problem was found (or the check failed).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runVerify(cmd.Context(), cfg, f, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&f.quick, "quick", false, "check sizes and metadata only, not checksums")
	cmd.Flags().BoolVar(&f.media, "media", false, "also compare the live database's media with the backup")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print one JSON object")
	return cmd
}

// verifyReport is what `synbak verify --json` prints.
type verifyReport struct {
	verify.Report
	MediaDB *mediaDBReport `json:"media_database,omitempty"`
}

func runVerify(ctx context.Context, cfg *config.Config, f verifyFlags, out io.Writer) error {
	log := newLogger(cfg, os.Stderr)
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return err
	}
	var prog *verifyProgress
	opts := verify.Options{Quick: f.quick, Log: log}
	if !f.asJSON && isTerminal(os.Stderr) {
		prog = &verifyProgress{w: os.Stderr}
		opts.Progress = prog.update
	}
	rep, err := verify.Run(ctx, r, opts)
	prog.finish()
	if err != nil {
		return err
	}
	vr := verifyReport{Report: rep}
	if f.media {
		m, err := verifyMediaDB(ctx, cfg, r)
		if err != nil {
			return err
		}
		vr.MediaDB = m
		vr.Problems = append(vr.Problems, m.Problems...)
	}
	if f.asJSON {
		if err := printJSON(out, vr); err != nil {
			return err
		}
	} else {
		what := "checksums"
		if f.quick {
			what = "sizes and metadata (--quick)"
		}
		fmt.Fprintf(out, "Checked %d objects (%s, %s), %d base backups, the WAL archive, %d logical dumps, %d media and %d config objects in %.1fs.\n",
			rep.Objects, humanBytes(rep.Bytes), what, rep.Backups, rep.Dumps, rep.Media, rep.Config, rep.Seconds)
		if rep.IncompleteDumps > 0 {
			fmt.Fprintf(out, "%d incomplete dumps (interrupted or running; never offered to restore) were left out.\n", rep.IncompleteDumps)
		}
		if vr.MediaDB != nil {
			fmt.Fprintln(out, vr.MediaDB.Summary)
		}
		for _, p := range vr.Problems {
			fmt.Fprintf(out, "PROBLEM: %s\n", p)
		}
		if len(vr.Problems) == 0 {
			fmt.Fprintln(out, "OK: no problem found.")
		}
	}
	// The agent shows the newest result (health, metrics, status page).
	if err := verify.SaveRecord(cfg.StateDir, verify.NewRecord(rep, vr.Problems, time.Now())); err != nil {
		log.Warn("could not record the result for the agent", "state_dir", cfg.StateDir, "err", err)
	}
	if len(vr.Problems) > 0 {
		notifyVerifyFailure(ctx, cfg, vr.Problems, log)
		return withCode(1, fmt.Errorf("verify found %d problem%s", len(vr.Problems), plural(len(vr.Problems))))
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// verifyProgress draws "checked N of M objects" on a terminal.
type verifyProgress struct {
	w    io.Writer
	last time.Time
	drew bool
}

func (p *verifyProgress) update(n, total int) {
	if time.Since(p.last) < 200*time.Millisecond && n != total {
		return
	}
	p.last = time.Now()
	p.drew = true
	stderrConsole.Draw(fmt.Sprintf("verify: %d of %d objects checked", n, total))
}

func (p *verifyProgress) finish() {
	if p != nil && p.drew {
		stderrConsole.Done()
	}
}

// mediaDBReport is the live-database media comparison.
type mediaDBReport struct {
	Summary  string   `json:"summary"`
	Problems []string `json:"problems"`
}

// verifyMediaDB compares local_media_repository (and its thumbnails) in the
// live database with the backed-up media.
func verifyMediaDB(ctx context.Context, cfg *config.Config, r *repo.Repo) (*mediaDBReport, error) {
	hs, _, src, err := homeserverSource(cfg)
	if err != nil {
		return nil, fmt.Errorf("verify --media needs the Synapse database: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	db, err := mediawatch.OpenDBLengths(cctx, src.ConnString)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("verify --media: connect to the Synapse database (%s): %w", src.Redacted(), err)
	}
	defer db.Close(context.WithoutCancel(ctx))
	opts := mediawatch.VerifyOptions{}
	switch {
	case cfg.Media.Thumbnails == "never":
		opts.DynamicThumbnails = true
	case cfg.Media.Thumbnails == "auto" && hs != nil:
		opts.DynamicThumbnails = hs.DynamicThumbnails
	}
	rep, err := db.Verify(ctx, r, opts)
	if err != nil {
		return nil, fmt.Errorf("verify --media: %w", err)
	}
	out := &mediaDBReport{Summary: rep.Summary(), Problems: []string{}}
	for _, p := range rep.Problems() {
		out.Problems = append(out.Problems, "media in the database but not in the backup as it is: "+p.String())
	}
	return out, nil
}
