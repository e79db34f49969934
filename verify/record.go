package verify

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/internal/durable"
)

// RecordFile is where `synbak verify` leaves its last result in the state
// directory, for the agent's health, metrics and status page.
const RecordFile = "last-verify.json"

// maxRecordProblems bounds the problems a record keeps.
const maxRecordProblems = 20

// Record is the result of the newest `synbak verify`.
type Record struct {
	Time     time.Time `json:"time"`
	OK       bool      `json:"ok"`
	Quick    bool      `json:"quick"`
	Objects  int       `json:"objects"`
	Count    int       `json:"problem_count"`
	Problems []string  `json:"problems,omitempty"`
}

// NewRecord summarises a run that found problems (the report's and any
// others, e.g. the live database's media check).
func NewRecord(rep Report, problems []string, at time.Time) Record {
	r := Record{Time: at.UTC(), OK: len(problems) == 0, Quick: rep.Quick, Objects: rep.Objects, Count: len(problems)}
	r.Problems = append([]string(nil), problems[:min(len(problems), maxRecordProblems)]...)
	return r
}

// SaveRecord writes rec into stateDir atomically (0600). Run as root in a
// state directory that belongs to another user (the agent's), the file is
// given to that user, so that the agent can read it.
func SaveRecord(stateDir string, rec Record) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	return durable.Write(filepath.Join(stateDir, RecordFile), durable.Options{Mode: 0o600}, func(f *os.File) error {
		if _, err := f.Write(append(data, '\n')); err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			var st unix.Stat_t
			if unix.Stat(stateDir, &st) == nil && st.Uid != 0 {
				return f.Chown(int(st.Uid), int(st.Gid))
			}
		}
		return nil
	})
}

// LoadRecord reads the newest record in stateDir (nil, nil when there is
// none yet).
func LoadRecord(stateDir string) (*Record, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, RecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(stateDir, RecordFile), err)
	}
	return &r, nil
}
