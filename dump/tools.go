package dump

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DebianRoot is where Debian installs PostgreSQL's versions
// (<root>/<major>/bin).
const DebianRoot = "/usr/lib/postgresql"

// Tool is a located pg_dump or pg_restore.
type Tool struct {
	Path    string
	Version string // its --version line
	Major   int
}

var versionRe = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.\d+)?`)

// FindTool locates tool (pg_dump, pg_restore) for a server of major version
// major: in binDir when given (it must be at least major); else the same
// major version under root (DebianRoot), else the newest installed one
// newer than major (a newer pg_dump reads older servers; a newer
// pg_restore reads older dumps).
func FindTool(ctx context.Context, tool string, major int, binDir, root string) (Tool, error) {
	var cands []string
	if binDir != "" {
		cands = []string{filepath.Join(binDir, tool)}
	} else {
		cands = append(cands, filepath.Join(root, strconv.Itoa(major), "bin", tool))
		ents, _ := os.ReadDir(root)
		var newer []int
		for _, e := range ents {
			if v, err := strconv.Atoi(e.Name()); err == nil && v > major {
				newer = append(newer, v)
			}
		}
		sort.Sort(sort.Reverse(sort.IntSlice(newer)))
		for _, v := range newer {
			cands = append(cands, filepath.Join(root, strconv.Itoa(v), "bin", tool))
		}
	}
	for _, c := range cands {
		fi, err := os.Stat(c)
		if err != nil || fi.IsDir() {
			continue
		}
		t, err := toolVersion(ctx, c)
		if err != nil {
			return Tool{}, err
		}
		if t.Major < major {
			return Tool{}, fmt.Errorf("%w: %s is version %d, older than the server (%d): give the bin directory of PostgreSQL %d or newer with --pg-bindir", ErrTool, c, t.Major, major, major)
		}
		return t, nil
	}
	where := binDir
	if where == "" {
		where = fmt.Sprintf("%s/<%d or newer>/bin", root, major)
	}
	return Tool{}, fmt.Errorf("%w: %s for PostgreSQL %d not found in %s: install PostgreSQL %d's client tools (Debian: postgresql-client-%d) or give their directory with --pg-bindir", ErrTool, tool, major, where, major, major)
}

func toolVersion(ctx context.Context, path string) (Tool, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return Tool{}, fmt.Errorf("%w: %s --version: %v", ErrTool, path, err)
	}
	line := strings.TrimSpace(string(bytes.SplitN(out, []byte("\n"), 2)[0]))
	m := versionRe.FindStringSubmatch(line)
	if m == nil {
		return Tool{}, fmt.Errorf("%w: %s --version printed %q, not a PostgreSQL version", ErrTool, path, line)
	}
	major, _ := strconv.Atoi(m[1])
	return Tool{Path: path, Version: line, Major: major}, nil
}

// MajorOf returns the major version of a server_version_num (150014 → 15).
func MajorOf(versionNum int) int { return versionNum / 10000 }

// toolEnv is the environment of a child pg_dump/pg_restore: synbak's own
// plus extra (whose PGPASSWORD replaces an inherited one).
func toolEnv(extra []string) []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "PGPASSWORD=") && len(extra) > 0 {
			continue
		}
		env = append(env, e)
	}
	return append(env, extra...)
}

// tail keeps the last max bytes written to it (a child's stderr).
type tail struct {
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { return strings.TrimSpace(string(t.b)) }
