package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The record `synbak verify` leaves for the agent: read back as written,
// bounded, and, written by root into a state directory that belongs to the
// agent's user, owned by that user.
func TestRecordRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if rec, err := LoadRecord(dir); rec != nil || err != nil {
		t.Fatalf("no record yet: %v %v", rec, err)
	}
	var problems []string
	for i := range 30 {
		problems = append(problems, fmt.Sprintf("problem %d", i))
	}
	at := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	if err := SaveRecord(dir, NewRecord(Report{Objects: 7, Quick: true}, problems, at)); err != nil {
		t.Fatal(err)
	}
	rec, err := LoadRecord(dir)
	if err != nil || rec == nil || rec.OK || rec.Count != 30 || len(rec.Problems) != maxRecordProblems || !rec.Time.Equal(at) || !rec.Quick || rec.Objects != 7 {
		t.Fatalf("record: %+v %v", rec, err)
	}
	fi, err := os.Stat(filepath.Join(dir, RecordFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record file: %v %v", fi.Mode(), err)
	}
	if os.Geteuid() != 0 {
		return
	}
	if err := os.Chown(dir, 65534, 65534); err != nil { // the agent's user's state directory
		t.Fatal(err)
	}
	if err := SaveRecord(dir, NewRecord(Report{}, nil, at)); err != nil {
		t.Fatal(err)
	}
	fi, err = os.Stat(filepath.Join(dir, RecordFile))
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("written by root into nobody's state directory: %v, want nobody's", err)
	}
}
