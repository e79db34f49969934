// Package drill restores the newest backup to the latest point into a
// scratch directory, checks the result the way a Synapse admin would (the
// database opens, pg_amcheck passes, core tables have rows, one-time keys
// are gone), reports how long each phase took (the measured recovery time)
// and cleans up. A backup nobody has restored is a hope; a drill makes it a
// measurement.
package drill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/restore"
)

// DefaultTables are the core Synapse tables that must hold rows.
var DefaultTables = []string{"events", "users", "rooms"}

// Options configure a drill.
type Options struct {
	// Repo is the repository; the drill's restore is its only reader and
	// serves the WAL to the scratch server itself (restore.Options).
	Repo *repo.Repo
	// Prefetch is how many segments the restore fetches ahead of replay.
	Prefetch int
	// ScratchDir is where the scratch directory is made (default the
	// system's temporary directory); the server's OS user must be able to
	// traverse it.
	ScratchDir string
	// Executable is the synbak binary restore_command runs; BinDir the
	// PostgreSQL binaries (restore's defaults when empty).
	Executable, BinDir string
	// Tables must exist and hold rows (default DefaultTables).
	Tables []string
	// Keep keeps the scratch directory (the data directory and logs).
	Keep     bool
	Log      *slog.Logger
	Progress func(restore.Progress)
}

// Check is one check's outcome.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Report is a drill's outcome.
type Report struct {
	OK bool `json:"ok"`
	// Problems are the failed checks, or the restore's error.
	Problems []string       `json:"problems"`
	Checks   []Check        `json:"checks"`
	Restore  restore.Report `json:"restore"`
	// RTOSeconds is the whole restore with its checks: the recovery time
	// this repository gives.
	RTOSeconds float64   `json:"rto_seconds"`
	Started    time.Time `json:"started"`
	// Dir is the scratch directory (removed unless Keep).
	Dir string `json:"dir"`
}

// Run runs a drill. It returns an error only when the drill could not run
// (no scratch directory); a failed restore or check is in Report.
func Run(ctx context.Context, opts Options) (Report, error) {
	rep := Report{Started: time.Now().UTC(), Problems: []string{}, Checks: []Check{}}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if len(opts.Tables) == 0 {
		opts.Tables = DefaultTables
	}
	dir, err := os.MkdirTemp(opts.ScratchDir, "synbak-drill-")
	if err != nil {
		return rep, fmt.Errorf("drill scratch directory: %w", err)
	}
	rep.Dir = dir
	// The restored server runs as its own OS user: it must reach pgdata.
	if err := os.Chmod(dir, 0o711); err != nil {
		return rep, err
	}
	if !opts.Keep {
		defer os.RemoveAll(dir)
	}
	start := time.Now()
	rr, err := restore.Run(ctx, restore.Options{
		Repo: opts.Repo, Prefetch: opts.Prefetch, Target: restore.Point{Latest: true},
		PGData: filepath.Join(dir, "data"), WorkDir: filepath.Join(dir, "work"),
		Executable: opts.Executable, BinDir: opts.BinDir, Log: opts.Log, Progress: opts.Progress,
		KeepFailed: opts.Keep, KeepHint: "run synbak drill --keep",
		Check: func(ctx context.Context, s restore.Running) error {
			rep.Checks = checks(ctx, s, opts.Tables)
			return nil
		},
	})
	rep.RTOSeconds = time.Since(start).Seconds()
	rep.Restore = rr
	if err != nil {
		rep.Problems = append(rep.Problems, "restore failed: "+err.Error())
	}
	for _, c := range rep.Checks {
		if !c.OK {
			rep.Problems = append(rep.Problems, c.Name+": "+c.Detail)
		}
	}
	if err == nil && len(rep.Checks) == 0 {
		rep.Problems = append(rep.Problems, "the checks did not run")
	}
	rep.OK = len(rep.Problems) == 0
	return rep, nil
}

// checks examines the restored server.
func checks(ctx context.Context, s restore.Running, tables []string) []Check {
	var out []Check
	add := func(name string, err error, detail string) {
		c := Check{Name: name, OK: err == nil, Detail: detail}
		if err != nil {
			c.Detail = err.Error()
		}
		out = append(out, c)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, s.ConnString(s.Database))
	cancel()
	add("database "+s.Database+" opens", err, "connected")
	if err != nil {
		return out
	}
	defer conn.Close(context.Background())
	for _, t := range tables {
		var n int64
		err := conn.QueryRow(ctx, "select count(*) from "+pgx.Identifier{t}.Sanitize()).Scan(&n)
		if err == nil && n == 0 {
			err = fmt.Errorf("table %s is empty", t)
		}
		add("table "+t+" has rows", err, fmt.Sprintf("%d %s", n, map[bool]string{true: "row", false: "rows"}[n == 1]))
	}
	var keys int64
	err = conn.QueryRow(ctx, "select count(*) from e2e_one_time_keys_json").Scan(&keys)
	if err == nil && keys != 0 {
		err = fmt.Errorf("e2e_one_time_keys_json has %d rows after the restore", keys)
	}
	add("one-time keys emptied", err, "0 rows")

	amcheck := filepath.Join(s.BinDir, "pg_amcheck")
	if _, serr := os.Stat(amcheck); serr != nil {
		out = append(out, Check{Name: "pg_amcheck", OK: true, Detail: "skipped: " + amcheck + " not installed"})
		return out
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(actx, amcheck, "--install-missing", "-h", s.SocketDir, "-p", fmt.Sprint(s.Port), "-U", s.User, "-d", s.Database)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	b, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("pg_amcheck found corruption or failed (exit %d): %s", ee.ExitCode(), lastLines(string(b), 10))
		}
	}
	add("pg_amcheck on "+s.Database, err, "no corruption found")
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// String renders the report for the terminal.
func (r Report) String() string {
	var sb strings.Builder
	if r.Restore.Plan.BackupID != "" {
		fmt.Fprintf(&sb, "Drill: restored backup %s%s to the end of the archive", r.Restore.Plan.BackupID, r.Restore.Plan.ChainNote())
		if r.Restore.RecoveryTime != nil {
			fmt.Fprintf(&sb, " (last commit %s)", r.Restore.RecoveryTime.UTC().Format(time.RFC3339))
		}
		sb.WriteString("\n")
	}
	for _, p := range r.Restore.Phases {
		fmt.Fprintf(&sb, "  %-16s %.1fs\n", p.Name+":", p.Seconds)
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&sb, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	if r.OK {
		fmt.Fprintf(&sb, "RTO (restore and checks): %.1fs\n", r.RTOSeconds)
	} else {
		fmt.Fprintf(&sb, "FAILED after %.1fs (no RTO: the drill did not pass)\n", r.RTOSeconds)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&sb, "PROBLEM: %s\n", p)
	}
	if r.OK {
		sb.WriteString("OK: the newest backup restores and checks out.\n")
	}
	return sb.String()
}
