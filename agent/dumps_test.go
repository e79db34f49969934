package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
)

// fakeClock is the schedule's clock and timer: the test reads each wait
// the schedule asks for and decides when it is over.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	waits chan time.Duration
	fire  chan time.Time
}

func newFakeClock(t time.Time) *fakeClock {
	return &fakeClock{t: t, waits: make(chan time.Duration), fire: make(chan time.Time)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.waits <- d
	return c.fire
}

// nextWait returns the next wait the schedule asks for.
func (c *fakeClock) nextWait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.waits:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("the schedule did not start waiting")
		return 0
	}
}

// storeDump stores a complete dump's metadata as dump.Take does.
func storeDump(t *testing.T, r *repo.Repo, start, end time.Time) dump.Dump {
	t.Helper()
	d := dump.Dump{ID: dump.NewID(start), StartTime: start.UTC(), EndTime: end.UTC(),
		Databases: []dump.Database{{Name: "synapse", Size: 1000, StoredSize: 400, StartTime: start.UTC(), EndTime: end.UTC()}}}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(context.Background(), dump.MetaName(d.ID), bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	return d
}

func newDumpSchedule(t *testing.T, clock *fakeClock, interval time.Duration) (*DumpSchedule, chan dump.Dump) {
	r := repotest.New(t, t.TempDir(), repo.Options{Compression: "none"})
	taken := make(chan dump.Dump, 10)
	s := &DumpSchedule{Repo: r, Interval: interval, Log: slogDiscard(), Now: clock.Now, After: clock.After,
		Take: func(ctx context.Context) (dump.Dump, error) {
			start := clock.Now()
			clock.Advance(time.Minute)
			d := storeDump(t, r, start, clock.Now())
			taken <- d
			return d, nil
		},
	}
	return s, taken
}

func runSchedule(t *testing.T, run func(context.Context) error) (cancel func() error) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	return func() error {
		stop()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
			return nil
		}
	}
}

// With no dump in the repository the first is taken at once; then one
// every Interval after the newest ended, each followed by AfterDump.
func TestDumpScheduleFirstThenEveryInterval(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	s, taken := newDumpSchedule(t, clock, 6*time.Hour)
	prunes := 0
	s.AfterDump = func(ctx context.Context, d dump.Dump) string {
		prunes++
		return "deleted 0 dumps after " + d.ID
	}
	stop := runSchedule(t, s.Run)

	first := <-taken
	if w := clock.nextWait(t); w != 6*time.Hour {
		t.Errorf("wait after the first dump: %s, want the interval", w)
	}
	st := s.Status()
	if st.Count != 1 || st.Taken != 1 || st.LastID != first.ID || !st.LastEnd.Equal(first.EndTime) || st.LastDuration != 60 ||
		st.LastSize != 1000 || st.LastStoredSize != 400 || !st.Next.Equal(first.EndTime.Add(6*time.Hour)) || st.Running || st.LastError != "" ||
		st.LastPrune != "deleted 0 dumps after "+first.ID || st.Interval != 6*3600 {
		t.Errorf("status after the first dump: %+v", st)
	}

	clock.Advance(6 * time.Hour)
	clock.fire <- clock.Now()
	second := <-taken
	if !second.StartTime.Equal(first.EndTime.Add(6 * time.Hour)) {
		t.Errorf("second dump started %s, want the first's end plus the interval", second.StartTime)
	}
	if w := clock.nextWait(t); w != 6*time.Hour {
		t.Errorf("wait after the second dump: %s", w)
	}
	if st := s.Status(); st.Count != 2 || st.Taken != 2 || st.LastID != second.ID || prunes != 2 {
		t.Errorf("status after the second dump: %+v (%d prunes)", st, prunes)
	}
	if err := stop(); err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	if len(taken) != 0 {
		t.Errorf("%d more dumps taken", len(taken))
	}
}

// A dump the repository already has delays the first one to its end plus
// the interval; one older than the interval does not.
func TestDumpScheduleExistingDump(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	t.Run("recent", func(t *testing.T) {
		clock := newFakeClock(now)
		s, taken := newDumpSchedule(t, clock, time.Hour)
		old := storeDump(t, s.Repo, now.Add(-20*time.Minute), now.Add(-10*time.Minute))
		stop := runSchedule(t, s.Run)
		if w := clock.nextWait(t); w != 50*time.Minute {
			t.Errorf("first wait %s, want 50m", w)
		}
		if st := s.Status(); st.Count != 1 || st.LastID != old.ID || st.Taken != 0 {
			t.Errorf("status: %+v", st)
		}
		if err := stop(); err != nil || len(taken) != 0 {
			t.Errorf("Run: %v; %d dumps taken", err, len(taken))
		}
	})
	t.Run("older than the interval", func(t *testing.T) {
		clock := newFakeClock(now)
		s, taken := newDumpSchedule(t, clock, time.Hour)
		storeDump(t, s.Repo, now.Add(-3*time.Hour), now.Add(-2*time.Hour))
		stop := runSchedule(t, s.Run)
		<-taken
		if w := clock.nextWait(t); w != time.Hour {
			t.Errorf("wait after the dump: %s", w)
		}
		if st := s.Status(); st.Count != 2 || st.Taken != 1 {
			t.Errorf("status: %+v", st)
		}
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// A failed dump is returned to the supervisor and shows in /status,
// /healthz and /metrics until a dump succeeds.
func TestDumpScheduleFailure(t *testing.T) {
	clock := newFakeClock(time.Now())
	s, _ := newDumpSchedule(t, clock, time.Hour)
	s.Take = func(ctx context.Context) (dump.Dump, error) {
		return dump.Dump{}, errors.New("pg_dump: connection refused")
	}
	a := New(Options{Parts: []Part{{Name: "dumps", Runner: s}}})
	err := s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "dump: pg_dump: connection refused") {
		t.Fatalf("Run: %v, want the dump's error", err)
	}
	st := a.Status()
	if st.Dumps == nil || st.Dumps.LastError != "pg_dump: connection refused" || st.Dumps.Running || st.Dumps.Taken != 0 {
		t.Errorf("status: %+v", st.Dumps)
	}
	h := a.Handler()
	code, body := scrape(t, h, "/healthz")
	if code != 503 || !strings.Contains(body, "dumps: the last dump failed: pg_dump: connection refused") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	_, m := scrape(t, h, "/metrics")
	for _, want := range []string{"synbak_dumps 0", "synbak_dump_last_failed 1", "synbak_dump_running 0", "synbak_dump_last_end_timestamp_seconds 0"} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, grep(m, "synbak_dump"))
		}
	}
	_, js := scrape(t, h, "/status")
	if !strings.Contains(js, `"dumps": {`) || !strings.Contains(js, `"last_error": "pg_dump: connection refused"`) {
		t.Errorf("/status:\n%s", js)
	}
}

// No dump newer than twice the interval plus the slack is a problem; a
// newer one is not.
func TestDumpHealth(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	started := now.Add(-time.Minute)
	const iv = 6 * time.Hour
	for _, tc := range []struct {
		name    string
		st      DumpStatus
		started time.Time
		want    string // "" healthy
	}{
		{name: "fresh", st: DumpStatus{Count: 3, LastID: "x", LastEnd: now.Add(-iv)}, started: started},
		{name: "within the slack", st: DumpStatus{Count: 3, LastID: "x", LastEnd: now.Add(-2*iv - 59*time.Minute)}, started: started},
		{name: "stale", st: DumpStatus{Count: 3, LastID: "x", LastEnd: now.Add(-2*iv - 61*time.Minute)}, started: started,
			want: "dumps: the newest (x) ended 13h1m0s ago, more than twice dump.interval (6h0m0s) plus 1h0m0s"},
		{name: "a long dump widens the slack", st: DumpStatus{Count: 3, LastID: "x", LastEnd: now.Add(-2*iv - 2*time.Hour), LastDuration: 3 * 3600}, started: started},
		{name: "first one running", st: DumpStatus{Running: true}, started: started},
		{name: "none since long", st: DumpStatus{}, started: now.Add(-14 * time.Hour), want: "dumps: none complete although the agent started 14h0m0s ago"},
		{name: "failed", st: DumpStatus{Count: 1, LastEnd: now, LastError: "disk full"}, started: started, want: "dumps: the last dump failed: disk full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(dumpProblems(tc.st, iv, tc.started, now), "\n")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problems %q, want %q", got, tc.want)
			}
		})
	}
}
