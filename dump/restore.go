package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/proc"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/restore"
)

// Target is where one database of a dump goes.
type Target struct {
	// Params are the target server's connection keywords; their dbname is
	// the database to create (default: the dumped database's name).
	Params map[string]string
	// Origin names them in messages ("--target-dsn").
	Origin string
}

// RestoreOptions configure PlanRestore and Restore.
type RestoreOptions struct {
	// Targets[i] receives the dump's Databases[i].
	Targets []Target
	// Owner owns the new database and everything in it (default: the
	// source database's owner when that role exists on the target server,
	// else the connecting role).
	Owner string
	// Jobs is pg_restore --jobs (default: the number of CPUs, at most 4).
	Jobs int
	// BinDir holds pg_restore (default: FindTool's search).
	BinDir string
	// WorkDir receives the verified dump files pg_restore reads (default:
	// the system's temporary directory). They are removed afterwards.
	WorkDir string
	// MediaDir and ConfigDir, when set, receive the media store and the
	// config files as of the dump's start.
	MediaDir, ConfigDir string
	// Progress, when set, is called as the restore advances.
	Progress func(RestoreProgress)
}

// RestoreProgress is a restore's state for a progress line.
type RestoreProgress struct {
	Phase    string // "download", "pg_restore", "media", "config"
	Database string
	Done     int64
	Total    int64
}

// TargetPlan is what happens to one database.
type TargetPlan struct {
	// Source is the dumped database's name, Database the one created.
	Source   string `json:"source_database"`
	Database string `json:"database"`
	// Server is the target connection without secrets.
	Server           string `json:"server"`
	ServerVersion    string `json:"server_version"`
	ServerVersionNum int    `json:"server_version_num"`
	// Exists: the database exists already (empty, UTF8, C); it is used,
	// not created.
	Exists bool   `json:"exists"`
	Owner  string `json:"owner"`
	// User is the role synbak connects as.
	User      string `json:"user"`
	PgRestore string `json:"pg_restore"`
	Jobs      int    `json:"jobs"`
	Size      int64  `json:"size"`
	Parts     int    `json:"parts"`

	tool   Tool
	maint  map[string]string // connection to a maintenance database
	params map[string]string // connection to the database restored
	origin string
}

// RestorePlan is what a restore from a dump does.
type RestorePlan struct {
	Dump      string       `json:"dump"`
	DumpTime  time.Time    `json:"dump_time"`
	PgDump    string       `json:"pg_dump"`
	Databases []TargetPlan `json:"databases"`
	// WorkDir receives WorkBytes of dump files while the restore runs.
	WorkDir   string `json:"work_dir"`
	WorkBytes int64  `json:"work_bytes"`
	// MediaDir and ConfigDir are restored as of AsOf ("" = skipped).
	MediaDir  string    `json:"media_dir,omitempty"`
	ConfigDir string    `json:"config_dir,omitempty"`
	AsOf      time.Time `json:"as_of"`
	// ConfigSnapshot is the config snapshot restored (nil without
	// ConfigDir).
	ConfigSnapshot *time.Time `json:"config_snapshot,omitempty"`
	// MediaFiles is how many media files the media set as of AsOf holds
	// (with MediaDir).
	MediaFiles int `json:"media_files,omitempty"`
	// Warnings say what the restore will not bring back, e.g. media the
	// repository does not hold.
	Warnings []string `json:"warnings,omitempty"`
}

// DatabaseReport is what the restore did to one database.
type DatabaseReport struct {
	Database string `json:"database"`
	Created  bool   `json:"created"`
	// OneTimeKeysTruncated counts the rows of e2e_one_time_keys_json the
	// restore deleted (0 for a dump made by synbak, which excludes them).
	OneTimeKeysTruncated int64   `json:"one_time_keys_truncated"`
	Tables               int     `json:"tables"`
	Seconds              float64 `json:"seconds"`
}

// RestoreReport is what Restore did.
type RestoreReport struct {
	Plan        RestorePlan               `json:"plan"`
	Databases   []DatabaseReport          `json:"databases"`
	MediaFiles  int                       `json:"media_files"`
	MediaBytes  int64                     `json:"media_bytes"`
	ConfigFiles int                       `json:"config_files"`
	Phases      map[string]float64        `json:"phase_seconds"`
	Manifest    *confsnap.Manifest        `json:"-"`
	Media       *mediawatch.RestoreReport `json:"-"`
}

func (o *RestoreOptions) defaults() {
	if o.Jobs <= 0 {
		o.Jobs = min(runtime.NumCPU(), 4)
	}
	if o.WorkDir == "" {
		o.WorkDir = os.TempDir()
	}
}

// PlanRestore makes every check Restore makes before it changes anything
// — the dump's objects are all there with the recorded checksums, each
// target server is reachable with the given credentials, its database is
// missing or empty, the owner role exists and may be given the database,
// pg_restore is new enough, the media and config directories are missing
// or empty, the work directory has room — and returns the plan. It writes
// nothing.
func PlanRestore(ctx context.Context, r *repo.Repo, d Dump, opts RestoreOptions) (RestorePlan, error) {
	opts.defaults()
	p := RestorePlan{Dump: d.ID, DumpTime: d.StartTime, PgDump: d.Main().PgDump, WorkDir: opts.WorkDir, MediaDir: opts.MediaDir, ConfigDir: opts.ConfigDir, AsOf: d.Main().StartTime}
	if len(opts.Targets) != len(d.Databases) {
		var names []string
		for _, db := range d.Databases {
			names = append(names, fmt.Sprintf("%s (%s)", db.Name, strings.Join(db.Stores, ", ")))
		}
		return p, fmt.Errorf("dump %s holds %d databases — %s — but %d targets were given: give --target-dsn for the first and --target-state-dsn for the second", d.ID, len(d.Databases), strings.Join(names, "; "), len(opts.Targets))
	}
	for _, db := range d.Databases {
		for i, part := range db.Parts {
			name := PartName(d.ID, db.Name, i)
			info, err := r.Stat(ctx, name)
			if err != nil {
				return p, fmt.Errorf("dump %s: %s: %w", d.ID, name, err)
			}
			if info.Size != part.Size || info.Checksum != part.Checksum {
				return p, fmt.Errorf("dump %s: %s: %w: %d bytes with %s, the dump recorded %d bytes with %s", d.ID, name, repo.ErrCorrupt, info.Size, info.Checksum.Describe(), part.Size, part.Checksum.Describe())
			}
		}
		p.WorkBytes += db.Size
	}
	for i, db := range d.Databases {
		tp, err := planTarget(ctx, db, opts.Targets[i], opts)
		if err != nil {
			return p, err
		}
		for _, prev := range p.Databases {
			if prev.Database == tp.Database && prev.Server == tp.Server {
				return p, fmt.Errorf("%s and the previous target both name database %q on %s: give each database of the dump its own", tp.origin, tp.Database, tp.Server)
			}
		}
		p.Databases = append(p.Databases, tp)
	}
	if opts.MediaDir != "" {
		if err := restore.CheckEmpty("media directory", opts.MediaDir); err != nil {
			return p, err
		}
		present, _, err := mediawatch.Set(ctx, r, p.AsOf)
		if err != nil {
			return p, fmt.Errorf("media as of the dump's time %s: %w", p.AsOf.Format(time.RFC3339), err)
		}
		p.MediaFiles = len(present)
		if len(present) == 0 {
			p.Warnings = append(p.Warnings, fmt.Sprintf("the repository holds no media files as of the dump's time (%s): --media-dir %s will stay empty. Media reach the repository through the agent's media watcher or `synbak media sync` (which `synbak dump` runs first unless --skip-media)", p.AsOf.UTC().Format(time.RFC3339), opts.MediaDir))
		}
		if note := d.Facts[FactMedia]; strings.HasPrefix(note, "not synced") {
			p.Warnings = append(p.Warnings, "the dump's media "+note+": files uploaded after the repository's last media copy before the dump are missing from --media-dir")
		}
	}
	if opts.ConfigDir != "" {
		if err := restore.CheckEmpty("config directory", opts.ConfigDir); err != nil {
			return p, err
		}
		st, err := confsnap.StateAt(ctx, r, p.AsOf)
		if err != nil {
			return p, fmt.Errorf("config files as of the dump's time %s: %w", p.AsOf.Format(time.RFC3339), err)
		}
		t := st.Time
		p.ConfigSnapshot = &t
	}
	if err := checkRoom(opts.WorkDir, p.WorkBytes); err != nil {
		return p, err
	}
	return p, nil
}

// checkRoom fails unless dir exists and has room for n more bytes.
func checkRoom(dir string, n int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("work directory %s: %w (give an existing directory with --work-dir)", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if need := n + n/20 + 64<<20; free < need {
		return fmt.Errorf("work directory %s has %d MiB free, the dump needs %d MiB there while pg_restore reads it: give a directory with room with --work-dir", dir, free>>20, need>>20)
	}
	return nil
}

func cloneWith(params map[string]string, key, val string) map[string]string {
	out := maps.Clone(params)
	if out == nil {
		out = map[string]string{}
	}
	out[key] = val
	return out
}

// connect opens a pgx connection, explaining refusals.
func connect(ctx context.Context, params map[string]string, origin string) (*pgx.Conn, error) {
	src := pgsource.Source{ConnString: pgsource.ConnString(params), Origin: origin}
	cfg, err := pgx.ParseConfig(src.ConnString)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid connection settings: %s", origin, pgsource.Redact(err.Error()))
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, explained{msg: src.Explain(err), cause: err}
	}
	return conn, nil
}

// explained is a connection error as pgsource explains it, which keeps
// the server's error (its SQLSTATE) for predicates.
type explained struct{ msg, cause error }

func (e explained) Error() string   { return e.msg.Error() }
func (e explained) Unwrap() []error { return []error{e.msg, e.cause} }

// sqlStateInvalidCatalogName: the database does not exist.
const sqlStateInvalidCatalogName = "3D000"

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// connectMaintenance connects to the target server's postgres database
// (template1 when that is missing).
func connectMaintenance(ctx context.Context, t Target) (*pgx.Conn, map[string]string, error) {
	var lastErr error
	for _, db := range []string{"postgres", "template1"} {
		params := cloneWith(t.Params, "dbname", db)
		conn, err := connect(ctx, params, t.Origin)
		if err == nil {
			return conn, params, nil
		}
		lastErr = err
		if pgCode(err) != sqlStateInvalidCatalogName {
			break
		}
	}
	return nil, nil, lastErr
}

func planTarget(ctx context.Context, db Database, t Target, opts RestoreOptions) (TargetPlan, error) {
	tp := TargetPlan{Source: db.Name, Database: t.Params["dbname"], Jobs: opts.Jobs, Size: db.Size, Parts: len(db.Parts), origin: t.Origin}
	if tp.Database == "" {
		tp.Database = db.Name
	}
	conn, maint, err := connectMaintenance(ctx, t)
	if err != nil {
		return tp, err
	}
	defer conn.Close(context.Background())
	tp.maint = maint
	tp.params = cloneWith(t.Params, "dbname", tp.Database)
	conninfo, _, err := pgsource.ToolArgs(tp.params)
	if err != nil {
		return tp, fmt.Errorf("%s: %w", t.Origin, err)
	}
	tp.Server = conninfo

	var super, createdb bool
	var ver string
	if err := conn.QueryRow(ctx, `SELECT current_user, r.rolsuper, r.rolcreatedb, current_setting('server_version'), current_setting('server_version_num')
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&tp.User, &super, &createdb, &tp.ServerVersion, &ver); err != nil {
		return tp, fmt.Errorf("%s: read the server's description: %w", t.Origin, err)
	}
	tp.ServerVersionNum, _ = strconv.Atoi(ver)
	if tp.tool, err = FindTool(ctx, "pg_restore", MajorOf(tp.ServerVersionNum), opts.BinDir, DebianRoot); err != nil {
		return tp, err
	}
	if dm := MajorOf(db.ServerVersionNum); tp.tool.Major < dm {
		return tp, fmt.Errorf("%w: %s is version %d, but the dump was made by %q of a PostgreSQL %d server: pg_restore must be at least as new as the dump", ErrTool, tp.tool.Path, tp.tool.Major, db.PgDump, dm)
	}
	tp.PgRestore = tp.tool.Path + " (" + tp.tool.Version + ")"
	if MajorOf(tp.ServerVersionNum) < MajorOf(db.ServerVersionNum) {
		return tp, fmt.Errorf("the dump is of PostgreSQL %d and the target server (%s) is PostgreSQL %d: restore a dump into the same or a newer major version", MajorOf(db.ServerVersionNum), tp.Server, MajorOf(tp.ServerVersionNum))
	}

	var enc, collate, ctype, owner string
	err = conn.QueryRow(ctx, `SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, tp.Database).Scan(&enc, &collate, &ctype, &owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return tp, fmt.Errorf("%s: look up database %q: %w", t.Origin, tp.Database, err)
	default:
		tp.Exists = true
		if err := checkEmptyDatabase(ctx, tp); err != nil {
			return tp, err
		}
		if enc != "UTF8" || collate != "C" || ctype != "C" {
			return tp, fmt.Errorf("database %q exists on %s with encoding %s, LC_COLLATE %q and LC_CTYPE %q, but Synapse needs UTF8 and C: drop it (DROP DATABASE %s) and let synbak create it, or name another database in the target DSN", tp.Database, tp.Server, enc, collate, ctype, quoteIdent(tp.Database))
		}
	}

	// The owner.
	roleExists := func(name string) (bool, error) {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&ok)
		return ok, err
	}
	switch {
	case opts.Owner != "":
		tp.Owner = opts.Owner
	case tp.Exists:
		tp.Owner = owner
	default:
		ok, err := roleExists(db.Owner)
		if err != nil {
			return tp, err
		}
		tp.Owner = tp.User
		if ok && db.Owner != "" {
			tp.Owner = db.Owner
		}
	}
	if ok, err := roleExists(tp.Owner); err != nil {
		return tp, err
	} else if !ok {
		return tp, fmt.Errorf("role %q does not exist on %s: create it first (CREATE ROLE %s LOGIN PASSWORD '...';) or give an existing one with --owner", tp.Owner, tp.Server, quoteIdent(tp.Owner))
	}
	if tp.Exists && tp.Owner != owner && !super {
		return tp, fmt.Errorf("database %q on %s is owned by %q, not by --owner %q: give --owner %s or restore as a superuser", tp.Database, tp.Server, owner, tp.Owner, owner)
	}
	if !tp.Exists && !super && !createdb {
		return tp, fmt.Errorf("%w: role %q may not create databases on %s: run `ALTER ROLE %s CREATEDB;` as a superuser, connect as a superuser, or create the database first (CREATE DATABASE %s ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER ...)", pgsource.ErrPrivilege, tp.User, tp.Server, quoteIdent(tp.User), quoteIdent(tp.Database))
	}
	if tp.Owner != tp.User && !super {
		var member bool
		if err := conn.QueryRow(ctx, `SELECT pg_has_role(current_user, $1, 'MEMBER')`, tp.Owner).Scan(&member); err != nil {
			return tp, err
		}
		if !member {
			return tp, fmt.Errorf("%w: role %q is not a member of %q, so it cannot create objects owned by it on %s: connect as %q or as a superuser, or run `GRANT %s TO %s;`", pgsource.ErrPrivilege, tp.User, tp.Owner, tp.Server, tp.Owner, quoteIdent(tp.Owner), quoteIdent(tp.User))
		}
	}
	return tp, nil
}

// checkEmptyDatabase refuses a database that has tables or other
// relations outside the system schemas.
func checkEmptyDatabase(ctx context.Context, tp TargetPlan) error {
	conn, err := connect(ctx, tp.params, tp.origin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var n int
	var example string
	err = conn.QueryRow(ctx, `SELECT count(*), coalesce(min(n.nspname || '.' || c.relname), '')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'`).Scan(&n, &example)
	if err != nil {
		return fmt.Errorf("%s: list the tables of database %q: %w", tp.origin, tp.Database, err)
	}
	if n > 0 {
		return fmt.Errorf("%w: database %q on %s already has %d tables or other relations (e.g. %s): a dump is never restored over an existing database (Synapse's docs); name a new database in the target DSN, or drop this one if it is really unused", ErrTargetNotEmpty, tp.Database, tp.Server, n, example)
	}
	return nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// Restore restores dump d: PlanRestore's checks, then each database's dump
// downloaded into the work directory (every part checked against the
// recorded sha256 before any database is created), the databases created
// as Synapse's docs say (ENCODING UTF8, LC_COLLATE and LC_CTYPE C,
// TEMPLATE template0, OWNER), pg_restore --no-owner --role OWNER
// --exit-on-error --jobs N, e2e_one_time_keys_json emptied, ANALYZE; then
// media and config files as of the dump's start. A database this restore
// created is dropped again when a later step for it fails.
func Restore(ctx context.Context, r *repo.Repo, d Dump, opts RestoreOptions, log *slog.Logger) (RestoreReport, error) {
	opts.defaults()
	rep := RestoreReport{Phases: map[string]float64{}}
	plan, err := PlanRestore(ctx, r, d, opts)
	rep.Plan = plan
	if err != nil {
		return rep, err
	}
	progress := func(p RestoreProgress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	phase := func(name string, start time.Time) { rep.Phases[name] += time.Since(start).Seconds() }

	// 1. Download and verify everything before creating anything.
	start := time.Now()
	work, err := os.MkdirTemp(opts.WorkDir, "synbak-dump-"+d.ID+"-")
	if err != nil {
		return rep, fmt.Errorf("work directory: %w (give another with --work-dir)", err)
	}
	defer os.RemoveAll(work)
	files := make([]string, len(d.Databases))
	for i, db := range d.Databases {
		files[i] = filepath.Join(work, fmt.Sprintf("%d.dump", i))
		if err := download(ctx, r, d.ID, db, files[i], progress); err != nil {
			return rep, err
		}
	}
	phase("download", start)

	// 2. Each database.
	for i, tp := range plan.Databases {
		start := time.Now()
		dr, err := restoreDatabase(ctx, tp, files[i], opts, progress, log)
		dr.Seconds = time.Since(start).Seconds()
		rep.Databases = append(rep.Databases, dr)
		if err != nil {
			return rep, err
		}
		phase("databases", start)
	}
	_ = os.RemoveAll(work)

	// 3. Media and config files as of the dump's start.
	if opts.MediaDir != "" {
		start := time.Now()
		progress(RestoreProgress{Phase: "media"})
		mr, err := mediawatch.Restore(ctx, r, plan.AsOf, opts.MediaDir)
		if err != nil {
			return rep, fmt.Errorf("restore media into %s: %w", opts.MediaDir, err)
		}
		rep.MediaFiles, rep.MediaBytes, rep.Media = mr.Files, mr.Bytes, &mr
		phase("media", start)
	}
	if opts.ConfigDir != "" {
		start := time.Now()
		progress(RestoreProgress{Phase: "config"})
		m, err := confsnap.Restore(ctx, r, plan.AsOf, opts.ConfigDir)
		if err != nil {
			return rep, fmt.Errorf("restore config files into %s: %w", opts.ConfigDir, err)
		}
		rep.ConfigFiles, rep.Manifest = len(m.Files), &m
		phase("config", start)
	}
	return rep, nil
}

// download writes db's dump to path, checking every part.
func download(ctx context.Context, r *repo.Repo, id string, db Database, path string, progress func(RestoreProgress)) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("work directory: %w", err)
	}
	defer f.Close()
	var done int64
	pr := r.OpenParts(ctx, func(n int) string { return PartName(id, db.Name, n) }, db.Parts, func(n int) {
		done += int64(n)
		progress(RestoreProgress{Phase: "download", Database: db.Name, Done: done, Total: db.Size})
	})
	defer pr.Close()
	if _, err := io.Copy(f, pr); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("write the dump of %q to %s: the disk is full: give a directory with more room with --work-dir: %w", db.Name, filepath.Dir(path), err)
		}
		return fmt.Errorf("dump %s: read database %q's dump: %w", id, db.Name, err)
	}
	if pr.N() != db.Size {
		return fmt.Errorf("dump %s: database %q: %w: read %d bytes, the dump recorded %d", id, db.Name, repo.ErrCorrupt, pr.N(), db.Size)
	}
	return f.Close()
}

func restoreDatabase(ctx context.Context, tp TargetPlan, file string, opts RestoreOptions, progress func(RestoreProgress), log *slog.Logger) (rep DatabaseReport, err error) {
	rep.Database = tp.Database
	if !tp.Exists {
		mc, err := connect(ctx, tp.maint, tp.origin)
		if err != nil {
			return rep, err
		}
		_, err = mc.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s WITH OWNER %s ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
			quoteIdent(tp.Database), quoteIdent(tp.Owner)))
		mc.Close(context.Background())
		if err != nil {
			if pgCode(err) == "42P04" {
				return rep, fmt.Errorf("%w: database %q was created on %s by somebody else while synbak prepared the restore; nothing was restored", ErrTargetNotEmpty, tp.Database, tp.Server)
			}
			return rep, fmt.Errorf("create database %q on %s: %w", tp.Database, tp.Server, err)
		}
		rep.Created = true
		log.Info("created database", "database", tp.Database, "owner", tp.Owner, "server", tp.Server)
		defer func() {
			if err == nil {
				return
			}
			if derr := dropDatabase(context.WithoutCancel(ctx), tp); derr != nil {
				err = fmt.Errorf("%w; dropping the half-restored database %q (which synbak created) failed too: %v — drop it by hand before retrying", err, tp.Database, derr)
				return
			}
			err = fmt.Errorf("%w; database %q (created by this restore) was dropped again", err, tp.Database)
		}()
	}

	progress(RestoreProgress{Phase: "pg_restore", Database: tp.Database})
	conninfo, env, err := pgsource.ToolArgs(tp.params)
	if err != nil {
		return rep, err
	}
	args := []string{"--dbname=" + conninfo, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password", "--jobs=" + strconv.Itoa(tp.Jobs)}
	if tp.Owner != tp.User {
		args = append(args, "--role="+tp.Owner)
	}
	args = append(args, file)
	stderr := &tail{max: 16 << 10}
	cmd := exec.Command(tp.tool.Path, args...)
	cmd.Env = toolEnv(env)
	cmd.Stdout, cmd.Stderr = io.Discard, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log.Info("pg_restore", "database", tp.Database, "jobs", tp.Jobs, "pg_restore", tp.tool.Path)
	done, err := proc.Start(cmd)
	if err != nil {
		return rep, fmt.Errorf("%w: start %s: %v", ErrTool, tp.tool.Path, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return rep, ctx.Err()
	}
	if !cmd.ProcessState.Success() {
		return rep, fmt.Errorf("%w: pg_restore into %q on %s failed (%s): %s", ErrTool, tp.Database, tp.Server, cmd.ProcessState, pgsource.Redact(stderr.String()))
	}

	conn, err := connect(ctx, tp.params, tp.origin)
	if err != nil {
		return rep, err
	}
	defer conn.Close(context.Background())
	var otk *string
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1)::text`, OneTimeKeysTable).Scan(&otk); err != nil {
		return rep, err
	}
	if otk != nil {
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+OneTimeKeysTable).Scan(&rep.OneTimeKeysTruncated); err != nil {
			return rep, fmt.Errorf("count %s: %w", OneTimeKeysTable, err)
		}
		if _, err := conn.Exec(ctx, "TRUNCATE "+OneTimeKeysTable); err != nil {
			return rep, fmt.Errorf("TRUNCATE %s in %q: %w", OneTimeKeysTable, tp.Database, err)
		}
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`).Scan(&rep.Tables); err != nil {
		return rep, err
	}
	if _, err := conn.Exec(ctx, "ANALYZE"); err != nil {
		return rep, fmt.Errorf("ANALYZE %q: %w", tp.Database, err)
	}
	log.Info("restored database", "database", tp.Database, "tables", rep.Tables, "one_time_keys_truncated", rep.OneTimeKeysTruncated)
	return rep, nil
}

func dropDatabase(ctx context.Context, tp TargetPlan) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	mc, err := connect(ctx, tp.maint, tp.origin)
	if err != nil {
		return err
	}
	defer mc.Close(context.Background())
	_, err = mc.Exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(tp.Database)+" WITH (FORCE)")
	return err
}
