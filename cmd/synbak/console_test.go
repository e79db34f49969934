package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/pgtest"
)

// openPTY opens a pseudo-terminal pair with x/sys/unix alone.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 200}); err != nil {
		t.Fatalf("pty size: %v", err)
	}
	return m, s
}

// screenLines renders what a terminal shows for out: "\r" returns to the
// line's start (later characters overwrite earlier ones), ESC[K clears to
// the end of the line, "\n" ends it.
func screenLines(out []byte) []string {
	var lines []string
	var cur []rune
	col := 0
	s := string(out)
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "\x1b[K"):
			cur = cur[:col]
			i += 3
		case s[i] == '\r':
			col = 0
			i++
		case s[i] == '\n':
			lines = append(lines, string(cur))
			cur, col = cur[:0:0], 0
			i++
		default:
			r := []rune(s[i:])[0]
			if col < len(cur) {
				cur[col] = r
			} else {
				cur = append(cur, r)
			}
			col++
			i += len(string(r))
		}
	}
	if len(cur) > 0 {
		lines = append(lines, string(cur))
	}
	return lines
}

func TestScreenLines(t *testing.T) {
	got := screenLines([]byte("\r\x1b[K[===   ] 10%\r\x1b[Ktime=x level=INFO msg=a\n[====  ] 20%\r\x1b[K[======] 100%\nbackup done\n"))
	want := []string{"time=x level=INFO msg=a", "[======] 100%", "backup done"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
	// The bug this guards against: a record written after a bar without
	// clearing it.
	got = screenLines([]byte("\r[===] 100%  ETA 0stime=x level=INFO msg=a\n"))
	if len(got) != 1 || !strings.Contains(got[0], "ETA 0stime=") {
		t.Fatalf("got %q", got)
	}
}

// TestBackupOnATerminal runs `synbak backup` with standard error on a
// pseudo-terminal and debug logging: the screen shows the progress bar's
// last state, the closing summary, and every log record on a line of its
// own, never on the bar's line.
func TestBackupOnATerminal(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}})
	c.Exec(t, "postgres", "CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g")
	bin := pgtest.SynbakBinary(t)
	dir := t.TempDir()
	master, slave := openPTY(t)
	defer master.Close()

	cmd := exec.Command(bin, "-c", "/dev/null", "backup")
	cmd.Env = append(os.Environ(),
		"SYNBAK_POSTGRES_DSN="+c.DSN("postgres"), "SYNBAK_REPOSITORY_PATH="+filepath.Join(dir, "repo"),
		"SYNBAK_STATE_DIR="+filepath.Join(dir, "state"), "SYNBAK_LOG_LEVEL=debug", "SYNBAK_LOG_FORMAT=text",
		"SYNBAK_BASEBACKUP_PART_SIZE_MB=1", "SYNBAK_WAL_STATUS_INTERVAL=200ms")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	raw := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO once the child has exited
		raw <- b
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("backup did not finish in 3 minutes")
	}
	out := <-raw
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("\r\x1b[K[")) {
		t.Fatalf("no progress bar drawn on the terminal:\n%q", out)
	}
	lines := screenLines(out)
	var summary, bar, records int
	for _, l := range lines {
		// A record on a line of its own starts it; anything before it
		// is a progress line it was printed onto.
		if i := strings.Index(l, "time="); i > 0 {
			t.Errorf("a log record shares a progress line: %q", l)
		}
		if strings.HasPrefix(l, "time=") {
			records++
		}
		if strings.HasPrefix(l, "[") || strings.HasSuffix(l, ", done") {
			bar++
		}
		if strings.HasPrefix(l, "backup ") && strings.Contains(l, " complete: ") && strings.Contains(l, " stored (") && strings.Contains(l, "needs WAL ") {
			summary++
		}
	}
	if summary != 1 {
		t.Errorf("want one closing summary line, got %d in:\n%s", summary, strings.Join(lines, "\n"))
	}
	if records == 0 {
		t.Errorf("no log records on the screen (debug logging was on):\n%s", strings.Join(lines, "\n"))
	}
	if bar == 0 {
		t.Errorf("the progress line's last state is not on the screen:\n%s", strings.Join(lines, "\n"))
	}
	if id := strings.TrimSpace(stdout.String()); id == "" || !strings.Contains(string(out), id) {
		t.Errorf("stdout %q is not the backup's id named in the summary", stdout.String())
	}
}

// Logs keep one unit per kind of value, in JSON and text alike: durations
// in seconds, LSNs as X/X.
func TestLogUnits(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		cfg := &config.Config{}
		cfg.Log.Format, cfg.Log.Level = format, "info"
		newLogger(cfg, &buf).Info("m", "duration", 1500*time.Millisecond, "lsn", pglogrepl.LSN(0x2000028))
		out := buf.String()
		want := []string{`"duration":1.5`, `"lsn":"0/2000028"`}
		if format == "text" {
			want = []string{"duration=1.5", "lsn=0/2000028"}
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s log %q lacks %s", format, out, w)
			}
		}
	}
}
