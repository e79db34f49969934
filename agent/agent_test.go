package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/synbak/synbak/internal/shutdown"
	"github.com/synbak/synbak/internal/wait"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/verify"
	"github.com/synbak/synbak/wal"
)

// fakeWAL is a part that reports WAL status; it streams while it runs.
type fakeWAL struct {
	streaming atomic.Bool
	runs      atomic.Int32
}

func (f *fakeWAL) Status() wal.Status { return wal.Status{Streaming: f.streaming.Load(), Timeline: 1} }

func (f *fakeWAL) Run(ctx context.Context) error {
	f.runs.Add(1)
	f.streaming.Store(true)
	<-ctx.Done()
	f.streaming.Store(false)
	return nil
}

// idle is a part that waits for the end.
func idle(ctx context.Context) error { <-ctx.Done(); return nil }

func scrape(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

// A failing component is retried with growing backoff, counted and
// reported, while the others keep running; a component that recovers
// clears the problem.
func TestFailingComponentIsRetriedWithoutStoppingOthers(t *testing.T) {
	var runs atomic.Int32
	var failing atomic.Bool
	failing.Store(true)
	w := &fakeWAL{}
	a := New(Options{
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond,
		Parts: []Part{
			{Name: "wal", Runner: w},
			{Name: "backups", Runner: RunFunc(func(ctx context.Context) error {
				runs.Add(1)
				if failing.Load() {
					return errors.New("base backup: disk full")
				}
				<-ctx.Done()
				return nil
			})},
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	h := a.Handler()

	wait.For(t, 10*time.Second, "four failures", func() bool { return runs.Load() >= 4 })
	if w.runs.Load() != 1 || !w.streaming.Load() {
		t.Errorf("the WAL component ran %d times (streaming %v) while backups failed; want once, still running", w.runs.Load(), w.streaming.Load())
	}
	// Between two runs (not while one runs) the failure is a problem.
	var code int
	var body string
	wait.For(t, 10*time.Second, "/healthz to report the failing part", func() bool {
		code, body = scrape(t, h, "/healthz")
		return code == 503
	})
	if !strings.Contains(body, "backups: failed") || !strings.Contains(body, "disk full") {
		t.Errorf("/healthz while failing: %d %q", code, body)
	}
	_, metrics := scrape(t, h, "/metrics")
	if !strings.Contains(metrics, `synbak_component_errors_total{component="backups"} `) || strings.Contains(metrics, `synbak_component_errors_total{component="backups"} 0`) {
		t.Errorf("errors not counted:\n%s", grep(metrics, "synbak_component_errors_total"))
	}
	if !strings.Contains(metrics, `synbak_component_errors_total{component="wal"} 0`) {
		t.Errorf("wal errors:\n%s", grep(metrics, "synbak_component_errors_total"))
	}
	var st ComponentStatus
	for _, c := range a.Status().Components {
		if c.Name == "backups" {
			st = c
		}
	}
	if st.Failures < 4 || st.Restarts < 3 || st.LastError == "" {
		t.Errorf("backups status %+v", st)
	}

	failing.Store(false)
	wait.For(t, 10*time.Second, "healthy after the component recovered", func() bool { code, _ := scrape(t, h, "/healthz"); return code == 200 })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// A component that ignores cancellation makes Run return an error after
// ShutdownTimeout instead of hanging.
func TestShutdownIsBounded(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	a := New(Options{ShutdownTimeout: 100 * time.Millisecond, Parts: []Part{
		{Name: "stuck", Runner: RunFunc(func(ctx context.Context) error { <-block; return nil })},
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	wait.For(t, 10*time.Second, "running", func() bool { return a.Status().Components[0].Running })
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "stuck") {
			t.Errorf("Run: %v, want an error naming the stuck component", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run hung")
	}
}

// The receiver not streaming for longer than Disconnected is a problem;
// a shorter gap is not.
func TestHealthDisconnected(t *testing.T) {
	w := &fakeWAL{}
	a := New(Options{Parts: []Part{{Name: "wal", Runner: w}}, Health: HealthOptions{Disconnected: time.Hour}})
	now := time.Now()
	a.sampleOnce(now)
	if st := a.Status(); !st.Healthy {
		t.Errorf("unhealthy right after start: %v", st.Problems)
	}
	a = New(Options{Parts: []Part{{Name: "wal", Runner: w}}, Health: HealthOptions{Disconnected: time.Nanosecond}})
	time.Sleep(time.Millisecond)
	if st := a.Status(); st.Healthy || !strings.Contains(strings.Join(st.Problems, "\n"), "not been streaming") {
		t.Errorf("not streaming past the limit: %v", st.Problems)
	}
	w.streaming.Store(true)
	a.sampleOnce(time.Now())
	if st := a.Status(); !st.Healthy {
		t.Errorf("streaming: %v", st.Problems)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A failed drill turns health red and shows in the metrics; a passing one
// clears it.
func TestDrillScheduleHealthAndMetrics(t *testing.T) {
	var pass atomic.Bool
	d := &DrillSchedule{Interval: 10 * time.Millisecond, Log: slogDiscard(), Drill: func(ctx context.Context) (DrillResult, error) {
		if pass.Load() {
			return DrillResult{OK: true, Seconds: 12.5}, nil
		}
		return DrillResult{Problems: []string{"restore failed: WAL segment wal/00000001/000000010000000000000007 is missing"}, Seconds: 3}, nil
	}}
	a := New(Options{Parts: []Part{{Name: "drill", Runner: d}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	h := a.Handler()
	wait.For(t, 10*time.Second, "a failed drill reported", func() bool {
		code, body := scrape(t, h, "/healthz")
		return code == 503 && strings.Contains(body, "drill: the last restore drill") && strings.Contains(body, "000000010000000000000007")
	})
	if _, m := scrape(t, h, "/metrics"); !strings.Contains(m, "synbak_drill_last_ok 0") || !strings.Contains(m, "synbak_drill_last_success_timestamp_seconds 0") ||
		!strings.Contains(m, `synbak_component_errors_total{component="drill"} `) || strings.Contains(m, `synbak_component_errors_total{component="drill"} 0`) {
		t.Errorf("metrics after a failed drill (counted as the drill component's error):\n%s", grep(m, "synbak_drill")+"\n"+grep(m, "component_errors"))
	}
	pass.Store(true)
	wait.For(t, 10*time.Second, "a passing drill", func() bool { code, _ := scrape(t, h, "/healthz"); return code == 200 })
	if _, m := scrape(t, h, "/metrics"); !strings.Contains(m, "synbak_drill_duration_seconds 12.5") || !strings.Contains(m, "synbak_drill_last_ok 1") {
		t.Errorf("metrics after a passing drill:\n%s", grep(m, "synbak_drill"))
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

type fakeMedia struct{ st mediawatch.Stats }

func (f *fakeMedia) Stats() mediawatch.Stats { return f.st }

func (f *fakeMedia) Run(ctx context.Context) error { return idle(ctx) }

// A media file failing to copy for longer than the limit turns health red,
// naming the file and the error; shorter, or once copied, it does not.
func TestHealthNamesAFailingMediaFile(t *testing.T) {
	m := &fakeMedia{}
	a := New(Options{Parts: []Part{{Name: "media", Runner: m}}, Health: HealthOptions{MediaFailure: time.Minute}})
	now := time.Now()
	m.st = mediawatch.Stats{FailingFiles: 3, Failing: []mediawatch.FileFailure{
		{Path: "local_content/ab/cd/efgh", Err: "open …: input/output error", Since: now.Add(-30 * time.Second), Attempts: 6},
	}}
	if st := a.Status(); !st.Healthy {
		t.Fatalf("failing for 30s, limit 1m: unhealthy: %v", st.Problems)
	}
	m.st.Failing[0].Since = now.Add(-2 * time.Minute)
	st := a.Status()
	p := strings.Join(st.Problems, "\n")
	if st.Healthy || !strings.Contains(p, "local_content/ab/cd/efgh cannot be copied") || !strings.Contains(p, "input/output error") || !strings.Contains(p, "2 more files failing") {
		t.Fatalf("failing for 2m: %v", st.Problems)
	}
	m.st = mediawatch.Stats{}
	if st := a.Status(); !st.Healthy {
		t.Fatalf("no failing file: %v", st.Problems)
	}
}

// Every documented series is present, zero-valued, in an agent without any
// part (drills off, no dumps ...), and the exposition is promlint-clean.
func TestMetricsAlwaysPresentAndLintClean(t *testing.T) {
	a := New(Options{BuildInfo: map[string]string{"version": "1.2.3", "commit": "abc"},
		Parts: []Part{{Name: "wal", Runner: RunFunc(idle)}}})
	h := a.Handler()
	_, m := scrape(t, h, "/metrics")
	for _, name := range []string{
		"synbak_healthy", "synbak_wal_streaming", "synbak_wal_archived_lsn", "synbak_wal_lag_bytes",
		"synbak_postgres_up", "synbak_basebackups", "synbak_basebackup_last_success_timestamp_seconds",
		"synbak_media_pending_files", "synbak_media_failing_files", "synbak_media_added_files_total",
		"synbak_drill_last_ok", "synbak_drill_runs_total", "synbak_drill_last_success_timestamp_seconds",
		"synbak_dumps", "synbak_dump_last_failed", "synbak_config_last_snapshot_timestamp_seconds",
		"synbak_component_errors_total", "synbak_media_copy_latency_seconds_count",
	} {
		if !strings.Contains(m, "\n"+name+" ") && !strings.Contains(m, "\n"+name+"{") {
			t.Errorf("%s missing from /metrics", name)
		}
	}
	if !strings.Contains(m, `synbak_build_info{commit="abc",goversion="go`) || !strings.Contains(m, `version="1.2.3"} 1`) {
		t.Errorf("build info:\n%s", grep(m, "build_info"))
	}
	problems, err := promlint.New(strings.NewReader(m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// The example alert rules and Grafana dashboard name only metrics the agent
// exports (a renamed metric must not silently break an admin's alerts).
func TestExamplesUseExportedMetrics(t *testing.T) {
	a := New(Options{Parts: []Part{{Name: "wal", Runner: RunFunc(idle)}}})
	_, m := scrape(t, a.Handler(), "/metrics")
	exported := map[string]bool{}
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "# TYPE ") {
			f := strings.Fields(l)
			exported[f[2]] = true
			if f[3] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					exported[f[2]+s] = true
				}
			}
		}
	}
	name := regexp.MustCompile(`\b(synbak_[a-z0-9_]+|process_[a-z0-9_]+)\b`)
	for _, file := range []string{"../examples/prometheus/alerts.yml", "../examples/grafana/synbak.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		used := name.FindAllString(string(data), -1)
		if len(used) < 5 {
			t.Fatalf("%s names only %d metrics", file, len(used))
		}
		for _, n := range used {
			if !exported[n] {
				t.Errorf("%s uses %s, which the agent does not export", file, n)
			}
		}
	}
}

// The newest `synbak verify` result, recorded in the state directory,
// turns health red while it has problems (naming the first) and is
// exported; a passing run clears it.
func TestHealthFollowsTheLastVerify(t *testing.T) {
	dir := t.TempDir()
	a := New(Options{StateDir: dir})
	if st := a.Status(); !st.Healthy || st.Verify != nil {
		t.Fatalf("no verify recorded: %+v", st)
	}
	rep := verify.Report{Objects: 10}
	if err := verify.SaveRecord(dir, verify.NewRecord(rep, []string{"wal/00000001/000000010000000000000003: checksum mismatch", "another"}, time.Now())); err != nil {
		t.Fatal(err)
	}
	st := a.Status()
	p := strings.Join(st.Problems, "\n")
	if st.Healthy || !strings.Contains(p, "found 2 problems, first: wal/00000001/000000010000000000000003: checksum mismatch") {
		t.Fatalf("after a failing verify: %v", st.Problems)
	}
	_, m := scrape(t, a.Handler(), "/metrics")
	if !strings.Contains(m, "synbak_verify_last_ok 0") || !strings.Contains(m, "synbak_verify_last_problems 2") || strings.Contains(m, "synbak_verify_last_run_timestamp_seconds 0\n") {
		t.Errorf("metrics after a failing verify:\n%s", grep(m, "synbak_verify"))
	}
	if err := verify.SaveRecord(dir, verify.NewRecord(rep, nil, time.Now())); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); !st.Healthy || st.Verify == nil || !st.Verify.OK {
		t.Fatalf("after a passing verify: %+v", st.Problems)
	}
	if _, m := scrape(t, a.Handler(), "/metrics"); !strings.Contains(m, "synbak_verify_last_ok 1") {
		t.Errorf("metrics after a passing verify:\n%s", grep(m, "synbak_verify"))
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A part given a budget uses what the agent leaves it: Run gives the parts
// ShutdownTimeout less PartsReserve, a part whose clean stop takes longer
// is cut off by its grace (not by the agent's wait), and Run returns nil
// with every goroutine joined.
func TestPartsStopWithinTheNestedBudget(t *testing.T) {
	budget := 600 * time.Millisecond
	var graceTook atomic.Int64
	slow := RunFunc(func(ctx context.Context) error {
		<-ctx.Done()
		start := time.Now()
		g, cancel := shutdown.Grace(ctx, time.Hour)
		defer cancel()
		<-g.Done() // a drain that would take longer than the budget
		graceTook.Store(int64(time.Since(start)))
		return nil
	})
	ignore := goleak.IgnoreCurrent()
	a := New(Options{ShutdownTimeout: budget, Listen: "127.0.0.1:0", Parts: []Part{{Name: "wal", Runner: slow}, {Name: "probe", Runner: RunFunc(idle)}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	wait.For(t, 10*time.Second, "running", func() bool { return a.Addr() != "" && a.Status().Components[0].Running })
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run hung")
	}
	took := time.Since(start)
	want := budget - PartsReserve(budget)
	if g := time.Duration(graceTook.Load()); g < want-50*time.Millisecond || took > budget {
		t.Errorf("the part's grace lasted %s (want about %s), Run returned after %s (budget %s)", g, want, took, budget)
	}
	goleak.VerifyNone(t, ignore)
}
