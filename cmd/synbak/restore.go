package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/restore"
)

type restoreFlags struct {
	pgdata       string
	targetTime   string
	targetLSN    string
	latest       bool
	mediaDir     string
	configDir    string
	newKey       bool
	port         int
	pgBinDir     string
	leaveRunning bool
	dryRun       bool
	asJSON       bool
	keepFailed   bool

	// --from-dump
	fromDump       string
	targetDSN      string
	targetStateDSN string
	owner          string
	jobs           int
	workDir        string
}

func newRestoreCommand(st *rootState) *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore (--pgdata DIR (--target-time T | --target-lsn LSN | --latest) | --from-dump ID|latest --target-dsn DSN)",
		Short: "Restore the homeserver's database, media and config as of a point in time",
		Long: `restore picks the newest base backup that ended before the target, proves from
the repository that the WAL from it to the target is complete, extracts it into
--pgdata (missing or empty), recovers it with PostgreSQL to the target (a
private server on 127.0.0.1 and its own socket), checks that replay reached
the target (or, for --latest, the end of the archive: a server that stopped
early fails the restore), empties
e2e_one_time_keys_json in the Synapse database, restores the media store as of
the target into --media-dir and the config files, signing key and secrets
into --config-dir (each file as DIR/<its original absolute path>, with
DIR/synbak-manifest.json), and stops the server unless --leave-running.

--new-signing-key (with --config-dir) writes a new signing key instead of the
restored one and adds the old public key to old_signing_keys in the restored
homeserver config, for when the old key may have been compromised.

TIME is RFC 3339 (2026-11-24T10:15:00Z, 2026-11-24T10:15:00.123456+01:00) or
PostgreSQL's form (2026-11-24 10:15:00+00, 2026-11-24 10:15:00 UTC); a time
without a zone is refused. The target is inclusive. LSN is X/X (hex).

It needs only the repository: no homeserver.yaml, no running PostgreSQL.
The restore is the only reader of the repository: it serves the WAL to the
restored server's restore_command ('synbak wal-fetch --socket DIR') over a
socket in the server's private socket directory, prefetching wal.prefetch
segments ahead of replay, so the server's OS user never needs the
repository, its credentials or the age identity. Run as root, the server
runs as postgres and the data directory belongs to postgres; the config files
get their recorded owners and the media store the signing key's. Run as
another user (the repository's owner), the server runs as that user and the
report says what to chown before the distribution's service starts it.
Afterwards only the server log (named in the report) stays beside the data
directory.
--dry-run makes every check a restore makes, including restore_command run
as the server's OS user against a temporary WAL socket, and prints the plan,
writing nothing else; it exits 0 when a restore would proceed, 1 when not.

--from-dump ID|latest restores a logical dump (synbak dump) instead, into a
running PostgreSQL server of the same or a newer major version: the database
named in --target-dsn (default: the dumped database's name) is created as
Synapse's docs say (ENCODING UTF8, LC_COLLATE and LC_CTYPE C, TEMPLATE
template0, OWNER --owner); a database that exists and has tables is refused
and nothing is changed. Every part of the dump is read and checked into
--work-dir before anything is created; then the real pg_restore (matching the
target server's version) runs with --jobs, --no-owner --role OWNER and
--exit-on-error; e2e_one_time_keys_json is emptied if the dump holds rows of
it; ANALYZE. Media and config files are restored as of the dump's start.
A dump of two databases (main and state) needs --target-state-dsn too. Keep
passwords out of --target-dsn (the process list shows arguments): use
PGPASSWORD or ~/.pgpass.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.fromDump != "" {
				if err := f.checkFromDump(); err != nil {
					return usageError{err}
				}
				cfg, err := st.load()
				if err != nil {
					return err
				}
				return runDumpRestore(cmd.Context(), cfg, f, cmd.OutOrStdout())
			}
			if f.targetDSN != "" || f.targetStateDSN != "" || f.owner != "" || f.jobs != 0 || f.workDir != "" {
				return usageError{fmt.Errorf("--target-dsn, --target-state-dsn, --owner, --jobs and --work-dir go with --from-dump")}
			}
			target, err := f.target()
			if err != nil {
				return usageError{err}
			}
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runRestore(cmd.Context(), cfg, f, target, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pgdata, "pgdata", "", "the new data directory (missing or empty)")
	fl.StringVar(&f.targetTime, "target-time", "", "restore what committed at or before TIME (with a zone)")
	fl.StringVar(&f.targetLSN, "target-lsn", "", "restore what committed at or before LSN (X/X)")
	fl.BoolVar(&f.latest, "latest", false, "restore to the end of the archive")
	fl.StringVar(&f.mediaDir, "media-dir", "", "restore the media store as of the target into DIR (missing or empty)")
	fl.StringVar(&f.configDir, "config-dir", "", "restore homeserver.yaml, its log config, appservice files, signing key and secrets as of the target into DIR (missing or empty)")
	fl.BoolVar(&f.newKey, "new-signing-key", false, "with --config-dir: replace the signing key by a new one; the old one goes into old_signing_keys")
	fl.IntVar(&f.port, "port", 0, "TCP port of the restored server on 127.0.0.1 (default: a free port)")
	fl.StringVar(&f.pgBinDir, "pg-bindir", "", "PostgreSQL server binaries (default /usr/lib/postgresql/<backup's major>/bin)")
	fl.BoolVar(&f.leaveRunning, "leave-running", false, "leave the restored server running with its private settings")
	fl.BoolVar(&f.keepFailed, "keep-failed", false, "keep what a failed restore wrote (data directory, server log) for inspection")
	fl.BoolVar(&f.dryRun, "dry-run", false, "check and print the plan; write nothing")
	fl.BoolVar(&f.asJSON, "json", false, "print the plan or report as JSON")
	fl.StringVar(&f.fromDump, "from-dump", "", "restore logical dump ID (or latest) instead of a point in time")
	fl.StringVar(&f.targetDSN, "target-dsn", "", "with --from-dump: the server (and database) to restore into, libpq conninfo or URL")
	fl.StringVar(&f.targetStateDSN, "target-state-dsn", "", "with --from-dump: where the state database goes, for a dump of two databases")
	fl.StringVar(&f.owner, "owner", "", "with --from-dump: the role owning the new database and its objects (default: the dumped database's owner if that role exists, else the connecting role)")
	fl.IntVar(&f.jobs, "jobs", 0, "with --from-dump: pg_restore --jobs (default: the number of CPUs, at most 4)")
	fl.StringVar(&f.workDir, "work-dir", "", "with --from-dump: where the verified dump is written for pg_restore (default: $TMPDIR or /tmp)")
	return cmd
}

// target checks the flags and returns the restore target.
func (f restoreFlags) target() (restore.Point, error) {
	if f.pgdata == "" {
		return restore.Point{}, fmt.Errorf("--pgdata DIR is required: the new data directory (missing or empty)")
	}
	if f.port < 0 || f.port > 65535 {
		return restore.Point{}, fmt.Errorf("--port %d: give a TCP port between 1 and 65535 (or leave it out for a free one)", f.port)
	}
	if f.newKey && f.configDir == "" {
		return restore.Point{}, fmt.Errorf("--new-signing-key needs --config-dir DIR: the key is written with the restored config files")
	}
	n := 0
	for _, set := range []bool{f.targetTime != "", f.targetLSN != "", f.latest} {
		if set {
			n++
		}
	}
	if n != 1 {
		return restore.Point{}, fmt.Errorf("give exactly one of --target-time, --target-lsn and --latest")
	}
	switch {
	case f.latest:
		return restore.Point{Latest: true}, nil
	case f.targetLSN != "":
		l, err := pglogrepl.ParseLSN(f.targetLSN)
		if err != nil || l == 0 {
			return restore.Point{}, fmt.Errorf("--target-lsn %q: an LSN is written X/X in hex, like 0/3000060", f.targetLSN)
		}
		return restore.Point{LSN: l}, nil
	default:
		t, err := parseTargetTime(f.targetTime)
		if err != nil {
			return restore.Point{}, err
		}
		return restore.Point{Time: t}, nil
	}
}

// parseTargetTime reads RFC 3339 (optional fraction) or PostgreSQL's
// timestamptz output form; a zone is required.
func parseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	layouts := []string{
		time.RFC3339Nano,
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07",
	}
	if rest, ok := strings.CutSuffix(s, " UTC"); ok {
		s = rest + "Z"
		layouts = []string{"2006-01-02 15:04:05.999999999Z07:00"}
	}
	for _, l := range layouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	for _, l := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"} {
		if _, err := time.Parse(l, s); err == nil {
			return time.Time{}, fmt.Errorf("--target-time %q has no time zone: add one, e.g. %sZ or %s+00 (UTC), so that the restore does not depend on this machine's zone", s, strings.Replace(s, " ", "T", 1), s)
		}
	}
	return time.Time{}, fmt.Errorf("--target-time %q: write it as RFC 3339 (2026-11-24T10:15:00Z, 2026-11-24T10:15:00.123456+01:00) or as PostgreSQL does (2026-11-24 10:15:00+00, 2026-11-24 10:15:00 UTC)", s)
}

func runRestore(ctx context.Context, cfg *config.Config, f restoreFlags, target restore.Point, out io.Writer) error {
	log := newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := openRepo(ctx, cfg, false)
	if err != nil {
		return err
	}
	opts := restore.Options{
		Repo: r, Prefetch: cfg.WAL.PrefetchSegments, Target: target,
		PGData: f.pgdata, MediaDir: f.mediaDir, ConfigDir: f.configDir, NewSigningKey: f.newKey, Port: f.port, BinDir: f.pgBinDir,
		LeaveRunning: f.leaveRunning, KeepFailed: f.keepFailed, Log: log,
	}
	if !f.asJSON && isTerminal(os.Stderr) {
		rp := &restoreProgress{w: os.Stderr, start: time.Now()}
		defer rp.finish()
		opts.Progress = rp.update
	}
	if f.dryRun {
		plan, err := restore.Prepare(ctx, opts)
		if err != nil {
			return err
		}
		if f.asJSON {
			return printJSON(out, plan)
		}
		fmt.Fprint(out, plan.String())
		fmt.Fprintln(out, "Dry run: nothing was written; a restore would proceed.")
		return nil
	}
	rep, err := restore.Run(ctx, opts)
	if err != nil {
		return err
	}
	if f.asJSON {
		return printJSON(out, rep)
	}
	fmt.Fprint(out, rep.String())
	return nil
}

// restoreProgress draws the restore's progress on a terminal: the bytes
// extracted, then the WAL replayed towards the end of the plan.
type restoreProgress struct {
	w        io.Writer
	start    time.Time
	last     time.Time
	lastLine int
	rate     rateMeter
}

// rateMeter turns successive positions of one phase into a throughput and
// an ETA, over the phase so far (restarted when the phase changes).
type rateMeter struct {
	phase    string
	since    time.Time
	from     int64
	lastRate float64
}

// line returns ", 85.3 MiB/s, ETA 12s" for position done of total.
func (m *rateMeter) line(now time.Time, phase string, done, total int64) string {
	if phase != m.phase {
		m.phase, m.since, m.from, m.lastRate = phase, now, done, 0
		return ""
	}
	el := now.Sub(m.since).Seconds()
	if el < 0.5 || done <= m.from {
		return ""
	}
	rate := float64(done-m.from) / el
	s := fmt.Sprintf(", %s/s", humanBytes(int64(rate)))
	if total > done {
		s += ", ETA " + time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second).String()
	}
	return s
}

func (p *restoreProgress) update(pr restore.Progress) {
	now := time.Now()
	if now.Sub(p.last) < 200*time.Millisecond {
		return
	}
	p.last = now
	var line string
	switch pr.Phase {
	case "extract":
		frac := 0.0
		if pr.Total > 0 {
			frac = min(float64(pr.Done)/float64(pr.Total), 1)
		}
		line = fmt.Sprintf("extracting: %s of %s (%3.0f%%)", humanBytes(pr.Done), humanBytes(pr.Total), 100*frac)
		line += p.rate.line(now, pr.Phase, pr.Done, pr.Total)
	default:
		line = fmt.Sprintf("replaying WAL: %s of %s", pr.ReplayLSN, pr.EndLSN)
		if pr.EndLSN > 0 && pr.ReplayLSN <= pr.EndLSN {
			line += fmt.Sprintf(" (%s to go)", humanBytes(int64(pr.EndLSN-pr.ReplayLSN)))
			line += p.rate.line(now, pr.Phase, int64(pr.ReplayLSN), int64(pr.EndLSN))
		}
		if pr.LastCommit != nil {
			line += ", last commit " + pr.LastCommit.UTC().Format("2006-01-02 15:04:05Z")
		}
	}
	p.draw(line)
}

// draw replaces the line on the terminal by line and the elapsed time.
func (p *restoreProgress) draw(line string) {
	line += fmt.Sprintf(" [%s]", time.Since(p.start).Round(time.Second))
	p.lastLine = len(line)
	stderrConsole.Draw(line)
}

func (p *restoreProgress) finish() {
	if p.lastLine > 0 {
		stderrConsole.Done()
	}
}
