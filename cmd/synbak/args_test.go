package main

import (
	"strings"
	"testing"
)

// TestCommandLineExitCodes: an unknown command or a surplus positional
// argument is a command-line error, exit 2, at every level; wal-fetch keeps
// 255 (PostgreSQL reads it); a group without a command prints its help.
func TestCommandLineExitCodes(t *testing.T) {
	env := map[string]string{"SYNBAK_STATE_DIR": t.TempDir()}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"verfy"}, 2, `did you mean "verify"`},
		{[]string{"wal", "strem"}, 2, `unknown command "strem" for "synbak wal"`},
		{[]string{"config", "chek"}, 2, `unknown command "chek"`},
		{[]string{"media", "sync", "now"}, 2, `"now"`},
		{[]string{"init", "extra"}, 2, `"extra"`},
		{[]string{"list", "extra"}, 2, `"extra"`},
		{[]string{"verify", "--quick", "extra"}, 2, `"extra"`},
		{[]string{"restore", "extra"}, 2, `"extra"`},
		{[]string{"version", "extra"}, 2, `"extra"`},
		{[]string{"-c", "/dev/null", "backup", "now"}, 2, `"now"`},
		{[]string{"--no-such-flag"}, 2, "unknown flag"},
		{[]string{"wal-fetch", "one"}, 255, "FILE and DEST"},
		{[]string{"wal-fetch", "a", "b", "c"}, 255, "FILE and DEST"},
		{[]string{"wal"}, 0, "stream"},
		{[]string{"version"}, 0, ""},
	} {
		code, stdout, stderr := runCLI(t, env, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("synbak %s: exit %d, want %d with %q\n%s%s", strings.Join(tc.args, " "), code, tc.code, tc.want, stdout, stderr)
		}
	}
}
