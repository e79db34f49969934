package confsnap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
)

// Roles of PostgreSQL's own settings files in a snapshot's list.
const (
	// RolePGConfig is the server's config_file (postgresql.conf).
	RolePGConfig = "postgres:config_file"
	// RolePGHba is the server's hba_file (pg_hba.conf).
	RolePGHba = "postgres:hba_file"
	// RolePGIdent is the server's ident_file (pg_ident.conf).
	RolePGIdent = "postgres:ident_file"
	// RolePGInclude is a file postgresql.conf includes (include,
	// include_if_exists, include_dir), directly or through another one.
	RolePGInclude = "postgres:include"
	// RolePGCluster is a file of Debian's cluster tooling that lives
	// beside postgresql.conf (start.conf, pg_ctl.conf, environment).
	RolePGCluster = "postgres:cluster"
)

// rolePGPrefix starts every PostgreSQL role.
const rolePGPrefix = "postgres:"

// IsPostgresRole reports whether role is one of PostgreSQL's own files.
func IsPostgresRole(role string) bool { return strings.HasPrefix(role, rolePGPrefix) }

// ServerSettings are the settings that say where PostgreSQL's own files
// are: SHOW config_file, hba_file, ident_file and data_directory. All four
// are readable only by superusers and members of pg_read_all_settings.
type ServerSettings struct {
	ConfigFile, HbaFile, IdentFile, DataDirectory string
}

// debianClusterFiles are the files pg_ctlcluster reads beside
// postgresql.conf (they are not PostgreSQL settings, but a restored
// /etc/postgresql/<version>/<cluster> needs them).
var debianClusterFiles = []string{"start.conf", "pg_ctl.conf", "environment"}

// maxIncludeDepth is PostgreSQL's own limit on nested includes.
const maxIncludeDepth = 10

// PostgresFileList returns the files a snapshot must hold for the server
// whose settings are s: config_file, hba_file, ident_file, the files
// config_file includes (recursively, as PostgreSQL reads them), and
// Debian's start.conf, pg_ctl.conf and environment beside config_file —
// each only when it lies outside the data directory (files inside it are
// in every base backup). The include directives are read from the local
// files, so they are followed only as far as this process can read them;
// what it cannot read is returned as problems (the files found so far are
// still listed). config_file comes first.
func PostgresFileList(s ServerSettings) ([]synapse.File, []error) {
	var out []synapse.File
	var problems []error
	seen := map[string]bool{}
	data := filepath.Clean(s.DataDirectory)
	add := func(path, role string) {
		if path == "" || !filepath.IsAbs(path) {
			return
		}
		path = filepath.Clean(path)
		if seen[path] || (data != "." && data != "" && (path == data || strings.HasPrefix(path, data+"/"))) {
			return
		}
		seen[path] = true
		out = append(out, synapse.File{Path: path, Role: role})
	}
	add(s.ConfigFile, RolePGConfig)
	add(s.HbaFile, RolePGHba)
	add(s.IdentFile, RolePGIdent)
	if s.ConfigFile != "" {
		visiting := map[string]bool{}
		var walk func(file string, depth int)
		walk = func(file string, depth int) {
			if depth > maxIncludeDepth || visiting[file] {
				return
			}
			visiting[file] = true
			defer delete(visiting, file)
			incs, err := readIncludes(file)
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					problems = append(problems, err)
				}
				return
			}
			for _, inc := range incs {
				add(inc, RolePGInclude)
				walk(inc, depth+1)
			}
		}
		walk(filepath.Clean(s.ConfigFile), 0)
		if strings.HasPrefix(filepath.Clean(s.ConfigFile), "/etc/postgresql/") || fileExists(filepath.Join(filepath.Dir(s.ConfigFile), "start.conf")) {
			for _, name := range debianClusterFiles {
				if p := filepath.Join(filepath.Dir(s.ConfigFile), name); fileExists(p) {
					add(p, RolePGCluster)
				}
			}
		}
	}
	return out, problems
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// readIncludes returns the files one settings file includes, in order,
// with include_dir expanded as PostgreSQL does (the directory's *.conf
// files not starting with a dot, by name). Relative paths are relative to
// the including file's directory.
func readIncludes(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read PostgreSQL settings file %s for its includes: %w", file, err)
	}
	base := filepath.Dir(file)
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(base, p)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := parseConfLine(line)
		if !ok || val == "" {
			continue
		}
		switch strings.ToLower(key) {
		case "include", "include_if_exists":
			out = append(out, abs(val))
		case "include_dir":
			dir := abs(val)
			ents, err := os.ReadDir(dir)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return out, fmt.Errorf("read PostgreSQL include_dir %s: %w", dir, err)
			}
			var names []string
			for _, e := range ents {
				n := e.Name()
				if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".conf") || e.IsDir() {
					continue
				}
				names = append(names, n)
			}
			slices.Sort(names) // byte order, as PostgreSQL's strcmp
			for _, n := range names {
				out = append(out, filepath.Join(dir, n))
			}
		}
	}
	return out, nil
}

// parseConfLine parses one line of postgresql.conf: "name [=] value
// [# comment]", the value a single-quoted string (” and \' for a quote)
// or a bare word. ok is false for blank and comment lines.
func parseConfLine(line string) (key, val string, ok bool) {
	s := strings.TrimSpace(line)
	if s == "" || s[0] == '#' {
		return "", "", false
	}
	i := 0
	for i < len(s) && (isIdent(s[i])) {
		i++
	}
	if i == 0 {
		return "", "", false
	}
	key, s = s[:i], strings.TrimSpace(s[i:])
	if strings.HasPrefix(s, "=") {
		s = strings.TrimSpace(s[1:])
	}
	if s == "" {
		return key, "", true
	}
	if s[0] != '\'' {
		end := strings.IndexAny(s, " \t#")
		if end < 0 {
			end = len(s)
		}
		return key, s[:end], true
	}
	var b strings.Builder
	for j := 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '\\' && j+1 < len(s):
			j++
			b.WriteByte(s[j])
		case c == '\'' && j+1 < len(s) && s[j+1] == '\'':
			j++
			b.WriteByte('\'')
		case c == '\'':
			return key, b.String(), true
		default:
			b.WriteByte(c)
		}
	}
	return key, "", false // unterminated string: PostgreSQL refuses it too
}

func isIdent(c byte) bool {
	return c == '_' || c == '.' || c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// PostgresFiles follows PostgreSQL's own settings files for a Watcher's
// Refresh (or a one-shot Snapshot): it asks the server where they are
// (Settings) at most every MaxAge and otherwise answers with the last
// list. When the server cannot be asked (unreachable, or the role lacks
// pg_read_all_settings) it keeps the last list it knew — at start, the
// PostgreSQL files of the repository's newest snapshot — so that a
// database outage never drops them from the snapshots. Every problem is
// logged once, until it changes.
type PostgresFiles struct {
	settings func(ctx context.Context) (ServerSettings, error)
	r        *repo.Repo
	log      *slog.Logger
	maxAge   time.Duration

	mu       sync.Mutex
	s        ServerSettings // the server's last answer
	haveS    bool
	at       time.Time // when the server was last asked
	files    []synapse.File
	known    bool // files came from the server or the repository
	lastErr  string
	lastWarn map[string]bool
	remote   bool
}

// NewPostgresFiles returns a PostgresFiles asking settings (nil: never
// asks; Files returns nothing). r (may be nil) gives the last known list
// when the server cannot be asked at start. maxAge 0 means 5 minutes.
func NewPostgresFiles(settings func(ctx context.Context) (ServerSettings, error), r *repo.Repo, log *slog.Logger, maxAge time.Duration) *PostgresFiles {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if maxAge <= 0 {
		maxAge = 5 * time.Minute
	}
	return &PostgresFiles{settings: settings, r: r, log: log, maxAge: maxAge, lastWarn: map[string]bool{}}
}

// Files returns PostgreSQL's settings files to snapshot (see
// PostgresFileList): it asks the server where they are when its last
// answer is older than MaxAge, and follows the includes again at every
// call (a file added to an include_dir is found at the next check).
func (p *PostgresFiles) Files(ctx context.Context) []synapse.File {
	if p == nil || p.settings == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.haveS || time.Since(p.at) >= p.maxAge {
		s, err := p.settings(ctx)
		if err != nil {
			if msg := err.Error(); msg != p.lastErr {
				p.lastErr = msg
				p.log.Warn("cannot ask PostgreSQL where its settings files are; config snapshots keep the last known list of them", "files", len(p.files), "err", err)
			}
			if !p.haveS {
				if !p.known {
					p.fromRepo(ctx)
				}
				return slices.Clone(p.files)
			}
			// Keep following the settings the server gave last time.
		} else {
			if p.lastErr != "" {
				p.lastErr = ""
				p.log.Info("PostgreSQL answers where its settings files are again")
			}
			p.s, p.haveS = s, true
		}
		p.at = time.Now()
	}
	s := p.s
	// A server on another machine: its paths mean nothing here.
	if !exists(s.ConfigFile) && !exists(s.DataDirectory) {
		if !p.remote {
			p.remote = true
			p.log.Info("PostgreSQL's settings files are not on this machine (the server runs elsewhere); back them up where it runs", "config_file", s.ConfigFile)
		}
		p.files, p.known = nil, true
		return nil
	}
	p.remote = false
	files, problems := PostgresFileList(s)
	for _, e := range problems {
		if msg := e.Error(); !p.lastWarn[msg] {
			p.lastWarn[msg] = true
			p.log.Warn("cannot follow PostgreSQL's includes; the files it names are not all in the config snapshots", "err", e)
		}
	}
	if len(problems) == 0 {
		clear(p.lastWarn)
	}
	changed := !p.known || !slices.Equal(files, p.files)
	p.files, p.known = files, true
	if changed {
		paths := make([]string, len(files))
		for i, f := range files {
			paths[i] = f.Path
		}
		p.log.Info("PostgreSQL's settings files outside its data directory", "config_file", s.ConfigFile, "hba_file", s.HbaFile, "files", strings.Join(paths, ","))
	}
	return slices.Clone(files)
}

// fromRepo takes the PostgreSQL files of the repository's newest snapshot
// as the last known list.
func (p *PostgresFiles) fromRepo(ctx context.Context) {
	if p.r == nil {
		p.known = true
		return
	}
	st, err := StateAt(ctx, p.r, time.Time{})
	switch {
	case err == nil:
		for _, f := range st.Files {
			if IsPostgresRole(f.Role) {
				p.files = append(p.files, synapse.File{Path: f.Path, Role: f.Role, Secret: f.Secret})
			}
		}
		p.known = true
	case IsNoSnapshot(err):
		p.known = true
	default:
		p.log.Warn("cannot read the last config snapshot for PostgreSQL's settings files", "err", err)
	}
}

// exists reports whether path names something (a file or directory this
// process can stat, or one it may not enter: EACCES means it is here).
func exists(path string) bool {
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return err == nil || errors.Is(err, fs.ErrPermission)
}

// ServerFiles returns the original paths of the PostgreSQL config_file and
// hba_file a restored config snapshot holds ("" for one it does not hold
// or that was missing at the time): the settings files a restored
// PostgreSQL server should use, e.g. to name them in a restore's report.
func ServerFiles(m Manifest) (configFile, hbaFile string) {
	for _, f := range m.Files {
		switch f.Role {
		case RolePGConfig:
			configFile = f.Path
		case RolePGHba:
			hbaFile = f.Path
		}
	}
	return configFile, hbaFile
}

// WithPostgresFiles appends PostgreSQL's files to a Synapse file list,
// skipping paths already in it.
func WithPostgresFiles(files, pg []synapse.File) []synapse.File {
	out := slices.Clone(files)
	seen := map[string]bool{}
	for _, f := range files {
		seen[filepath.Clean(f.Path)] = true
	}
	for _, f := range pg {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	return out
}
