package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/internal/wait"
)

type webhookSink struct {
	mu      sync.Mutex
	events  []map[string]any
	status  int
	block   chan struct{}
	arrived int
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.arrived++
	s.mu.Unlock()
	if s.block != nil {
		<-s.block
	}
	var ev map[string]any
	_ = json.NewDecoder(r.Body).Decode(&ev)
	s.mu.Lock()
	s.events = append(s.events, ev)
	code := s.status
	s.mu.Unlock()
	if code != 0 {
		w.WriteHeader(code)
	}
}

func (s *webhookSink) got() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.events...)
}

// TestWebhookDedupAndEvents: the watcher reports a failed backup once per
// distinct error, a failed drill and a slow one; the webhook gets JSON
// with the kind, the lines and the plain text.
func TestWebhookDedupAndEvents(t *testing.T) {
	sink := &webhookSink{}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	n := New(Options{Senders: []Sender{&Webhook{URL: srv.URL}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	w := &Watch{Notifier: n, RTOBound: time.Minute}
	now := time.Now()
	st := agent.Status{Healthy: true, Backups: &agent.BackupStatus{}, Drills: &agent.DrillStatus{}}
	w.check(st, now, true)
	st.Backups = &agent.BackupStatus{LastError: "connection refused"}
	w.check(st, now, false)
	st.Backups = &agent.BackupStatus{} // retried: cleared, then the same error again
	w.check(st, now, false)
	st.Backups = &agent.BackupStatus{LastError: "connection refused"}
	w.check(st, now, false)
	st.Drills = &agent.DrillStatus{Runs: 1, LastOK: false, LastProblems: []string{"WAL segment missing"}}
	w.check(st, now, false)
	st.Drills = &agent.DrillStatus{Runs: 2, LastOK: true, LastDuration: 125}
	w.check(st, now, false)
	wait.For(t, 10*time.Second, "3 events", func() bool { return len(sink.got()) >= 3 })
	time.Sleep(100 * time.Millisecond)
	evs := sink.got()
	if len(evs) != 3 {
		t.Fatalf("got %d events, want 3 (backup failed once, drill failed, drill slow): %v", len(evs), evs)
	}
	for i, want := range []string{KindBackupFailed, KindDrillFailed, KindDrillSlow} {
		if evs[i]["kind"] != want {
			t.Errorf("event %d kind %v, want %s", i, evs[i]["kind"], want)
		}
		if evs[i]["text"] == "" || evs[i]["id"] == "" {
			t.Errorf("event %d lacks text or id: %v", i, evs[i])
		}
	}
}

// TestQueueBoundedAndPermanentErrors: with the target stuck, Notify never
// blocks and drops what does not fit (counted); a 4xx answer is not
// retried.
func TestQueueBoundedAndPermanentErrors(t *testing.T) {
	sink := &webhookSink{block: make(chan struct{})}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	reg := prometheus.NewRegistry()
	n := New(Options{Senders: []Sender{&Webhook{URL: srv.URL}}, QueueSize: 2, Registerer: reg, Timeout: 5 * time.Second, RetryDelay: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	n.Notify(Event{Kind: KindTest, Title: "in flight"})
	wait.For(t, 10*time.Second, "a request in flight", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.arrived == 1 })
	start := time.Now()
	for i := range 9 {
		n.Notify(Event{Kind: KindTest, Title: "event " + string(rune('0'+i))})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Notify blocked for %s", d)
	}
	wait.For(t, 10*time.Second, "drops counted", func() bool {
		return testutil.ToFloat64(n.dropped.WithLabelValues("webhook")) >= 7
	})
	sink.mu.Lock()
	sink.status = http.StatusForbidden
	sink.mu.Unlock()
	close(sink.block)
	wait.For(t, 10*time.Second, "the queued ones tried", func() bool { return len(sink.got()) >= 3 })
	time.Sleep(100 * time.Millisecond)
	if got := len(sink.got()); got != 3 {
		t.Errorf("%d requests, want 3 (one in flight, two queued; 403 not retried)", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestWeeklySummary: with SummaryEvery the watcher sends the summary's
// lines.
func TestWeeklySummary(t *testing.T) {
	sink := &webhookSink{}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	n := New(Options{Senders: []Sender{&Webhook{URL: srv.URL}}})
	w := &Watch{Notifier: n, Interval: time.Hour, SummaryEvery: 50 * time.Millisecond,
		Status:  func() agent.Status { return agent.Status{Healthy: true} },
		Summary: func(context.Context) []string { return []string{"recovery window: A to B"} }}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = n.Run(ctx) })
	wg.Go(func() { _ = w.Run(ctx) })
	wait.For(t, 10*time.Second, "a summary", func() bool { return len(sink.got()) >= 1 })
	cancel()
	wg.Wait()
	ev := sink.got()[0]
	if ev["kind"] != KindSummary || !strings.Contains(ev["text"].(string), "recovery window: A to B") {
		t.Errorf("summary event %v", ev)
	}
}
