package main

import (
	"io"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// console is standard error shared by the log handler and the progress
// line. On a terminal a log record first clears the progress line, prints
// itself on lines of its own and redraws the progress line below it, so
// that the two never share a line; elsewhere (journald, a pipe, a file)
// there is no progress line and records are written as they come.
type console struct {
	mu   sync.Mutex
	f    *os.File
	tty  bool
	line string // the progress line on screen, "" when none
}

// stderrConsole is the process's standard error. There is one standard
// error, so there is one console.
var stderrConsole = newConsole(os.Stderr)

func newConsole(f *os.File) *console {
	return &console{f: f, tty: isTerminal(f)}
}

// logWriter returns what a logger writing to w must write to: the console
// when w is standard error, so that log records and progress lines do not
// mix.
func logWriter(w io.Writer) io.Writer {
	if f, ok := w.(*os.File); ok && f == os.Stderr {
		return stderrConsole
	}
	return w
}

// Write writes one log record (slog writes a record per call).
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.line == "" {
		return c.f.Write(p)
	}
	_, _ = io.WriteString(c.f, "\r\x1b[K")
	n, err := c.f.Write(p)
	_, _ = io.WriteString(c.f, c.line)
	return n, err
}

// Draw replaces the progress line by line (cut to the terminal's width, so
// that it never wraps and "\r" returns to its start). Off a terminal it
// does nothing: callers log progress there instead.
func (c *console) Draw(line string) {
	if !c.tty {
		return
	}
	line = fitWidth(line, c.width())
	c.mu.Lock()
	defer c.mu.Unlock()
	c.line = line
	_, _ = io.WriteString(c.f, "\r\x1b[K"+line)
}

// Done ends the progress line: it stays on screen as the last state, and
// what follows starts on a new line.
func (c *console) Done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.line != "" {
		_, _ = io.WriteString(c.f, "\n")
		c.line = ""
	}
}

// Println prints a line of the closing summary, after any progress line.
func (c *console) Println(s string) {
	c.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = io.WriteString(c.f, s+"\n")
}

func (c *console) width() int {
	ws, err := unix.IoctlGetWinsize(int(c.f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 80
	}
	return int(ws.Col)
}

// fitWidth cuts s to fewer than width runes (the last column is left free:
// some terminals wrap when it is written).
func fitWidth(s string, width int) string {
	if width < 2 || utf8.RuneCountInString(s) < width {
		return s
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n >= width-2 {
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String() + "…"
}

// isTerminal reports whether f is a terminal (progress lines are drawn
// only there).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
