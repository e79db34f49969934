package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
)

func newDumpCommand(st *rootState) *cobra.Command {
	var pgBinDir string
	var skipMedia bool
	cmd := &cobra.Command{
		Use:   "dump [--pg-bindir DIR]",
		Short: "Take a logical dump (pg_dump -Fc, one-time-key data excluded), as Synapse's docs describe",
		Long: `dump runs the real pg_dump — the method Synapse's backup documentation
describes, pg_dump -Fc --exclude-table-data e2e_one_time_keys_json — against
the Synapse database (and the state database too when homeserver.yaml puts it
in another database) and streams its output into the repository: checksummed,
compressed by synbak (pg_dump runs with --compress=0), encrypted when the
repository is, in objects of at most dump.part_size_mb. The metadata, written
last, records the time, the server's version, each database's owner, size and
the exact pg_dump command (without the password, which reaches pg_dump through
its environment, never its arguments).

It connects with homeserver.yaml's database settings (Synapse's role owns the
tables pg_dump reads; postgres.dsn is often a replication-only role), or with
postgres.dsn when homeserver.yaml is unreadable. pg_dump is the server's major
version under /usr/lib/postgresql (or a newer one), or the one in --pg-bindir
/ dump.pg_bindir. With homeserver.yaml
readable it also takes a config snapshot and, with media.enabled, copies the
media store first (one media sync pass; --skip-media leaves that to the
agent), so that restore --from-dump --media-dir and --config-dir have the
media and config files of the dump's time.

A dump is the backup that survives a PostgreSQL major-version upgrade or a
move to another server; continuous protection (WAL + base backups) gives
point-in-time recovery. The agent takes dumps every dump.interval (off by
default); prune keeps the newest retention.dumps. Restore one with
'synbak restore --from-dump ID|latest --target-dsn DSN'. It prints the
dump's id on standard output.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			if pgBinDir != "" {
				cfg.Dump.PgBindir = pgBinDir
			}
			return runDump(cmd.Context(), cfg, cmd.OutOrStdout(), !skipMedia)
		},
	}
	cmd.Flags().BoolVar(&skipMedia, "skip-media", false, "do not copy the media store first (the agent's media watcher keeps it current)")
	cmd.Flags().StringVar(&pgBinDir, "pg-bindir", "", "directory holding pg_dump (default: the server's major version under /usr/lib/postgresql, or dump.pg_bindir)")
	return cmd
}

func runDump(ctx context.Context, cfg *config.Config, stdout io.Writer, syncMedia bool) error {
	log := newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	hs, hsErr, _, err := homeserverSource(cfg)
	if err != nil {
		return err
	}
	if hsErr != nil {
		log.Warn("homeserver.yaml unreadable: dumping the database postgres.dsn names, without a config snapshot", "err", hsErr)
	}
	r, err := openRepo(ctx, cfg, true)
	if err != nil {
		return err
	}
	var prog func(dump.Progress)
	if isTerminal(os.Stderr) {
		rp := &restoreProgress{w: os.Stderr, start: time.Now()}
		defer rp.finish()
		var last time.Time
		prog = func(p dump.Progress) {
			if time.Since(last) < 200*time.Millisecond && !p.Finished {
				return
			}
			last = time.Now()
			rate := float64(p.Done) / max(time.Since(rp.start).Seconds(), 0.001)
			rp.draw(fmt.Sprintf("dumping %s (%d/%d): %s written, %s/s (database size %s)", p.Database, p.Index, p.Count, humanBytes(p.Done), humanBytes(int64(rate)), humanBytes(p.DatabaseSize)))
		}
	}
	mediaFact := "not synced (--skip-media)"
	switch {
	case !cfg.Media.Enabled:
		mediaFact = "not synced (media.enabled is false)"
	case hs == nil:
		mediaFact = "not synced (homeserver.yaml unreadable: the media store is unknown)"
	case syncMedia:
		st, err := syncMediaStore(ctx, cfg, hs, r, log)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			log.Warn("media sync before the dump failed; the dump records it and restore --from-dump --media-dir will warn", "err", err)
			mediaFact = "not synced (the media sync before the dump failed: " + err.Error() + ")"
		} else {
			stderrConsole.Println(mediaSummary(hs.MediaStorePath, st))
			mediaFact = "synced " + time.Now().UTC().Format(time.RFC3339)
		}
	}
	d, err := takeDump(ctx, cfg, hs, r, prog, log, mediaFact)
	if err != nil {
		return err
	}
	stderrConsole.Println(dumpSummary(d))
	fmt.Fprintln(stdout, d.ID)
	return nil
}

// dumpSummary is the closing line of `synbak dump` on standard error.
func dumpSummary(d dump.Dump) string {
	var size, stored int64
	names := make([]string, 0, len(d.Databases))
	for _, db := range d.Databases {
		size += db.Size
		stored += db.StoredSize
		names = append(names, db.Name)
	}
	ratio := ""
	if stored > 0 {
		ratio = fmt.Sprintf(" (%.1f:1)", float64(size)/float64(stored))
	}
	return fmt.Sprintf("dump %s complete: %s (%s) of pg_dump output, %s stored%s; took %s",
		d.ID, strings.Join(names, ", "), humanBytes(size), humanBytes(stored), ratio, d.EndTime.Sub(d.StartTime).Round(100*time.Millisecond))
}

// takeDump takes one dump of the Synapse database(s) (hs may be nil when
// postgres.dsn is set) and, with hs, a config snapshot first. The agent's
// dump schedule calls it too.
func takeDump(ctx context.Context, cfg *config.Config, hs *synapse.Homeserver, r *repo.Repo, prog func(dump.Progress), log *slog.Logger, mediaFact string) (dump.Dump, error) {
	srcs, err := dumpSources(cfg, hs)
	if err != nil {
		return dump.Dump{}, err
	}
	if hs != nil {
		files := hs.BackupFiles()
		if src, err := postgresSource(cfg, hs); err == nil {
			files = confsnap.WithPostgresFiles(files, postgresFiles(src, r, log.With("component", "config")).Files(ctx))
		}
		if _, err := confsnap.Snapshot(ctx, r, files, log.With("component", "config"), nil); err != nil {
			log.Warn("config snapshot before the dump failed; restore --from-dump --config-dir gets the newest earlier snapshot", "err", err)
		}
	}
	facts := homeserverFacts(hs)
	if facts == nil {
		facts = map[string]string{}
	}
	facts[dump.FactMedia] = mediaFact
	return dump.Take(ctx, r, dump.Options{
		Sources:  srcs,
		BinDir:   cfg.Dump.PgBindir,
		PartSize: int64(cfg.Dump.PartSizeMB) << 20,
		Facts:    facts,
		Progress: prog,
	}, log)
}

// dumpSources are the databases a dump covers, the one holding Synapse's
// main data store first, then the state store's when homeserver.yaml puts
// it in another database. With homeserver.yaml readable they are reached
// with its credentials — Synapse's role owns the tables pg_dump must read,
// while postgres.dsn is often a replication-only role; without it, with
// postgres.dsn.
func dumpSources(cfg *config.Config, hs *synapse.Homeserver) ([]dump.Source, error) {
	if hs == nil {
		src, err := postgresSource(cfg, nil)
		if err != nil {
			return nil, err
		}
		params, err := pgsource.Params(src.ConnString)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src.Origin, err)
		}
		if params["dbname"] == "" {
			return nil, fmt.Errorf("%s names no database and homeserver.yaml is unreadable: add dbname=<the Synapse database> to it, or make synapse.config readable", src.Origin)
		}
		return []dump.Source{{Params: params, Origin: src.Origin, Stores: []string{"main", "state"}}}, nil
	}
	dbs := []synapse.Database{hs.MainDatabase()}
	if sdb := hs.StateDatabase(); sdb.Name != dbs[0].Name {
		dbs = append(dbs, sdb)
	}
	var out []dump.Source
	for _, db := range dbs {
		p, err := pgsource.Params(db.ConnString())
		if err != nil {
			return nil, fmt.Errorf("homeserver.yaml database %s: %w", db.Name, err)
		}
		out = append(out, dump.Source{Params: p, Origin: "homeserver.yaml database " + db.Name, Stores: db.DataStores})
	}
	return out, nil
}

func (f restoreFlags) checkFromDump() error {
	switch {
	case f.targetDSN == "":
		return fmt.Errorf("--from-dump needs --target-dsn DSN: the PostgreSQL server (and database, default the dumped one's name) to restore into")
	case f.pgdata != "" || f.targetTime != "" || f.targetLSN != "" || f.latest || f.port != 0 || f.leaveRunning:
		return fmt.Errorf("--from-dump restores a logical dump into a running server (--target-dsn); --pgdata, --target-time, --target-lsn, --latest, --port and --leave-running are for point-in-time restores")
	case f.newKey && f.configDir == "":
		return fmt.Errorf("--new-signing-key needs --config-dir DIR: the key is written with the restored config files")
	}
	return nil
}

func runDumpRestore(ctx context.Context, cfg *config.Config, f restoreFlags, out io.Writer) error {
	log := newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return err
	}
	d, err := dump.Find(ctx, r, f.fromDump)
	if err != nil {
		return err
	}
	targets := []dump.Target{}
	for _, t := range []struct{ flag, dsn string }{{"--target-dsn", f.targetDSN}, {"--target-state-dsn", f.targetStateDSN}} {
		if t.dsn == "" {
			continue
		}
		p, err := pgsource.Params(t.dsn)
		if err != nil {
			return usageError{fmt.Errorf("%s: %w", t.flag, err)}
		}
		if _, ok := p["password"]; ok {
			log.Warn(t.flag + " holds a password, which other users of this machine can see in the process list: use PGPASSWORD or a ~/.pgpass file instead")
		}
		targets = append(targets, dump.Target{Params: p, Origin: t.flag})
	}
	opts := dump.RestoreOptions{Targets: targets, Owner: f.owner, Jobs: f.jobs, BinDir: f.pgBinDir, WorkDir: f.workDir, MediaDir: f.mediaDir, ConfigDir: f.configDir}
	if !f.asJSON && isTerminal(os.Stderr) {
		rp := &restoreProgress{w: os.Stderr, start: time.Now()}
		defer rp.finish()
		var last time.Time
		opts.Progress = func(p dump.RestoreProgress) {
			if time.Since(last) < 200*time.Millisecond && p.Phase == "download" {
				return
			}
			last = time.Now()
			switch p.Phase {
			case "download":
				rp.draw(fmt.Sprintf("reading the dump of %s: %s of %s", p.Database, humanBytes(p.Done), humanBytes(p.Total)))
			case "pg_restore":
				rp.draw(fmt.Sprintf("pg_restore into %s", p.Database))
			default:
				rp.draw("restoring " + p.Phase)
			}
		}
	}
	if f.dryRun {
		plan, err := dump.PlanRestore(ctx, r, d, opts)
		if err != nil {
			return err
		}
		if f.asJSON {
			return printJSON(out, plan)
		}
		printDumpPlan(out, plan)
		fmt.Fprintln(out, "Dry run: nothing was written; a restore would proceed.")
		return nil
	}
	rep, err := dump.Restore(ctx, r, d, opts, log)
	if err == nil && f.newKey {
		if _, kerr := confsnap.NewSigningKey(f.configDir, confsnap.KeyOptions{}); kerr != nil {
			err = fmt.Errorf("new signing key in %s: %w", f.configDir, kerr)
		}
	}
	if err != nil {
		return err
	}
	if f.asJSON {
		return printJSON(out, rep)
	}
	printDumpPlan(out, rep.Plan)
	for _, w := range rep.Plan.Warnings {
		log.Warn(w)
	}
	for _, db := range rep.Databases {
		how := "restored into the existing empty database"
		if db.Created {
			how = "created and restored"
		}
		fmt.Fprintf(out, "database %s: %s, %d tables, %d rows of %s deleted, %.1f s\n", db.Database, how, db.Tables, db.OneTimeKeysTruncated, dump.OneTimeKeysTable, db.Seconds)
	}
	if f.mediaDir != "" {
		fmt.Fprintf(out, "media: %d files (%s) into %s\n", rep.MediaFiles, humanBytes(rep.MediaBytes), f.mediaDir)
	} else {
		fmt.Fprintln(out, "media: skipped (no --media-dir)")
	}
	if f.configDir != "" {
		fmt.Fprintf(out, "config: %d files into %s (manifest: %s/synbak-manifest.json)\n", rep.ConfigFiles, f.configDir, f.configDir)
	} else {
		fmt.Fprintln(out, "config: skipped (no --config-dir)")
	}
	fmt.Fprintln(out, "Before starting Synapse: point homeserver.yaml's database section at the restored database, and check that grants other roles had (if any) are given again — a dump restore does not restore privileges (pg_restore --no-privileges).")
	return nil
}

func printDumpPlan(out io.Writer, p dump.RestorePlan) {
	fmt.Fprintf(out, "dump %s of %s (%s)\n", p.Dump, p.DumpTime.UTC().Format(time.RFC3339), p.PgDump)
	for _, db := range p.Databases {
		what := "create database"
		if db.Exists {
			what = "use the existing empty database"
		}
		fmt.Fprintf(out, "  %s → %s %q owned by %q on %s (PostgreSQL %s), %s in %d parts, %s --jobs %d\n",
			db.Source, what, db.Database, db.Owner, db.Server, db.ServerVersion, humanBytes(db.Size), db.Parts, db.PgRestore, db.Jobs)
	}
	fmt.Fprintf(out, "  work directory %s (needs %s while pg_restore runs)\n", p.WorkDir, humanBytes(p.WorkBytes))
	asOf := p.AsOf.UTC().Format(time.RFC3339)
	if p.MediaDir != "" {
		fmt.Fprintf(out, "  media as of %s (%d files) → %s\n", asOf, p.MediaFiles, p.MediaDir)
	}
	if p.ConfigDir != "" {
		snap := ""
		if p.ConfigSnapshot != nil {
			snap = " (snapshot of " + p.ConfigSnapshot.UTC().Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(out, "  config files as of %s%s → %s\n", asOf, snap, p.ConfigDir)
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(out, "  warning: %s\n", w)
	}
}
