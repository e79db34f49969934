package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/config"
)

// TestAgentSIGTERMWithABacklog: the repository stalls (its S3 server
// stopped with SIGSTOP: requests hang, nothing fails), WAL the agent has
// acknowledged piles up in its spool, and SIGTERM makes the agent exit 0
// within its shutdown budget (shutdown_timeout) instead of waiting for the
// uploads or exiting 1 with goroutines still running. Nothing is lost: after
// the repository is back and the agent restarted, everything PostgreSQL saw
// acknowledged is in the repository. The agent logs JSON in which every key
// appears once per line (component is added by whoever builds a part's
// logger, never again by the part).
func TestAgentSIGTERMWithABacklog(t *testing.T) {
	s := newAgentSite(t)
	s.useS3(t)
	const budget = 6 * time.Second
	s.env = append(s.env, "SYNBAK_SHUTDOWN_TIMEOUT="+budget.String(), "SYNBAK_LOG_FORMAT=json")
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup, WAL streaming, the config snapshotted", func() bool {
		st := s.status(t)
		return st.Backups != nil && st.Backups.Count == 1 && st.WAL != nil && st.WAL.Streaming && st.WAL.Spooled == 0 &&
			st.Config != nil && !st.Config.LastSnapshot.IsZero() && st.Media != nil && st.Media.Pending == 0
	})

	s.s3.Pause(t)
	// Four complete segments (1 MiB each) and an open one, acknowledged
	// by the agent and not stored.
	for i := range 4 {
		s.c.Exec(t, "synapse", fmt.Sprintf("INSERT INTO acks SELECT g FROM generate_series(%d, %d) g", i*20000+1, (i+1)*20000))
		s.c.Exec(t, "synapse", "SELECT pg_switch_wal()")
	}
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	last, err := pglogrepl.ParseLSN(s.c.Text(t, "synapse", "SELECT pg_current_wal_flush_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the backlog acknowledged and spooled, not stored", func() bool {
		st := s.status(t)
		fl, _ := pglogrepl.ParseLSN(st.WAL.Flushed)
		return fl >= last && st.WAL.Spooled >= 4
	})
	if st := s.status(t); st.WAL.UnstoredBytes < 4<<20 {
		t.Fatalf("only %d bytes unstored: the repository did not stall", st.WAL.UnstoredBytes)
	}

	took, err := p.stop(t, syscall.SIGTERM, budget+10*time.Second)
	if err != nil {
		t.Fatalf("the agent exited with %v %s after SIGTERM with a backlog (want 0)", err, took.Round(time.Millisecond))
	}
	t.Logf("the agent exited 0 %s after SIGTERM (shutdown_timeout %s)", took.Round(time.Millisecond), budget)
	if took > budget+2*time.Second {
		t.Errorf("the agent took %s to stop, more than shutdown_timeout %s (and process overhead)", took, budget)
	}
	// What the server saw acknowledged: the slot moves with the flush
	// position the receiver reports.
	acked, err := pglogrepl.ParseLSN(s.c.Text(t, "postgres", "select restart_lsn::text from pg_replication_slots where slot_name = 'synbak'"))
	if err != nil {
		t.Fatal(err)
	}
	if acked < last {
		t.Fatalf("the server's slot is at %s, before the backlog's end %s", acked, last)
	}

	s.s3.Resume(t)
	p = s.startAgent(t)
	waitFor(t, 2*time.Minute, "the backlog stored after the restart", func() bool {
		st := s.status(t)
		stored, _ := pglogrepl.ParseLSN(st.WAL.Stored)
		return stored >= acked
	})
	if took, err := p.stop(t, syscall.SIGTERM, budget+10*time.Second); err != nil {
		t.Fatalf("the restarted agent exited with %v after SIGTERM (%s)", err, took)
	}

	// The repository itself, read by `synbak list`, covers everything
	// acknowledged without a gap.
	if end := walCovered(t, s); end < acked {
		t.Errorf("the repository's WAL ends at %s, before the acknowledged %s", end, acked)
	}

	logs := agentLogs(t, s)
	if !bytes.Contains(bytes.Join(logs, nil), []byte("the shutdown budget ended before the spool was stored")) {
		t.Error("no agent said that its shutdown budget ended with WAL left in the spool")
	}

	// One owner per log attribute.
	lines := 0
	walLines := 0
	for _, f := range logs {
		sc := bufio.NewScanner(bytes.NewReader(f))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			keys, err := jsonKeys(sc.Bytes())
			if err != nil {
				t.Errorf("a log line that is not one JSON object (%v): %s", err, sc.Bytes())
				continue
			}
			lines++
			seen := map[string]bool{}
			for _, k := range keys {
				if seen[k] {
					t.Errorf("key %q twice in: %s", k, sc.Bytes())
				}
				seen[k] = true
			}
			if strings.Contains(sc.Text(), `"component":"wal"`) {
				walLines++
			}
		}
	}
	if lines < 20 || walLines == 0 {
		t.Errorf("%d log lines, %d of the WAL receiver: the logs were not captured", lines, walLines)
	}
}

// jsonKeys returns the top-level keys of one JSON object, duplicates kept.
func jsonKeys(line []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not an object")
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// agentLogs returns the contents of the site's agent logs.
func agentLogs(t *testing.T, s *agentSite) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(s.dir, "agent-*.log"))
	if err != nil || len(files) < 2 {
		t.Fatalf("agent logs: %v %v", files, err)
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// walCovered reads `synbak list --json` and returns the end of the WAL the
// repository holds without a gap from its first segment on timeline 1
// (complete segments, then the newest partial when it follows them).
func walCovered(t *testing.T, s *agentSite) pglogrepl.LSN {
	t.Helper()
	cmd := exec.Command(s.bin, "-c", "/dev/null", "list", "--json")
	cmd.Env = append(append(os.Environ(), s.env...), s.repoEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("synbak list --json: %v\n%s", err, stderr.String())
	}
	var l struct {
		WAL []struct {
			Timeline uint32 `json:"timeline"`
			Ranges   []struct {
				EndLSN string `json:"end_lsn"`
			} `json:"ranges"`
			Partial *struct {
				Segment string `json:"segment"`
				EndLSN  string `json:"end_lsn"`
			} `json:"partial"`
		} `json:"wal"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("synbak list --json: %v\n%s", err, out)
	}
	if len(l.WAL) != 1 || len(l.WAL[0].Ranges) != 1 {
		t.Fatalf("want one timeline with one contiguous range of WAL: %s", out)
	}
	tl := l.WAL[0]
	end, err := pglogrepl.ParseLSN(tl.Ranges[0].EndLSN)
	if err != nil {
		t.Fatal(err)
	}
	if tl.Partial != nil {
		const segSize = 1 << 20 // the site's --wal-segsize=1
		next := fmt.Sprintf("%08X%08X%08X", tl.Timeline, uint64(end)>>32, (uint64(end)&0xFFFFFFFF)/segSize)
		if tl.Partial.Segment == next {
			if p, err := pglogrepl.ParseLSN(tl.Partial.EndLSN); err == nil && p > end {
				end = p
			}
		}
	}
	return end
}

// TestServiceStopsLaterThanTheAgent: the packaged unit's TimeoutStopSec is
// longer than the agent's default shutdown budget, so that systemd never
// SIGKILLs an agent that is still within it.
func TestServiceStopsLaterThanTheAgent(t *testing.T) {
	b, err := os.ReadFile("../../examples/debian/synbak.service")
	if err != nil {
		t.Fatal(err)
	}
	var stop time.Duration
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "TimeoutStopSec="); ok {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Fatalf("TimeoutStopSec=%s: %v", v, err)
			}
		}
	}
	budget, err := time.ParseDuration(config.Defaults()["shutdown_timeout"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if stop <= budget {
		t.Fatalf("TimeoutStopSec %s is not longer than the default shutdown_timeout %s", stop, budget)
	}
}
