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
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// BinDirEnv names the environment variable that overrides where the
// PostgreSQL server binaries (initdb, pg_ctl, postgres, ...) are found.
const BinDirEnv = "SYNBAK_PG_BINDIR"

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
