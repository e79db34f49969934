package main

import (
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/synapse"
)

// exitError carries an explicit exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withCode attaches an exit code to err.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// usageError marks an error in the command line: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCode maps an error to product.md's exit codes: 2 for anything wrong
// with the command line, synbak.yaml or homeserver.yaml, 1 otherwise.
func exitCode(st *rootState, err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || config.IsInvalid(err) || synapse.IsInvalid(err) {
		return 2
	}
	if st != nil && st.flagError {
		return 2
	}
	return 1
}

// oneLine joins a multi-line error (errors.Join) into one line per problem.
func oneLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	var out []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\nsynbak: ")
}

// printJSON writes v as indented JSON (the --json output of the commands).
func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
