package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/proc"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/wal"
)

// Options configure Run and Prepare.
type Options struct {
	// Repo is the repository restored from. The restore is its only
	// reader: it serves the WAL to the restored server's restore_command
	// over a private socket, so the server's OS user never needs the
	// repository, its credentials or the age identity.
	Repo *repo.Repo
	// Prefetch is how many of the plan's segments are fetched ahead of
	// the one replay asks for (wal.prefetch; 0: none).
	Prefetch int
	Target   Point
	// PGData is the new data directory: missing or empty.
	PGData string
	// WorkDir holds what the restore needs outside PGData: the server log
	// (which stays) and the WAL staged for restore_command (the restore's
	// own, removed when it ends); missing or empty. Default: PGData +
	// ".synbak-restore".
	WorkDir string
	// MediaDir, when set, receives the media store as of the target.
	MediaDir string
	// ConfigDir, when set, receives the config files and signing key as
	// of the target (confsnap.Restore: DIR/<original absolute path> and
	// DIR/synbak-manifest.json).
	ConfigDir string
	// NewSigningKey replaces the restored signing key by a new one and
	// lists the old one in old_signing_keys (needs ConfigDir).
	NewSigningKey bool
	// Port is the restored server's TCP port on 127.0.0.1 (0: a free one).
	Port int
	// BinDir holds postgres; default /usr/lib/postgresql/<major>/bin.
	BinDir string
	// Executable is the synbak binary restore_command runs (as the
	// server's OS user, which must be able to execute it); default
	// os.Executable().
	Executable string
	// Database is the Synapse database when the backup does not record it
	// (fact main_database); default "synapse".
	Database string
	// User is the database superuser to connect as; default "postgres".
	User string
	// LeaveRunning keeps the restored server running (with the restore's
	// private settings) after the restore.
	LeaveRunning bool
	// KeepHint is what the error of a failed restore says to run to keep
	// what it wrote (default: the restore command's --keep-failed).
	KeepHint string
	// KeepFailed keeps what a failed restore wrote (the data directory,
	// the work directory with the server log) for inspection; by default
	// a failed restore removes it, leaving the directories as they were.
	KeepFailed bool
	Log        *slog.Logger
	// Check, when not nil, runs after the Synapse fix-ups while the
	// restored server still runs (restore drills check it); an error
	// fails the restore.
	Check func(ctx context.Context, s Running) error
	// Progress, when not nil, receives the restore's progress: often
	// during extraction, about twice a second during recovery. The command
	// line draws it on a terminal.
	Progress func(Progress)

	// afterPlan, when not nil, runs after planning (tests change the
	// repository there).
	afterPlan func()
}

// Running is the restored server while Options.Check runs: reachable over
// its private socket only.
type Running struct {
	Port      int
	SocketDir string
	User      string
	BinDir    string
	// Database is the Synapse database.
	Database string
}

// ConnString is a libpq conninfo for dbname on the running server.
func (r Running) ConnString(dbname string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=5", r.SocketDir, r.Port, r.User, dbname)
}

// Progress is a snapshot of a running restore.
type Progress struct {
	// Phase is "extract" or "recovery".
	Phase string
	// Done and Total are archive bytes extracted (phase extract).
	Done, Total int64
	// ReplayLSN is the last WAL position replayed and EndLSN the end of the
	// WAL the plan may replay (phase recovery); LastCommit the newest
	// replayed commit's time, when known.
	ReplayLSN, EndLSN pglogrepl.LSN
	LastCommit        *time.Time
}

// Phase is how long one step of the restore took.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// Report says what a restore did.
type Report struct {
	Plan Plan `json:"plan"`
	// PGData is the restored data directory.
	PGData string `json:"pgdata"`
	// RecoveryLSN and RecoveryTime are the recovery point reached: the last
	// replayed WAL position and the last replayed commit's time.
	RecoveryLSN  pglogrepl.LSN `json:"recovery_lsn"`
	RecoveryTime *time.Time    `json:"recovery_time,omitempty"`
	// EndOfArchive is set when the target lay after the newest archived
	// commit and the restore recovered to the end of the archive instead.
	EndOfArchive bool `json:"end_of_archive"`
	// Database is the Synapse database; OneTimeKeysRemoved the rows of
	// e2e_one_time_keys_json truncated.
	Database           string `json:"database"`
	OneTimeKeysRemoved int64  `json:"one_time_keys_removed"`
	// MediaFiles and MediaBytes were restored into MediaDir (MediaSkipped:
	// no MediaDir given).
	MediaSkipped bool  `json:"media_skipped"`
	MediaFiles   int   `json:"media_files"`
	MediaBytes   int64 `json:"media_bytes"`
	// ConfigFiles were restored into ConfigDir from the snapshot of
	// ConfigSnapshot (ConfigSkipped: no ConfigDir given); SigningKey says
	// what NewSigningKey did.
	ConfigSkipped  bool                `json:"config_skipped"`
	ConfigFiles    int                 `json:"config_files"`
	ConfigMissing  int                 `json:"config_missing"`
	ConfigSnapshot *time.Time          `json:"config_snapshot,omitempty"`
	SigningKey     *confsnap.KeyChange `json:"new_signing_key,omitempty"`
	// Running says the server was left running on Port with its socket in
	// SocketDir.
	Running   bool   `json:"running"`
	Port      int    `json:"port"`
	SocketDir string `json:"socket_dir,omitempty"`
	LogFile   string `json:"log_file"`
	// MediaOwner is the uid:gid the media files were given (root
	// restores: the recorded owner of the signing key).
	MediaOwner string `json:"media_owner,omitempty"`
	// Chown says what the admin must give to whom before the
	// distribution's services use what was restored.
	Chown    []string `json:"chown,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	Phases   []Phase  `json:"phases"`
}

// MarshalJSON writes the report with its LSN as X/X ("" when none was
// read).
func (rp Report) MarshalJSON() ([]byte, error) {
	type plain Report
	v := struct {
		plain
		RecoveryLSN string `json:"recovery_lsn"`
	}{plain: plain(rp)}
	if rp.RecoveryLSN != 0 {
		v.RecoveryLSN = rp.RecoveryLSN.String()
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (rp *Report) UnmarshalJSON(data []byte) error {
	type plain Report
	v := struct {
		*plain
		RecoveryLSN string `json:"recovery_lsn"`
	}{plain: (*plain)(rp)}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	var err error
	rp.RecoveryLSN, err = parseLSN("recovery_lsn", v.RecoveryLSN)
	return err
}

// String renders the report for the terminal.
func (rp Report) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Restored backup %s%s to %s\n", rp.Plan.BackupID, rp.Plan.ChainNote(), rp.Plan.Target)
	when := "unknown (no transaction replayed after the backup)"
	if rp.RecoveryTime != nil {
		when = rp.RecoveryTime.UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(&sb, "  recovery point:  LSN %s, last commit %s\n", rp.RecoveryLSN, when)
	if rp.EndOfArchive {
		fmt.Fprintf(&sb, "  the target is after the newest archived commit: restored to the end of the archive\n")
	}
	fmt.Fprintf(&sb, "  one-time keys:   %s removed from e2e_one_time_keys_json in %s\n", countOf(int(rp.OneTimeKeysRemoved), "row", "rows"), rp.Database)
	if rp.MediaSkipped {
		fmt.Fprintf(&sb, "  media:           skipped (no --media-dir)\n")
	} else {
		fmt.Fprintf(&sb, "  media:           %d files, %d bytes\n", rp.MediaFiles, rp.MediaBytes)
	}
	switch {
	case rp.ConfigSkipped:
		fmt.Fprintf(&sb, "  config files:    skipped (no --config-dir)\n")
	default:
		fmt.Fprintf(&sb, "  config files:    %d files (%d missing at the time) from the snapshot of %s\n", rp.ConfigFiles, rp.ConfigMissing, rp.ConfigSnapshot.UTC().Format(time.RFC3339))
	}
	if k := rp.SigningKey; k != nil {
		fmt.Fprintf(&sb, "  signing key:     new key written to %s; the old one added to old_signing_keys in %s\n", k.KeyFile, k.ConfigFile)
	}
	for _, w := range rp.Warnings {
		fmt.Fprintf(&sb, "  WARNING: %s\n", w)
	}
	for _, p := range rp.Phases {
		fmt.Fprintf(&sb, "  %-16s %.1fs\n", p.Name+":", p.Seconds)
	}
	for _, c := range rp.Chown {
		fmt.Fprintf(&sb, "  ownership:       %s\n", c)
	}
	fmt.Fprintf(&sb, "  server log:      %s\n", rp.LogFile)
	if rp.Running {
		fmt.Fprintf(&sb, "The server is running on 127.0.0.1:%d with the restore's private settings at the end of postgresql.auto.conf.\n", rp.Port)
		fmt.Fprintf(&sb, "  connect:  psql -h %s -p %d -U postgres   (its private socket; run as the server's OS user)\n", rp.SocketDir, rp.Port)
		fmt.Fprintf(&sb, "  finish:   stop it (pg_ctl -D %s stop -m fast, as the server's OS user); delete the lines from %q to the end of %s; remove %s; then start it with the production configuration\n",
			shellQuote(rp.PGData), privateMarker, filepath.Join(rp.PGData, "postgresql.auto.conf"), rp.SocketDir)
	}
	sb.WriteString("Before production use: check postgresql.conf and pg_hba.conf, listen_addresses and port, and replication/archiving settings; start Synapse only after that.\n")
	return sb.String()
}

func (o *Options) defaults() error {
	if o.Repo == nil {
		return errors.New("restore: no repository")
	}
	if o.PGData == "" {
		return errors.New("restore: the data directory (--pgdata) is required")
	}
	var err error
	if o.PGData, err = filepath.Abs(o.PGData); err != nil {
		return err
	}
	if o.WorkDir == "" {
		o.WorkDir = filepath.Clean(o.PGData) + ".synbak-restore"
	}
	if o.WorkDir, err = filepath.Abs(o.WorkDir); err != nil {
		return err
	}
	if o.MediaDir != "" {
		if o.MediaDir, err = filepath.Abs(o.MediaDir); err != nil {
			return err
		}
	}
	if o.ConfigDir != "" {
		if o.ConfigDir, err = filepath.Abs(o.ConfigDir); err != nil {
			return err
		}
	}
	if o.NewSigningKey && o.ConfigDir == "" {
		return errors.New("restore: a new signing key needs the config files restored (--config-dir)")
	}
	if o.User == "" {
		o.User = "postgres"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// CheckEmpty returns an ErrNotEmpty error unless dir is missing or an
// empty directory (what names it in the message).
func CheckEmpty(what, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err == nil {
		return fmt.Errorf("%w: %s %s has a postmaster.pid: a server may be running on it; restore never writes into an existing cluster", ErrNotEmpty, what, dir)
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%s %s: %w (it must be a missing or empty directory)", what, dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%w: %s %s holds %s and %d more entries: restore only writes into a missing or empty directory; choose another or empty it", ErrNotEmpty, what, dir, entries[0].Name(), len(entries)-1)
	}
	return nil
}

// Prepare makes every check Run makes before writing anything (targets
// missing or empty, the port, the plan with WAL continuity, the server
// binaries, that the server's OS user can reach the data directory, and
// restore_command end to end: run as the server's OS user, it fetches the
// plan's first segment from a WAL server like the one Run starts, in a
// temporary socket directory it removes) and returns the plan. It writes
// nothing else.
func Prepare(ctx context.Context, opts Options) (Plan, error) {
	if err := opts.defaults(); err != nil {
		return Plan{}, err
	}
	c, err := opts.prepare(ctx)
	if err != nil {
		return Plan{}, err
	}
	sock, err := makeSocketDir(c.owner)
	if err != nil {
		return Plan{}, err
	}
	defer os.RemoveAll(sock)
	staging, err := os.MkdirTemp("", "synbak-restore-staging-")
	if err != nil {
		return Plan{}, err
	}
	defer os.RemoveAll(staging)
	ws, err := newWALServer(c.fetcher, sock, staging, c.owner, nil, 0, opts.Log)
	if err != nil {
		return Plan{}, err
	}
	defer ws.close()
	if err := giveSocketDir(sock, c.owner); err != nil {
		return Plan{}, err
	}
	if err := c.probe(ctx, sock); err != nil {
		return Plan{}, err
	}
	return c.plan, nil
}

// prepared is what the checks found.
type prepared struct {
	plan    Plan
	owner   *Owner
	pgBin   string
	exe     string
	fetcher *wal.Fetcher
}

func (o *Options) prepare(ctx context.Context) (*prepared, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	p, err := NewPlan(ctx, o.Repo, o.Target)
	if err != nil {
		return nil, err
	}
	for _, a := range p.Backup().Archives {
		if a.TablespaceOID != 0 {
			if err := CheckEmpty(fmt.Sprintf("tablespace %d directory", a.TablespaceOID), TablespaceDir(o.PGData, a.TablespaceOID)); err != nil {
				return nil, err
			}
		}
	}
	c := &prepared{plan: p}
	if c.pgBin, err = o.postgresBinary(p); err != nil {
		return nil, err
	}
	if c.owner, err = serverUser(); err != nil {
		return nil, err
	}
	c.exe = o.Executable
	if c.exe == "" {
		if c.exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the synbak binary for restore_command: %w", err)
		}
	}
	if c.exe, err = filepath.Abs(c.exe); err != nil {
		return nil, err
	}
	if c.owner != nil {
		dirs := []string{o.PGData}
		for _, a := range p.Backup().Archives {
			if a.TablespaceOID != 0 {
				dirs = append(dirs, TablespaceDir(o.PGData, a.TablespaceOID))
			}
		}
		for _, d := range dirs {
			if err := reachable(ctx, c.owner, d); err != nil {
				return nil, err
			}
		}
	}
	if c.fetcher, err = wal.NewFetcher(ctx, o.Repo, "", 0, o.Log); err != nil {
		return nil, err
	}
	return c, nil
}

// reachable checks that owner can enter dir's nearest existing ancestor
// (dir itself is created and given to owner by the restore).
func reachable(ctx context.Context, owner *Owner, dir string) error {
	d := filepath.Dir(dir)
	for {
		if _, err := os.Stat(d); err == nil || d == "/" {
			break
		}
		d = filepath.Dir(d)
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `cd -- "$1"`, "sh", d)
	asOwner(cmd, owner)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("the restored server runs as the postgres OS user, which cannot reach %s (%v: %s): choose a directory it can traverse (e.g. under /var/lib/postgresql), or give it search permission on %s", dir, err, strings.TrimSpace(string(out)), d)
	}
	return nil
}

// makeSocketDir makes the server's private socket directory, which also
// holds the WAL socket and the private pg_hba.conf: short (sun_path holds
// about 107 bytes), 0700. It stays this process's until giveSocketDir, so
// that what the restore puts in it cannot be swapped for a symlink by the
// server's user first.
func makeSocketDir(_ *Owner) (string, error) {
	return os.MkdirTemp("/tmp", "synbak-restore-")
}

// giveSocketDir gives the socket directory to the server's user.
func giveSocketDir(sock string, owner *Owner) error {
	if err := (&extractor{owner: owner}).chown(sock); err != nil {
		os.RemoveAll(sock)
		return err
	}
	return nil
}

// privateHBAName is the private pg_hba.conf in the socket directory.
const privateHBAName = "pg_hba.private.conf"

// writePrivateHBA writes the private pg_hba.conf into the socket directory
// while it is still this process's.
func writePrivateHBA(sock string, owner *Owner) error {
	return (&extractor{owner: owner}).writeFile(filepath.Join(sock, privateHBAName), []byte(privateHBA), 0o600)
}

// restoreCommand is the restored server's restore_command.
func restoreCommand(exe, sockDir string) string {
	return fmt.Sprintf("%s wal-fetch --socket %s %%f %%p", shellQuote(exe), shellQuote(sockDir))
}

// probe runs restore_command as the server's OS user for the plan's first
// segment, into the socket directory.
func (c *prepared) probe(ctx context.Context, sockDir string) error {
	dest := filepath.Join(sockDir, "probe")
	defer os.Remove(dest)
	cmd := exec.CommandContext(ctx, c.exe, "wal-fetch", "--socket", sockDir, c.plan.FirstSegment, dest)
	cmd.Dir = sockDir
	asOwner(cmd, c.owner)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	who := "this user"
	if c.owner != nil {
		who = "the postgres OS user"
	}
	return fmt.Errorf("restore_command would fail: `%s` run as %s: %v: %s (%s must be able to run %s: install synbak where every user can run it, e.g. /usr/local/bin)",
		strings.ReplaceAll(restoreCommand(c.exe, sockDir), "%f %p", c.plan.FirstSegment+" "+dest), who, err, strings.TrimSpace(string(out)), who, c.exe)
}

func (o *Options) check() error {
	if err := CheckEmpty("data directory", o.PGData); err != nil {
		return err
	}
	if err := CheckEmpty("restore work directory", o.WorkDir); err != nil {
		return err
	}
	if o.MediaDir != "" {
		if err := CheckEmpty("media directory", o.MediaDir); err != nil {
			return err
		}
	}
	if o.ConfigDir != "" {
		if err := CheckEmpty("config directory", o.ConfigDir); err != nil {
			return err
		}
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("restore: port %d: give a TCP port between 1 and 65535 (or 0 for a free one)", o.Port)
	}
	if o.Port != 0 {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.Port))
		if err != nil {
			return fmt.Errorf("restore: port %d on 127.0.0.1 is not free for the restored server (%v): choose another with --port, or leave it out for a free one", o.Port, err)
		}
		l.Close()
	}
	return nil
}

func (o *Options) postgresBinary(p Plan) (string, error) {
	dir := o.BinDir
	if dir == "" {
		dir = fmt.Sprintf("/usr/lib/postgresql/%d/bin", p.PGVersion/10000)
	}
	bin := filepath.Join(dir, "postgres")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return "", fmt.Errorf("the backup is of PostgreSQL %s, but %s is missing: install that major version's server (Debian: postgresql-%d) or give its directory with --pg-bindir", PGVersionString(p.PGVersion), bin, p.PGVersion/10000)
	}
	return bin, nil
}

// serverUser returns who runs the restored server: postgres when root.
func serverUser() (*Owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, the restored server must run as the postgres OS user, which does not exist: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("postgres user: bad uid/gid %s/%s", u.Uid, u.Gid)
	}
	return &Owner{UID: uid, GID: gid}, nil
}

func asOwner(cmd *exec.Cmd, o *Owner) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if o != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(o.GID)}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
}

// Run restores: checks, plan, extraction, recovery to the target with
// PostgreSQL, the Synapse fix-ups, media. It never writes into a non-empty
// directory. On a failure after the plan it stops the server and removes
// what it wrote (the data directory, the work directory, tablespaces, the
// media and config targets; a directory that existed before is emptied),
// unless Options.KeepFailed keeps them for inspection.
func Run(ctx context.Context, opts Options) (rep Report, err error) {
	if err := opts.defaults(); err != nil {
		return rep, err
	}
	log := opts.Log
	phase := func(name string, start time.Time) {
		rep.Phases = append(rep.Phases, Phase{Name: name, Seconds: time.Since(start).Seconds()})
	}
	start := time.Now()
	c, err := opts.prepare(ctx)
	if err != nil {
		return rep, err
	}
	plan, owner := c.plan, c.owner
	rep.Plan = plan
	rep.PGData = opts.PGData
	phase("plan", start)
	if opts.afterPlan != nil {
		opts.afterPlan()
	}

	// From here on the restore writes: a failure undoes it.
	dirs := []string{opts.PGData, opts.WorkDir}
	for _, a := range plan.Backup().Archives {
		if a.TablespaceOID != 0 {
			dirs = append(dirs, TablespaceDir(opts.PGData, a.TablespaceOID))
		}
	}
	if opts.MediaDir != "" {
		dirs = append(dirs, opts.MediaDir)
	}
	if opts.ConfigDir != "" {
		dirs = append(dirs, opts.ConfigDir)
	}
	existed := map[string]bool{}
	for _, d := range dirs {
		_, statErr := os.Stat(d)
		existed[d] = statErr == nil
	}
	defer func() {
		if err == nil || opts.KeepFailed {
			return
		}
		for _, d := range dirs {
			if existed[d] {
				ents, _ := os.ReadDir(d)
				for _, e := range ents {
					_ = os.RemoveAll(filepath.Join(d, e.Name()))
				}
			} else {
				_ = os.RemoveAll(d)
			}
		}
		hint := opts.KeepHint
		if hint == "" {
			hint = "run it with --keep-failed"
		}
		err = fmt.Errorf("%w\n(the restore removed what it had written; %s to keep the data directory and server log)", err, hint)
	}()

	// The work directory is the restore's own (the server's user never
	// opens it: its log is handed over as an open file): the server log,
	// and the WAL staged for restore_command, removed at the end.
	start = time.Now()
	if err := (&extractor{}).prepareDir(opts.WorkDir); err != nil {
		return rep, err
	}
	staging := filepath.Join(opts.WorkDir, "wal")
	if err := os.Mkdir(staging, 0o700); err != nil {
		return rep, err
	}
	sockDir, err := makeSocketDir(owner)
	if err != nil {
		return rep, err
	}
	defer func() {
		if err != nil || !opts.LeaveRunning {
			_ = os.RemoveAll(sockDir)
		}
	}()
	// Staged beside the data directory, on its file system as a rule:
	// restore_command then links each file into pg_wal without a copy.
	ws, err := newWALServer(c.fetcher, sockDir, staging, owner, plan.segments, opts.Prefetch, log)
	if err != nil {
		return rep, err
	}
	defer func() {
		ws.close()
		_ = os.RemoveAll(staging)
	}()
	if err := writePrivateHBA(sockDir, owner); err != nil {
		return rep, err
	}
	if err := giveSocketDir(sockDir, owner); err != nil {
		return rep, err
	}
	// Check, as the server's user, that restore_command works: fetch the
	// first segment the recovery needs.
	if err := c.probe(ctx, sockDir); err != nil {
		return rep, err
	}
	ws.resetServed()
	ws.startPrefetch()

	b := plan.Backup()
	log.Info("extracting base backup", "backup", b.ID, "kind", b.KindName(), "chain", len(plan.BackupChain()), "pgdata", opts.PGData)
	xopts := ExtractOptions{Owner: owner, Chain: plan.BackupChain()}
	if opts.Progress != nil {
		var total int64
		for _, m := range plan.BackupChain() {
			total += m.Size() - m.Manifest.Size // the manifest is not extracted
		}
		xopts.Progress = func(done int64) { opts.Progress(Progress{Phase: "extract", Done: done, Total: total}) }
	}
	if err := Extract(ctx, opts.Repo, b, opts.PGData, xopts, log); err != nil {
		return rep, err
	}
	phase("extract", start)
	if len(plan.BackupChain()) > 1 {
		rep.Warnings = append(rep.Warnings, "restored from an incremental chain: the visibility maps of tables written to since the full backup were left out (PostgreSQL's incremental backups can carry stale ones); run `vacuumdb --all` once the server is in service to rebuild them")
	}

	start = time.Now()
	srv, err := opts.configure(plan, owner, restoreCommand(c.exe, sockDir), sockDir)
	if err != nil {
		return rep, err
	}
	srv.bin = c.pgBin
	rep.Port, rep.SocketDir, rep.LogFile = srv.port, srv.sockDir, srv.logFile
	srv.dieWithUs = !opts.LeaveRunning
	if err := srv.start(); err != nil {
		return rep, err
	}
	defer func() {
		if err == nil && opts.LeaveRunning {
			return
		}
		start := time.Now()
		if serr := srv.stop(); serr != nil && err == nil {
			err = serr
		}
		if err == nil {
			err = srv.removePrivate()
		}
		if err == nil {
			rep.Running = false
			rep.SocketDir = ""
			phase("stop", start)
		}
	}()
	rep.Running = true
	if opts.Progress != nil {
		endLSN := plan.ArchiveEndLSN
		srv.progress = func(replay pglogrepl.LSN, commit *time.Time) {
			opts.Progress(Progress{Phase: "recovery", ReplayLSN: replay, EndLSN: endLSN, LastCommit: commit})
		}
	}
	endOfArchive, err := srv.waitPromoted(ctx, log, !opts.Target.Latest)
	if err != nil {
		if f, ferr := ws.lastFailure(); f != "" {
			err = fmt.Errorf("serving WAL file %s to the restored server failed: %w; %w", f, ferr, err)
		}
		return rep, err
	}
	rep.EndOfArchive = endOfArchive
	if err := srv.checkReached(ctx, plan, endOfArchive, ws); err != nil {
		return rep, err
	}
	phase("recovery", start)

	start = time.Now()
	db := b.Facts["main_database"]
	if db == "" {
		db = opts.Database
	}
	if db == "" {
		db = "synapse"
	}
	rep.Database = db
	if err := srv.fixups(ctx, &rep); err != nil {
		return rep, err
	}
	phase("synapse fix-ups", start)
	if opts.Check != nil {
		start = time.Now()
		if err := opts.Check(ctx, Running{Port: srv.port, SocketDir: srv.sockDir, User: srv.user, BinDir: filepath.Dir(c.pgBin), Database: db}); err != nil {
			return rep, err
		}
		phase("checks", start)
	}

	at := opts.Target.Time
	if opts.Target.LSN != 0 && rep.RecoveryTime != nil {
		at = *rep.RecoveryTime
	}
	// The Synapse user's ids, as the config snapshot recorded the signing
	// key's owner: media files get them when root restores.
	var synapseOwner *Owner
	if opts.ConfigDir == "" {
		rep.ConfigSkipped = true
	} else {
		start = time.Now()
		m, err := confsnap.Restore(ctx, opts.Repo, at, opts.ConfigDir)
		if err != nil {
			return rep, fmt.Errorf("restore config files into %s: %w", opts.ConfigDir, err)
		}
		rep.ConfigFiles, rep.ConfigMissing = len(m.Files), len(m.Missing)
		snap := m.SnapshotTime
		rep.ConfigSnapshot = &snap
		for _, f := range m.Files {
			if f.Role == "signing_key" {
				synapseOwner = &Owner{UID: f.UID, GID: f.GID}
			}
		}
		if opts.NewSigningKey {
			kc, err := confsnap.NewSigningKey(opts.ConfigDir, confsnap.KeyOptions{})
			if err != nil {
				return rep, fmt.Errorf("new signing key in %s: %w", opts.ConfigDir, err)
			}
			rep.SigningKey = &kc
		}
		if os.Geteuid() == 0 {
			// Each file gets the owner recorded with it.
			for _, f := range m.Files {
				p := filepath.Join(opts.ConfigDir, filepath.FromSlash(strings.TrimPrefix(f.Path, "/")))
				if err := os.Lchown(p, f.UID, f.GID); err != nil && !errors.Is(err, os.ErrNotExist) {
					return rep, fmt.Errorf("give %s its recorded owner %d:%d: %w", p, f.UID, f.GID, err)
				}
			}
		}
		phase("config", start)
	}
	if opts.MediaDir == "" {
		rep.MediaSkipped = true
	} else {
		start = time.Now()
		mr, err := mediawatch.Restore(ctx, opts.Repo, at, opts.MediaDir)
		if err != nil {
			return rep, fmt.Errorf("restore media into %s: %w", opts.MediaDir, err)
		}
		rep.MediaFiles, rep.MediaBytes = mr.Files, mr.Bytes
		if os.Geteuid() == 0 && synapseOwner != nil {
			if err := chownTree(opts.MediaDir, *synapseOwner); err != nil {
				return rep, err
			}
			rep.MediaOwner = fmt.Sprintf("%d:%d", synapseOwner.UID, synapseOwner.GID)
		}
		phase("media", start)
	}
	rep.Chown = chownHint(opts, plan, owner, synapseOwner)
	if opts.LeaveRunning {
		// Replay is over: restore_command goes, with its socket.
		ws.close()
		if err := srv.dropRecoverySettings(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// chownTree gives every file and directory under dir to o.
func chownTree(dir string, o Owner) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, o.UID, o.GID); err != nil {
			return fmt.Errorf("give %s to %d:%d: %w", p, o.UID, o.GID, err)
		}
		return nil
	})
}

// chownHint says what the admin must chown before the distribution's
// services run what was restored.
func chownHint(opts Options, plan Plan, owner, synapseOwner *Owner) []string {
	var out []string
	if owner == nil {
		u := "this user"
		if cu, err := user.Current(); err == nil {
			u = cu.Username
		}
		dirs := []string{shellQuote(opts.PGData)}
		for _, a := range plan.Backup().Archives {
			if a.TablespaceOID != 0 {
				dirs = append(dirs, shellQuote(TablespaceDir(opts.PGData, a.TablespaceOID)))
			}
		}
		out = append(out, fmt.Sprintf("the data directory belongs to %s (who ran the restore); before the distribution's service starts it: chown -R postgres:postgres %s", u, strings.Join(dirs, " ")))
	}
	switch {
	case opts.MediaDir == "":
	case synapseOwner == nil:
		out = append(out, fmt.Sprintf("the media store has no recorded owner: before Synapse uses it: chown -R matrix-synapse: %s (or Synapse's user)", shellQuote(opts.MediaDir)))
	case owner == nil:
		out = append(out, fmt.Sprintf("the media store belongs to who ran the restore: before Synapse uses it: chown -R %d:%d %s (the signing key's recorded owner, Synapse's user)", synapseOwner.UID, synapseOwner.GID, shellQuote(opts.MediaDir)))
	}
	if opts.ConfigDir != "" && owner == nil {
		out = append(out, fmt.Sprintf("the config files belong to who ran the restore; %s lists each file's recorded owner", filepath.Join(opts.ConfigDir, confsnap.ManifestName)))
	}
	return out
}

// shellQuote quotes s for /bin/sh (restore_command runs through it).
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// server is the restored PostgreSQL while the restore runs.
type server struct {
	bin, pgdata, sockDir, logFile string
	port                          int
	owner                         *Owner
	// autoConf is postgresql.auto.conf as the backup had it.
	autoConf       []byte
	autoConfExists bool
	restoreCommand string
	private        string
	cmd            *exec.Cmd
	done           <-chan struct{}
	user           string
	dieWithUs      bool
	// progress, when not nil, receives the replay position while
	// recovery runs.
	progress func(replay pglogrepl.LSN, lastCommit *time.Time)
}

const privateMarker = "# synbak restore: private settings"

const privateHeader = "\n" + privateMarker + " of the restored server (delete from here to the end before production use)\n"

const privateHBA = "# written by synbak restore: only the restore connects, over its private socket\nlocal all all trust\n"

// configure writes the recovery settings and the private settings.
func (o *Options) configure(p Plan, owner *Owner, restoreCommand, sock string) (*server, error) {
	s := &server{pgdata: o.PGData, owner: owner, restoreCommand: restoreCommand, port: o.Port, user: o.User}
	x := &extractor{owner: owner}
	if s.port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		s.port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	s.sockDir = sock
	s.logFile = filepath.Join(o.WorkDir, "postgres.log")
	hba := filepath.Join(sock, privateHBAName) // written by writePrivateHBA
	// Debian keeps postgresql.conf and pg_hba.conf in /etc/postgresql.
	conf := filepath.Join(o.PGData, "postgresql.conf")
	if _, err := os.Stat(conf); errors.Is(err, os.ErrNotExist) {
		if err := x.writeFile(conf, []byte("# written by synbak restore: the backup held no postgresql.conf\n"), 0o600); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(o.PGData, "pg_hba.conf")); errors.Is(err, os.ErrNotExist) {
		min := "# written by synbak restore: the backup held no pg_hba.conf\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"
		if err := x.writeFile(filepath.Join(o.PGData, "pg_hba.conf"), []byte(min), 0o600); err != nil {
			return nil, err
		}
	}
	auto := filepath.Join(o.PGData, "postgresql.auto.conf")
	var err error
	s.autoConf, err = os.ReadFile(auto)
	s.autoConfExists = err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	s.private = privateSettings(s.port, s.sockDir, hba)
	if err := s.writeAuto(p.Target.recoveryTarget()); err != nil {
		return nil, err
	}
	return s, nil
}

// privateSettings are the settings the restored server runs with during
// the restore: reachable only by the restore, archiving off, messages in
// English (the restore reads the server's log).
func privateSettings(port int, sockDir, hbaFile string) string {
	var sb strings.Builder
	sb.WriteString(privateHeader)
	sb.WriteString(setting("listen_addresses", "127.0.0.1"))
	sb.WriteString(fmt.Sprintf("port = %d\n", port))
	sb.WriteString(setting("unix_socket_directories", sockDir))
	sb.WriteString(setting("hba_file", hbaFile))
	sb.WriteString("archive_mode = off\n")
	sb.WriteString(setting("synchronous_standby_names", ""))
	sb.WriteString(setting("lc_messages", "C"))
	return sb.String()
}

// writeAuto rewrites postgresql.auto.conf: the backup's content, the
// private settings, the recovery settings for target.
func (s *server) writeAuto(target Target) error {
	auto := filepath.Join(s.pgdata, "postgresql.auto.conf")
	x := &extractor{owner: s.owner}
	if err := x.writeFile(auto, append(bytes.Clone(s.autoConf), s.private...), 0o600); err != nil {
		return err
	}
	return WriteRecoveryConfig(s.pgdata, s.restoreCommand, target, s.owner)
}

// removePrivate puts back the backup's postgresql.auto.conf and removes
// the socket directory.
func (s *server) removePrivate() error {
	auto := filepath.Join(s.pgdata, "postgresql.auto.conf")
	x := &extractor{owner: s.owner}
	var err error
	if s.autoConfExists {
		err = x.writeFile(auto, s.autoConf, 0o600)
	} else {
		err = os.Remove(auto)
	}
	if err != nil {
		return fmt.Errorf("remove the restore's settings from %s: %w", auto, err)
	}
	_ = os.Remove(filepath.Join(s.pgdata, "recovery.signal"))
	return nil
}

// start starts postgres -D as a child process. With dieWithUs the server
// gets SIGQUIT if this process dies first.
func (s *server) start() error {
	logf, err := os.OpenFile(s.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := (&extractor{owner: s.owner}).chown(s.logFile); err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "-D", s.pgdata)
	asOwner(cmd, s.owner)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr.Setpgid = true
	if s.dieWithUs {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	}
	done, err := proc.Start(cmd) // Pdeathsig needs the forking thread alive
	if err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	s.cmd, s.done = cmd, done
	return nil
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop shuts the server down (fast) and waits for it.
func (s *server) stop() error {
	if s.cmd == nil || s.exited() {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return nil
	case <-time.After(2 * time.Minute):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		return fmt.Errorf("the restored server did not stop within 2 minutes; killed it")
	}
}

func (s *server) logTail(n int) string {
	data, _ := os.ReadFile(s.logFile)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *server) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return pgx.Connect(cctx, Running{SocketDir: s.sockDir, Port: s.port, User: s.user}.ConnString(db))
}

const targetNotReached = "recovery ended before configured recovery target was reached"

// waitPromoted polls pg_is_in_recovery() until false while the postmaster
// lives. When the target lies after the newest archived commit (PostgreSQL
// then stops with targetNotReached) and retryLatest, recovery is restarted
// to the end of the archive, which the plan proved complete up to the
// target; it reports that with true.
func (s *server) waitPromoted(ctx context.Context, log *slog.Logger, retryLatest bool) (bool, error) {
	endOfArchive := false
	lastProgress, lastReport := time.Now(), time.Time{}
	for {
		if s.exited() {
			tail := s.logTail(30)
			if retryLatest && !endOfArchive && strings.Contains(tail, targetNotReached) {
				log.Info("the target is after the newest archived commit: recovering to the end of the archive")
				endOfArchive = true
				if err := s.writeAuto(Target{}); err != nil {
					return true, err
				}
				if err := s.start(); err != nil {
					return true, err
				}
				continue
			}
			cause := ""
			for _, l := range strings.Split(tail, "\n") {
				if strings.HasPrefix(l, "synbak: ") && !strings.Contains(l, wal.ErrNotFound.Error()) {
					cause = "restore_command failed: " + strings.TrimPrefix(l, "synbak: ") + "; "
				}
			}
			return endOfArchive, fmt.Errorf("%sthe restored PostgreSQL server exited during recovery (%v); the end of its log %s:\n%s", cause, s.cmd.ProcessState, s.logFile, tail)
		}
		conn, err := s.connect(ctx, "postgres")
		if err == nil {
			var rec bool
			var lsn *string
			var commit *time.Time
			qerr := conn.QueryRow(ctx, "select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").Scan(&rec, &lsn, &commit)
			_ = conn.Close(context.Background())
			if qerr == nil && !rec {
				return endOfArchive, nil
			}
			if qerr == nil && lsn != nil && s.progress != nil && time.Since(lastReport) >= 500*time.Millisecond {
				if l, perr := pglogrepl.ParseLSN(*lsn); perr == nil {
					s.progress(l, commit)
				}
				lastReport = time.Now()
			}
			if qerr == nil && time.Since(lastProgress) > 5*time.Second && lsn != nil {
				log.Info("replaying WAL", "lsn", *lsn)
				lastProgress = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return endOfArchive, ctx.Err()
		case <-s.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fixups records the recovery point and empties e2e_one_time_keys_json.
func (s *server) fixups(ctx context.Context, rep *Report) error {
	conn, err := s.connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("connect to the restored server: %w", err)
	}
	var lsn *string
	var ts *time.Time
	err = conn.QueryRow(ctx, "select pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()").Scan(&lsn, &ts)
	var exists bool
	if err == nil {
		err = conn.QueryRow(ctx, "select exists (select 1 from pg_database where datname = $1)", rep.Database).Scan(&exists)
	}
	_ = conn.Close(context.Background())
	if err != nil {
		return fmt.Errorf("read the recovery point: %w", err)
	}
	if lsn != nil {
		if rep.RecoveryLSN, err = pglogrepl.ParseLSN(*lsn); err != nil {
			return fmt.Errorf("read the recovery point %q: %w", *lsn, err)
		}
	}
	if ts != nil {
		t := ts.UTC()
		rep.RecoveryTime = &t
	}
	if !exists {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("database %q does not exist in the restored cluster: e2e_one_time_keys_json not truncated", rep.Database))
		return nil
	}
	conn, err = s.connect(ctx, rep.Database)
	if err != nil {
		return fmt.Errorf("connect to the Synapse database %s: %w", rep.Database, err)
	}
	defer conn.Close(context.Background())
	var table *string
	if err := conn.QueryRow(ctx, "select to_regclass('e2e_one_time_keys_json')::text").Scan(&table); err != nil {
		return err
	}
	if table == nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("database %q has no table e2e_one_time_keys_json (not a Synapse database?): nothing truncated", rep.Database))
		return nil
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	// The lock first, so that the count is what the truncation removes.
	if _, err := tx.Exec(ctx, "LOCK TABLE e2e_one_time_keys_json IN ACCESS EXCLUSIVE MODE"); err != nil {
		return err
	}
	if err := tx.QueryRow(ctx, "select count(*) from e2e_one_time_keys_json").Scan(&rep.OneTimeKeysRemoved); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "TRUNCATE e2e_one_time_keys_json"); err != nil {
		return fmt.Errorf("truncate e2e_one_time_keys_json in %s: %w", rep.Database, err)
	}
	return tx.Commit(ctx)
}

// countOf is "1 row", "2 rows".
func countOf(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// PGVersionString turns server_version_num (150018) into "15.18".
func PGVersionString(num int) string {
	return fmt.Sprintf("%d.%d", num/10000, num%10000)
}
