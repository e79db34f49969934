package main

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/pgtest"
)

// commitLog commits rows into acks one by one and records each id only
// after its COMMIT returned (with synchronous_standby_names naming synbak:
// after synbak reported it flushed). It stops at the first error: the
// database host is gone.
type commitLog struct {
	mu   sync.Mutex
	ids  []int
	err  error
	stop chan struct{}
	done chan struct{}
}

func startCommits(t *testing.T, c *pgtest.Cluster) *commitLog {
	t.Helper()
	conn := c.Conn(t, "synapse")
	l := &commitLog{stop: make(chan struct{}), done: make(chan struct{})}
	base, cancelAll := context.WithCancel(context.Background())
	// Before the connection is closed (cleanups run last first): a test
	// that fails midway must not close it under the client.
	t.Cleanup(func() { cancelAll(); <-l.done })
	go func() {
		defer close(l.done)
		for n := 1; ; n++ {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(base, 2*time.Minute)
			_, err := conn.Exec(ctx, "INSERT INTO acks VALUES ($1)", n)
			cancel()
			if err != nil {
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			l.ids = append(l.ids, n)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *commitLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

// ended waits until the client saw its connection fail and returns the
// acknowledged ids.
func (l *commitLog) ended(t *testing.T) []int {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(time.Minute):
		t.Fatal("the client's commit did not fail within a minute of the host's loss")
	}
	return l.ids
}

// end stops the client (which must not have failed) and returns the
// acknowledged ids.
func (l *commitLog) end(t *testing.T) []int {
	t.Helper()
	close(l.stop)
	<-l.done
	if l.err != nil {
		t.Fatalf("client: %v", l.err)
	}
	return l.ids
}

// hostLossResult is one trial's outcome (bench/hostloss reads it from the
// test's log).
type hostLossResult struct {
	Mode     string `json:"mode"`
	Acked    int    `json:"acked"`
	Restored int    `json:"restored"`
	Missing  int    `json:"missing"`
}

// Host-loss modes:
//   - running: the database host is lost while the agent runs; the spool's
//     open segment must reach the repository while disconnected (checked
//     before the agent is killed with SIGKILL, so no shutdown helps).
//   - sigterm: the host is lost, then the agent gets SIGTERM at once while
//     disconnected.
//   - kill9: the agent is killed with SIGKILL under load, then the host is
//     lost; the agent restarted without a server must store the spool's
//     partial at start (checked before killing it again with SIGKILL).
var hostLossModes = []string{"running", "sigterm", "kill9"}

// TestHostLossLosesNothingAcknowledged: with synchronous replication to
// synbak, every commit that returned to the client is restored by
// `restore --latest` after the database host is lost, in each mode.
func TestHostLossLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("real clusters")
	}
	for _, mode := range hostLossModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			r := hostLossTrial(t, mode, 200)
			b, _ := json.Marshal(r)
			t.Logf("hostloss-result %s", b)
			if r.Missing != 0 {
				t.Errorf("%s: %d of %d acknowledged commits missing after restore --latest", mode, r.Missing, r.Acked)
			}
		})
	}
}

// hostLossTrial runs one trial; minCommits is how many acknowledged
// commits the client makes at least before the host is lost.
func hostLossTrial(t *testing.T, mode string, minCommits int) hostLossResult {
	s := newAgentSite(t)
	s.env = append(s.env, "SYNBAK_WAL_SYNCHRONOUS=true")
	s.c.Exec(t, "postgres", "ALTER SYSTEM SET synchronous_standby_names = 'synbak'")
	s.c.Exec(t, "postgres", "SELECT pg_reload_conf()")
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup and WAL streaming", func() bool {
		st := s.status(t)
		return st.Backups != nil && st.Backups.Count == 1 && st.WAL.Streaming
	})
	waitFor(t, 30*time.Second, "synbak as the synchronous standby", func() bool {
		return s.c.Text(t, "postgres", "select coalesce(max(sync_state), '') from pg_stat_replication where application_name = 'synbak'") == "sync"
	})
	load := startCommits(t, s.c)
	waitFor(t, time.Minute, "acknowledged commits", func() bool { return load.count() >= minCommits })

	// storedWhileDisconnected: the agent (no server) has stored every
	// acknowledged byte and everything finished in its spool.
	storedWhileDisconnected := func() bool {
		w := s.status(t).WAL
		return w != nil && !w.Streaming && w.LastError != "" && w.Stored != "0/0" && w.UnstoredBytes == 0 && w.UnstoredSeconds == 0 && w.Spooled == 0
	}
	switch mode {
	case "running":
		s.c.LoseHost(t)
		load.ended(t)
		waitFor(t, 30*time.Second, "the spool stored while disconnected", storedWhileDisconnected)
		if _, err := p.stop(t, syscall.SIGKILL, 10*time.Second); err == nil {
			t.Fatal("the agent exited cleanly after SIGKILL?")
		}
	case "sigterm":
		s.c.LoseHost(t)
		load.ended(t)
		if _, err := p.stop(t, syscall.SIGTERM, 20*time.Second); err != nil {
			t.Fatalf("the agent exited with %v after SIGTERM", err)
		}
	case "kill9":
		if _, err := p.stop(t, syscall.SIGKILL, 10*time.Second); err == nil {
			t.Fatal("the agent exited cleanly after SIGKILL?")
		}
		s.c.LoseHost(t)
		load.ended(t)
		p = s.startAgent(t)
		waitFor(t, 30*time.Second, "the spool stored at start without a server", storedWhileDisconnected)
		if _, err := p.stop(t, syscall.SIGKILL, 10*time.Second); err == nil {
			t.Fatal("the agent exited cleanly after SIGKILL?")
		}
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	acked := load.ended(t)
	if len(acked) < minCommits {
		t.Fatalf("only %d commits acknowledged", len(acked))
	}

	rc, out := s.restoreCLI(t, "--latest")
	have := map[int]bool{}
	rows, err := rc.Conn(t, "synapse").Query(context.Background(), "select n from acks")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		have[n] = true
	}
	res := hostLossResult{Mode: mode, Acked: len(acked), Restored: len(have)}
	for _, n := range acked {
		if !have[n] {
			res.Missing++
		}
	}
	if res.Missing > 0 {
		t.Logf("restore output:\n%s", out)
	}
	rc.Stop(t)
	return res
}

// hostLossTrials is how many trials of each mode to run
// (SYNBAK_HOSTLOSS_TRIALS; bench/hostloss sets it).
func hostLossTrials() int {
	n, _ := strconv.Atoi(os.Getenv("SYNBAK_HOSTLOSS_TRIALS"))
	return n
}

// TestHostLossSoak is bench/hostloss's trial runner: it runs only with
// SYNBAK_HOSTLOSS_TRIALS set.
func TestHostLossSoak(t *testing.T) {
	n := hostLossTrials()
	if n <= 0 {
		t.Skip("SYNBAK_HOSTLOSS_TRIALS not set (bench/hostloss runs this)")
	}
	commits, _ := strconv.Atoi(os.Getenv("SYNBAK_HOSTLOSS_COMMITS"))
	if commits <= 0 {
		commits = 1000
	}
	for i := 0; i < n; i++ {
		mode := hostLossModes[i%len(hostLossModes)]
		t.Run(mode+"-"+strconv.Itoa(i), func(t *testing.T) {
			r := hostLossTrial(t, mode, commits)
			b, _ := json.Marshal(r)
			t.Logf("hostloss-result %s", b)
			if r.Missing != 0 {
				t.Errorf("%s: %d of %d acknowledged commits missing", mode, r.Missing, r.Acked)
			}
		})
	}
}
