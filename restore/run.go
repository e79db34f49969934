package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	// Repo is the repository restored from; RepoPath is its directory,
	// written into the restore-only configuration that wal-fetch reads.
	Repo     *repo.Repo
	RepoPath string
	// RepoConfig, when set, is the repository section of the configuration
	// restore_command's wal-fetch reads ("repository:\n  url: ...", YAML),
	// for repositories that are not a local directory; it may hold
	// credentials and is written 0600 for the server's OS user.
	RepoConfig string
	// Identity is the content of the age identity file of an encrypted
	// repository: restore_command's wal-fetch gets a copy (0600, for the
	// server's OS user) in the work directory.
	Identity []byte
	Target   Point
	// PGData is the new data directory: missing or empty.
	PGData string
	// WorkDir holds what the restore needs outside PGData (the wal-fetch
	// configuration and cache, the socket directory's log, the server
	// log); missing or empty. Default: PGData + ".synbak-restore".
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
	// Executable is the synbak binary restore_command runs (absolute);
	// default os.Executable().
	Executable string
	// Database is the Synapse database when the backup does not record it
	// (fact main_database); default "synapse".
	Database string
	// User is the database superuser to connect as; default "postgres".
	User string
	// LeaveRunning keeps the restored server running (with the restore's
	// private settings) after the restore.
	LeaveRunning bool
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
	// RecoveryLSN and RecoveryTime are the recovery point reached: the last
	// replayed WAL position and the last replayed commit's time.
	RecoveryLSN  string     `json:"recovery_lsn"`
	RecoveryTime *time.Time `json:"recovery_time,omitempty"`
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
	Running   bool     `json:"running"`
	Port      int      `json:"port"`
	SocketDir string   `json:"socket_dir,omitempty"`
	LogFile   string   `json:"log_file"`
	Warnings  []string `json:"warnings,omitempty"`
	Phases    []Phase  `json:"phases"`
}

// String renders the report for the terminal.
func (rp Report) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Restored backup %s to %s\n", rp.Plan.BackupID, rp.Plan.Target)
	when := "unknown (no transaction replayed after the backup)"
	if rp.RecoveryTime != nil {
		when = rp.RecoveryTime.UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(&sb, "  recovery point:  LSN %s, last commit %s\n", rp.RecoveryLSN, when)
	if rp.EndOfArchive {
		fmt.Fprintf(&sb, "  the target is after the newest archived commit: restored to the end of the archive\n")
	}
	fmt.Fprintf(&sb, "  one-time keys:   %d rows removed from e2e_one_time_keys_json in %s\n", rp.OneTimeKeysRemoved, rp.Database)
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
	if rp.Running {
		fmt.Fprintf(&sb, "The server is running on 127.0.0.1:%d (socket %s), with the restore's private settings in postgresql.auto.conf.\n", rp.Port, rp.SocketDir)
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
	if o.RepoPath != "" {
		if o.RepoPath, err = filepath.Abs(o.RepoPath); err != nil {
			return err
		}
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
// missing or empty, the plan with WAL continuity, the server binaries) and
// returns the plan. It writes nothing.
func Prepare(ctx context.Context, opts Options) (Plan, error) {
	if err := opts.defaults(); err != nil {
		return Plan{}, err
	}
	if err := opts.check(); err != nil {
		return Plan{}, err
	}
	p, err := NewPlan(ctx, opts.Repo, opts.Target)
	if err != nil {
		return Plan{}, err
	}
	for _, a := range p.Backup().Archives {
		if a.TablespaceOID != 0 {
			if err := CheckEmpty(fmt.Sprintf("tablespace %d directory", a.TablespaceOID), TablespaceDir(opts.PGData, a.TablespaceOID)); err != nil {
				return Plan{}, err
			}
		}
	}
	if _, err := opts.postgresBinary(p); err != nil {
		return Plan{}, err
	}
	return p, nil
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
	if o.RepoPath == "" && o.RepoConfig == "" {
		return errors.New("restore: the repository's settings are needed for restore_command (repository.path or repository.url)")
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
		return "", fmt.Errorf("the backup is of PostgreSQL %d, but %s is missing: install that major version's server (Debian: postgresql-%d) or give its directory with --pg-bindir", p.PGVersion, bin, p.PGVersion/10000)
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
// directory. On failure after extraction the data directory is left for
// inspection and the server is stopped.
func Run(ctx context.Context, opts Options) (rep Report, err error) {
	if err := opts.defaults(); err != nil {
		return rep, err
	}
	log := opts.Log
	phase := func(name string, start time.Time) {
		rep.Phases = append(rep.Phases, Phase{Name: name, Seconds: time.Since(start).Seconds()})
	}
	start := time.Now()
	plan, err := Prepare(ctx, opts)
	if err != nil {
		return rep, err
	}
	rep.Plan = plan
	pgBin, _ := opts.postgresBinary(plan)
	owner, err := serverUser()
	if err != nil {
		return rep, err
	}
	exe := opts.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return rep, fmt.Errorf("find the synbak binary for restore_command: %w", err)
		}
	}
	if exe, err = filepath.Abs(exe); err != nil {
		return rep, err
	}
	phase("plan", start)

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
		err = fmt.Errorf("%w\n(the restore removed what it had written; run it with --keep-failed to keep the data directory and server log)", err)
	}()

	// The work directory: restore-only config, fetch cache, socket, log.
	start = time.Now()
	x := &extractor{owner: owner}
	if err := x.prepareDir(opts.WorkDir); err != nil {
		return rep, err
	}
	stateDir := filepath.Join(opts.WorkDir, "state")
	if err := x.mkdirAll(stateDir); err != nil {
		return rep, err
	}
	cfgFile := filepath.Join(opts.WorkDir, "restore.yaml")
	repoCfg := opts.RepoConfig
	if repoCfg == "" {
		repoCfg = fmt.Sprintf("repository:\n  path: %s\n", yamlQuote(opts.RepoPath))
	}
	cfg := fmt.Sprintf("# written by synbak restore: what restore_command (wal-fetch) reads\n%sstate_dir: %s\n", repoCfg, yamlQuote(stateDir))
	if err := x.writeFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return rep, err
	}
	restoreCommand := fmt.Sprintf("%s -c %s wal-fetch %%f %%p", shellQuote(exe), shellQuote(cfgFile))
	var fetchEnv []string
	if len(opts.Identity) > 0 {
		idFile := filepath.Join(opts.WorkDir, "identity.txt")
		if err := x.writeFile(idFile, opts.Identity, 0o600); err != nil {
			return rep, err
		}
		fetchEnv = []string{identityEnv + "=" + idFile}
		restoreCommand = identityEnv + "=" + shellQuote(idFile) + " " + restoreCommand
	}
	// Check, as the server's user, that restore_command works: fetch the
	// first segment the recovery needs.
	b := plan.Backup()
	probe := filepath.Join(stateDir, "probe")
	cmd := exec.CommandContext(ctx, exe, "-c", cfgFile, "wal-fetch", plan.FirstSegment, probe)
	asOwner(cmd, owner)
	cmd.Env = append(cmd.Env, fetchEnv...)
	if out, err := cmd.CombinedOutput(); err != nil {
		who := "this user"
		if owner != nil {
			who = "the postgres OS user"
		}
		return rep, fmt.Errorf("restore_command would fail: `%s` run as %s: %v: %s (the binary, %s and the repository %s must be readable by %s)",
			strings.ReplaceAll(restoreCommand, "%f %p", plan.FirstSegment+" "+probe), who, err, strings.TrimSpace(string(out)), cfgFile, opts.Repo, who)
	}
	_ = os.Remove(probe)

	log.Info("extracting base backup", "backup", b.ID, "pgdata", opts.PGData)
	xopts := ExtractOptions{Owner: owner}
	if opts.Progress != nil {
		total := b.Size() - b.Manifest.Size // the manifest is not extracted
		xopts.Progress = func(done int64) { opts.Progress(Progress{Phase: "extract", Done: done, Total: total}) }
	}
	if err := Extract(ctx, opts.Repo, b, opts.PGData, xopts, log); err != nil {
		return rep, err
	}
	phase("extract", start)

	start = time.Now()
	srv, err := opts.configure(plan, owner, restoreCommand)
	if err != nil {
		return rep, err
	}
	srv.bin = pgBin
	rep.Port, rep.SocketDir, rep.LogFile = srv.port, srv.sockDir, srv.logFile
	srv.dieWithUs = !opts.LeaveRunning
	if err := srv.start(); err != nil {
		_ = os.RemoveAll(srv.sockDir)
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
		_ = os.RemoveAll(srv.sockDir)
		if err == nil {
			rep.Running = false
			rep.SocketDir = ""
			phase("stop", start)
		}
	}()
	rep.Running = true
	if opts.Progress != nil {
		endLSN, _ := pglogrepl.ParseLSN(plan.ArchiveEndLSN)
		srv.progress = func(replay pglogrepl.LSN, commit *time.Time) {
			opts.Progress(Progress{Phase: "recovery", ReplayLSN: replay, EndLSN: endLSN, LastCommit: commit})
		}
	}
	endOfArchive, err := srv.waitPromoted(ctx, log, !opts.Target.Latest)
	if err != nil {
		return rep, err
	}
	rep.EndOfArchive = endOfArchive
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
		if err := opts.Check(ctx, Running{Port: srv.port, SocketDir: srv.sockDir, User: srv.user, BinDir: filepath.Dir(pgBin), Database: db}); err != nil {
			return rep, err
		}
		phase("checks", start)
	}

	if opts.MediaDir == "" {
		rep.MediaSkipped = true
	} else {
		start = time.Now()
		at := opts.Target.Time
		if opts.Target.LSN != 0 && rep.RecoveryTime != nil {
			at = *rep.RecoveryTime
		}
		mr, err := mediawatch.Restore(ctx, opts.Repo, at, opts.MediaDir)
		if err != nil {
			return rep, fmt.Errorf("restore media into %s: %w", opts.MediaDir, err)
		}
		rep.MediaFiles, rep.MediaBytes = mr.Files, mr.Bytes
		phase("media", start)
	}
	if opts.ConfigDir == "" {
		rep.ConfigSkipped = true
	} else {
		start = time.Now()
		at := opts.Target.Time
		if opts.Target.LSN != 0 && rep.RecoveryTime != nil {
			at = *rep.RecoveryTime
		}
		m, err := confsnap.Restore(ctx, opts.Repo, at, opts.ConfigDir)
		if err != nil {
			return rep, fmt.Errorf("restore config files into %s: %w", opts.ConfigDir, err)
		}
		rep.ConfigFiles, rep.ConfigMissing = len(m.Files), len(m.Missing)
		snap := m.SnapshotTime
		rep.ConfigSnapshot = &snap
		if opts.NewSigningKey {
			kc, err := confsnap.NewSigningKey(opts.ConfigDir, confsnap.KeyOptions{})
			if err != nil {
				return rep, fmt.Errorf("new signing key in %s: %w", opts.ConfigDir, err)
			}
			rep.SigningKey = &kc
		}
		phase("config", start)
	}
	return rep, nil
}

// identityEnv gives wal-fetch the identity file of an encrypted repository
// (repository.encryption.identity_file).
const identityEnv = "SYNBAK_REPOSITORY_ENCRYPTION_IDENTITY_FILE"

func yamlQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
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

const privateHBA = "# written by synbak restore: only the restore connects, over its private socket\nlocal all all trust\n"

// configure writes the recovery settings and the private settings.
func (o *Options) configure(p Plan, owner *Owner, restoreCommand string) (*server, error) {
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
	// A short socket directory (sun_path holds about 107 bytes).
	sock, err := os.MkdirTemp("/tmp", "synbak-restore-")
	if err != nil {
		return nil, err
	}
	s.sockDir = sock
	if err := x.chown(sock); err != nil {
		return nil, err
	}
	s.logFile = filepath.Join(o.WorkDir, "postgres.log")
	hba := filepath.Join(o.WorkDir, "pg_hba.private.conf")
	if err := x.writeFile(hba, []byte(privateHBA), 0o600); err != nil {
		return nil, err
	}
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
	s.autoConf, err = os.ReadFile(auto)
	s.autoConfExists = err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var sb strings.Builder
	sb.WriteString("\n# synbak restore: private settings while the restore runs; removed when it stops the server\n")
	sb.WriteString(setting("listen_addresses", "127.0.0.1"))
	sb.WriteString(fmt.Sprintf("port = %d\n", s.port))
	sb.WriteString(setting("unix_socket_directories", s.sockDir))
	sb.WriteString(setting("hba_file", hba))
	sb.WriteString("archive_mode = off\n")
	sb.WriteString(setting("synchronous_standby_names", ""))
	s.private = sb.String()
	if err := s.writeAuto(p.Target.recoveryTarget()); err != nil {
		return nil, err
	}
	return s, nil
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
		rep.RecoveryLSN = *lsn
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
