// Package pgtest starts and stops real, throwaway PostgreSQL clusters for the
// tests of other packages (WAL streaming, base backup, restore).
//
// Every cluster lives in its own directory under /tmp, listens on a free
// loopback port and on a Unix socket in a short directory, and is stopped and
// removed when the test ends. When the test runs as root, the server and its
// tools run as the postgres OS user, as Debian's packages expect.
//
// The postmaster is a child of the test process (not daemonized by pg_ctl),
// so it is reaped when it exits, and it receives SIGQUIT if the test process
// dies without running its cleanups.
package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// BinDirEnv names the environment variable that overrides where the
// PostgreSQL server binaries (initdb, pg_ctl, postgres, ...) are found.
const BinDirEnv = "SYNBAK_PG_BINDIR"

// BinDirsEnv names the environment variable listing further server bin
// directories (colon-separated), of other majors, for Options.Major.
const BinDirsEnv = "SYNBAK_PG_BINDIRS"

// RootEnv names the environment variable holding the directory where
// .ci/install-pg.sh installs the server binaries of further majors, as
// <root>/<major>/bin; DefaultRoot when unset.
const RootEnv = "SYNBAK_PG_ROOT"

// DefaultRoot is where .ci/install-pg.sh installs the npm majors.
const DefaultRoot = "/opt/synbak-pg"

// installHint is the fix named by every "binaries not found" error.
const installHint = "install the server with `apt-get install postgresql` (Debian/Ubuntu) " +
	"or set " + BinDirEnv + " to the directory holding initdb"

// BinDir finds the PostgreSQL server binaries: $SYNBAK_PG_BINDIR, else the
// newest /usr/lib/postgresql/*/bin holding initdb, else `pg_config --bindir`.
func BinDir() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if !isFile(filepath.Join(dir, "initdb")) {
			return "", fmt.Errorf("%s=%s holds no initdb: point it at the bin directory of a PostgreSQL server installation", BinDirEnv, dir)
		}
		return dir, nil
	}
	if dir := newestDebianBinDir("/usr/lib/postgresql"); dir != "" {
		return dir, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if isFile(filepath.Join(dir, "initdb")) {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb) not found: " + installHint)
}

// Install is one PostgreSQL server installation the harness can run.
type Install struct {
	Major  int    // e.g. 17
	BinDir string // holds initdb, pg_ctl and postgres
}

// Installs lists the server installations found, one per major (lowest
// major first): $SYNBAK_PG_BINDIR, the directories of $SYNBAK_PG_BINDIRS,
// /usr/lib/postgresql/*/bin and $SYNBAK_PG_ROOT/*/bin (default
// /opt/synbak-pg), the first one found of each major winning. The major
// is what the directory's postgres --version says.
func Installs() []Install {
	var dirs []string
	if d := os.Getenv(BinDirEnv); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv(BinDirsEnv)) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	root := os.Getenv(RootEnv)
	if root == "" {
		root = DefaultRoot
	}
	for _, r := range []string{"/usr/lib/postgresql", root} {
		m, _ := filepath.Glob(filepath.Join(r, "*", "bin"))
		sort.Strings(m)
		dirs = append(dirs, m...)
	}
	seen := map[int]bool{}
	var out []Install
	for _, d := range dirs {
		if !isFile(filepath.Join(d, "initdb")) {
			continue
		}
		major, err := serverMajor(d)
		if err != nil || seen[major] {
			continue
		}
		seen[major] = true
		out = append(out, Install{Major: major, BinDir: d})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Major < out[j].Major })
	return out
}

// BinDirFor returns the server bin directory of major (see Installs).
func BinDirFor(major int) (string, error) {
	var have []string
	for _, in := range Installs() {
		if in.Major == major {
			return in.BinDir, nil
		}
		have = append(have, strconv.Itoa(in.Major))
	}
	return "", fmt.Errorf("PostgreSQL %d server binaries not found (installed: %s): run .ci/install-pg.sh, or add their bin directory to %s",
		major, strings.Join(have, ", "), BinDirsEnv)
}

var (
	majorMu    sync.Mutex
	majorCache = map[string]int{}
	versionRE  = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)
)

// serverMajor runs dir/postgres --version once per directory and returns
// the major version it prints.
func serverMajor(dir string) (int, error) {
	majorMu.Lock()
	defer majorMu.Unlock()
	if m, ok := majorCache[dir]; ok {
		return m, nil
	}
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s/postgres --version: %w", dir, err)
	}
	sm := versionRE.FindSubmatch(out)
	if sm == nil {
		return 0, fmt.Errorf("%s/postgres --version: unexpected output %q", dir, out)
	}
	m, err := strconv.Atoi(string(sm[1]))
	if err != nil {
		return 0, err
	}
	majorCache[dir] = m
	return m, nil
}

// ServerMajor returns the major version of the server binaries in dir.
func ServerMajor(dir string) (int, error) { return serverMajor(dir) }

// newestDebianBinDir returns root/<version>/bin with the highest version
// that holds initdb, or "".
func newestDebianBinDir(root string) string {
	matches, _ := filepath.Glob(filepath.Join(root, "*", "bin", "initdb"))
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, m := range matches {
		if !isFile(m) {
			continue
		}
		dir := filepath.Dir(m)
		var ver []int
		for _, p := range strings.Split(filepath.Base(filepath.Dir(dir)), ".") {
			n, err := strconv.Atoi(p)
			if err != nil {
				n = -1
			}
			ver = append(ver, n)
		}
		cands = append(cands, cand{dir, ver})
	}
	if len(cands) == 0 {
		return ""
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i].ver, cands[j].ver
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	return cands[0].dir
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// serverUser is the OS user that owns and runs a cluster.
type serverUser struct {
	name     string
	uid, gid int
	home     string
	// cred is set when we are root and must switch to this user.
	cred *syscall.Credential
}

// lookupServerUser returns postgres when we are root (initdb and postgres
// refuse to run as root), else the current user.
func lookupServerUser() (serverUser, error) {
	if os.Geteuid() != 0 {
		u := serverUser{uid: os.Geteuid(), gid: os.Getegid()}
		if cu, err := user.Current(); err == nil {
			u.name, u.home = cu.Username, cu.HomeDir
		}
		return u, nil
	}
	pu, err := user.Lookup("postgres")
	if err != nil {
		return serverUser{}, fmt.Errorf("running as root, PostgreSQL must run as the postgres OS user, which does not exist (%w): %s", err, installHint)
	}
	uid, err := strconv.Atoi(pu.Uid)
	if err != nil {
		return serverUser{}, fmt.Errorf("postgres user: uid %q: %w", pu.Uid, err)
	}
	gid, err := strconv.Atoi(pu.Gid)
	if err != nil {
		return serverUser{}, fmt.Errorf("postgres user: gid %q: %w", pu.Gid, err)
	}
	return serverUser{
		name: pu.Username, uid: uid, gid: gid, home: pu.HomeDir,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
	}, nil
}

// env is the environment for commands run as the server user: ours without
// libpq's PG* variables (so nothing connects elsewhere by accident), with
// HOME set to the user's home.
func (u serverUser) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	if u.home != "" {
		env = append(env, "HOME="+u.home)
	}
	return env
}

// chownTree gives dir and everything below it to the server user.
func (u serverUser) chownTree(dir string) error {
	if u.cred == nil {
		return nil
	}
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.uid, u.gid)
	})
}

// GiveToServerUser gives dir and everything below it to the server's OS
// user when the tests run as root (restore_command runs as that user and
// must read a repository the test wrote); otherwise it does nothing.
func GiveToServerUser(t testing.TB, dir string) {
	t.Helper()
	u, err := lookupServerUser()
	if err != nil {
		t.Fatal(err)
	}
	if err := u.chownTree(dir); err != nil {
		t.Fatal(err)
	}
}

// MajorsEnv names the environment variable listing the majors the
// multi-version tests must run on (comma-separated, e.g. "16,17,18").
const MajorsEnv = "SYNBAK_PG_MAJORS"

// CIMajors are the majors the multi-version tests need in CI (CI set) when
// SYNBAK_PG_MAJORS is not: the ones .ci/install-pg.sh installs.
var CIMajors = []int{16, 17, 18}

// MatrixMajors returns the majors a multi-version test runs on:
// $SYNBAK_PG_MAJORS, else CIMajors in CI, else every installed major from
// 16 on. A listed or CI major that is not installed fails the test; with
// none installed outside CI the test is skipped.
func MatrixMajors(t testing.TB) []int {
	t.Helper()
	var want []int
	if s := os.Getenv(MajorsEnv); s != "" {
		for _, f := range strings.Split(s, ",") {
			m, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				t.Fatalf("pgtest: %s=%q: %v", MajorsEnv, s, err)
			}
			want = append(want, m)
		}
	} else if os.Getenv("CI") != "" {
		want = CIMajors
	}
	if want == nil {
		for _, in := range Installs() {
			if in.Major >= 16 {
				want = append(want, in.Major)
			}
		}
		if len(want) == 0 {
			t.Skipf("pgtest: no PostgreSQL 16 or newer installed (run .ci/install-pg.sh, or set %s or %s)", BinDirsEnv, MajorsEnv)
		}
		return want
	}
	for _, m := range want {
		if _, err := BinDirFor(m); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	return want
}

// MatrixMajorsFrom returns the majors of MatrixMajors that are at least
// min (e.g. 17 for incremental backups). With none, the test skips, or
// fails when CI is set: in CI a missing server is a failure.
func MatrixMajorsFrom(t testing.TB, min int) []int {
	t.Helper()
	var out []int
	for _, m := range MatrixMajors(t) {
		if m >= min {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		msg := fmt.Sprintf("pgtest: no PostgreSQL %d or newer in the test matrix (%s; run .ci/install-pg.sh)", min, MajorsEnv)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return out
}
