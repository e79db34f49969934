// Package notify tells an admin when protection breaks: it delivers events
// (health turning red and back, failed jobs, slow drills, a weekly
// summary) to a Matrix room through the homeserver's client-server API and
// to generic JSON webhooks.
//
// Delivery never disturbs the backup itself: Notify never blocks (each
// target has a bounded queue; an event that does not fit is dropped with a
// log line and a counter), every request has a timeout, and a target that
// keeps failing only loses its own messages. Events are deduplicated by key
// and rate-limited per target.
package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of events.
const (
	KindHealthRed    = "health_red"
	KindHealthGreen  = "health_green"
	KindBackupFailed = "backup_failed"
	KindDumpFailed   = "dump_failed"
	KindDrillFailed  = "drill_failed"
	KindDrillSlow    = "drill_slow"
	KindVerifyFailed = "verify_failed"
	KindSummary      = "summary"
	KindTest         = "test"
)

// Severities.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
	SeverityOK       = "ok"
	SeverityInfo     = "info"
)

// Event is one notification.
type Event struct {
	// ID identifies the event; every retry of its delivery carries it
	// (the Matrix transaction ID is derived from it), so that a retried
	// request is not posted twice. Notify sets it when empty.
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Severity string    `json:"severity"`
	Time     time.Time `json:"time"`
	// Server names the homeserver the agent protects (may be empty).
	Server string `json:"server,omitempty"`
	// Title is one line; Lines are the details (e.g. every problem).
	Title string   `json:"title"`
	Lines []string `json:"lines,omitempty"`
	// Key deduplicates: an event whose key was sent within the dedup
	// window is dropped. Empty: never deduplicated.
	Key string `json:"-"`
}

// Sender delivers one event to one target.
type Sender interface {
	// Name identifies the target in logs and metrics ("matrix", "webhook").
	Name() string
	// Send delivers ev once; an error for which IsPermanent is true is
	// not retried.
	Send(ctx context.Context, ev Event) error
}

// ErrPermanent marks a delivery error that a retry cannot fix (a 4xx
// answer other than 429).
var ErrPermanent = errors.New("permanent delivery failure")

// IsPermanent reports whether err is not worth retrying.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// Options configure a Notifier; zero values mean the defaults.
type Options struct {
	Senders []Sender
	Log     *slog.Logger
	// Registerer receives the notifier's metrics (nil: none).
	Registerer prometheus.Registerer
	// QueueSize bounds each target's queue (default 32).
	QueueSize int
	// Timeout bounds one delivery attempt (default 10 s).
	Timeout time.Duration
	// Attempts per event and target (default 4), with backoff from
	// RetryDelay (default 2 s) doubling.
	Attempts   int
	RetryDelay time.Duration
	// Burst and Per rate-limit each target: at most Burst messages at
	// once, then one per Per (defaults 10 and 1 min). Events over the
	// limit wait in the queue.
	Burst int
	Per   time.Duration
	// Dedup is how long an event key suppresses events with the same key
	// (default 6 h).
	Dedup time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Notifier queues events and delivers them.
type Notifier struct {
	opts    Options
	targets []*target

	sent, dropped, failed *prometheus.CounterVec

	mu   sync.Mutex
	seen map[string]time.Time // dedup key → when last accepted
	seq  uint64
	boot string
}

type target struct {
	s     Sender
	queue chan Event
}

// New returns a notifier; Run delivers.
func New(opts Options) *Notifier {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 32
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 4
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = 2 * time.Second
	}
	if opts.Burst <= 0 {
		opts.Burst = 10
	}
	if opts.Per <= 0 {
		opts.Per = time.Minute
	}
	if opts.Dedup <= 0 {
		opts.Dedup = 6 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	n := &Notifier{opts: opts, seen: map[string]time.Time{}}
	n.boot = strconv.FormatInt(opts.Now().UnixNano(), 36)
	for _, s := range opts.Senders {
		n.targets = append(n.targets, &target{s: s, queue: make(chan Event, opts.QueueSize)})
	}
	lbl := []string{"target"}
	n.sent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synbak_notifications_sent_total", Help: "Notifications delivered, by target."}, lbl)
	n.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synbak_notifications_dropped_total", Help: "Notifications dropped because the target's queue was full or delivery failed every attempt, by target."}, lbl)
	n.failed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "synbak_notification_errors_total", Help: "Failed delivery attempts, by target."}, lbl)
	for _, t := range n.targets {
		n.sent.WithLabelValues(t.s.Name())
		n.dropped.WithLabelValues(t.s.Name())
		n.failed.WithLabelValues(t.s.Name())
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(n.sent, n.dropped, n.failed)
	}
	return n
}

// Notify queues ev for every target without blocking. It returns false
// when ev was deduplicated away or no target took it.
func (n *Notifier) Notify(ev Event) bool {
	if n == nil || len(n.targets) == 0 {
		return false
	}
	now := n.opts.Now()
	n.mu.Lock()
	if ev.Key != "" {
		if last, ok := n.seen[ev.Key]; ok && now.Sub(last) < n.opts.Dedup {
			n.mu.Unlock()
			n.opts.Log.Debug("notification deduplicated", "kind", ev.Kind, "key", ev.Key)
			return false
		}
		n.seen[ev.Key] = now
		for k, t := range n.seen { // keep the map small
			if now.Sub(t) >= n.opts.Dedup {
				delete(n.seen, k)
			}
		}
	}
	n.seq++
	if ev.ID == "" {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%s/%s", n.boot, n.seq, ev.Kind, ev.Title))
		ev.ID = "synbak-" + hex.EncodeToString(sum[:12])
	}
	n.mu.Unlock()
	if ev.Time.IsZero() {
		ev.Time = now
	}
	queued := false
	for _, t := range n.targets {
		select {
		case t.queue <- ev:
			queued = true
		default:
			n.dropped.WithLabelValues(t.s.Name()).Inc()
			n.opts.Log.Warn("notification dropped: the target's queue is full", "target", t.s.Name(), "kind", ev.Kind)
		}
	}
	return queued
}

// Run delivers queued events until ctx is cancelled; it returns nil then.
// Events still queued at shutdown are dropped (with a log line): a
// notification never delays the agent's stop.
func (n *Notifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, t := range n.targets {
		wg.Go(func() { n.deliverLoop(ctx, t) })
	}
	wg.Wait()
	return nil
}

func (n *Notifier) deliverLoop(ctx context.Context, t *target) {
	name := t.s.Name()
	log := n.opts.Log.With("target", name)
	tokens := float64(n.opts.Burst)
	last := n.opts.Now()
	for {
		var ev Event
		select {
		case <-ctx.Done():
			if k := len(t.queue); k > 0 {
				log.Warn("notifications not delivered before shutdown", "count", k)
			}
			return
		case ev = <-t.queue:
		}
		// Rate limit: a token bucket refilled one per Per.
		now := n.opts.Now()
		tokens = min(float64(n.opts.Burst), tokens+float64(now.Sub(last))/float64(n.opts.Per))
		last = now
		if tokens < 1 {
			wait := time.Duration((1 - tokens) * float64(n.opts.Per))
			log.Info("notifications rate-limited", "wait", wait.Round(time.Second))
			if !sleep(ctx, wait) {
				return
			}
			tokens, last = 1, n.opts.Now()
		}
		tokens--
		n.deliver(ctx, t.s, ev, log)
	}
}

// deliver tries ev up to Attempts times.
func (n *Notifier) deliver(ctx context.Context, s Sender, ev Event, log *slog.Logger) {
	delay := n.opts.RetryDelay
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
		err := s.Send(actx, ev)
		cancel()
		if err == nil {
			n.sent.WithLabelValues(s.Name()).Inc()
			log.Info("notification sent", "kind", ev.Kind, "id", ev.ID)
			return
		}
		if ctx.Err() != nil {
			return
		}
		n.failed.WithLabelValues(s.Name()).Inc()
		if IsPermanent(err) || attempt >= n.opts.Attempts {
			n.dropped.WithLabelValues(s.Name()).Inc()
			log.Error("notification dropped: delivery failed", "kind", ev.Kind, "id", ev.ID, "attempts", attempt, "err", err)
			return
		}
		log.Warn("notification delivery failed; retrying", "kind", ev.Kind, "attempt", attempt, "retry_in", delay, "err", err)
		if !sleep(ctx, delay) {
			return
		}
		delay *= 2
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Deliver sends ev to every target now, with the usual retries, and
// returns when each has succeeded or given up (or ctx ends): for one-shot
// commands such as `synbak verify`, which have no Run loop. Dedup and the
// rate limit do not apply.
func (n *Notifier) Deliver(ctx context.Context, ev Event) {
	if ev.Time.IsZero() {
		ev.Time = n.opts.Now()
	}
	if ev.ID == "" {
		n.mu.Lock()
		n.seq++
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%s/%s", n.boot, n.seq, ev.Kind, ev.Title))
		n.mu.Unlock()
		ev.ID = "synbak-" + hex.EncodeToString(sum[:12])
	}
	var wg sync.WaitGroup
	for _, t := range n.targets {
		wg.Go(func() { n.deliver(ctx, t.s, ev, n.opts.Log.With("target", t.s.Name())) })
	}
	wg.Wait()
}
