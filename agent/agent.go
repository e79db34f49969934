// Package agent joins synbak's parts into one long-running process: the WAL
// receiver, the base-backup schedule, the media watcher, the config watcher,
// a database probe and, when configured, the dump and drill schedules run side by side under a supervisor that restarts a
// failed part with backoff (a failing base backup never stops WAL
// streaming), and an HTTP endpoint serves /metrics (Prometheus), /healthz
// and /status.
//
// The package composes; it knows no configuration file. cmd/synbak builds
// the parts from the configuration and hands them over in Options.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/verify"
	"github.com/synbak/synbak/wal"
)

// WALSource is the WAL receiver as the agent sees it.
type WALSource interface {
	Status() wal.Status
}

// MediaSource is the media watcher as the agent sees it.
type MediaSource interface {
	Stats() mediawatch.Stats
}

// ConfigStatus is what the config watcher reports.
type ConfigStatus struct {
	Files        int       `json:"files"`
	LastSnapshot time.Time `json:"last_snapshot,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
}

// ConfigSource is the config watcher as the agent sees it.
type ConfigSource interface {
	ConfigStatus() ConfigStatus
}

// Health thresholds; zero values mean the defaults.
type HealthOptions struct {
	// Disconnected: the receiver not streaming for longer is unhealthy
	// (default 1 min).
	Disconnected time.Duration
	// SlotLag: a slot further behind the server than this is unhealthy
	// (default 1 GiB).
	SlotLag int64
	// BackupInterval is the schedule's interval: no complete backup newer
	// than twice it is unhealthy (0: only "no backup at all" is).
	BackupInterval time.Duration
	// MediaBacklog: media pending continuously for longer, and not
	// shrinking, is unhealthy (default 10 min).
	MediaBacklog time.Duration
	// MediaFailure: a media file that has failed to copy for longer is
	// unhealthy, named with its error (default 1 min: a dozen retries).
	MediaFailure time.Duration
	// WALBacklog: WAL acknowledged to PostgreSQL but not in the repository
	// for longer, or finished segments waiting in the spool while nothing
	// is archived for longer, is unhealthy (default 2 min).
	WALBacklog time.Duration
}

// Options are the agent's parts.
type Options struct {
	Log *slog.Logger
	// Listen is the HTTP address (host:port; port 0 picks one, see Addr).
	// Empty: no HTTP endpoint.
	Listen string
	// OnListen, when set, is called with the address once the endpoint
	// listens (cmd records it for `synbak status`).
	OnListen func(addr string)
	// Components run under the supervisor. WAL, Backups, Media, Config
	// and Probe are the same parts seen for status and metrics; any may
	// be nil.
	Components []Component
	WAL        WALSource
	Backups    *BackupSchedule
	Media      MediaSource
	Config     ConfigSource
	Probe      *Probe
	Drills     *DrillSchedule
	// BuildInfo labels synbak_build_info (e.g. version, commit).
	BuildInfo map[string]string
	// RetentionWindow is retention.window, exported for alert rules.
	RetentionWindow time.Duration
	// StateDir is where `synbak verify` records its newest result
	// (verify.RecordFile); "" for none.
	StateDir string
	// Dumps is the logical-dump schedule (nil: dump.interval is 0); its
	// health rule uses its Interval.
	Dumps  *DumpSchedule
	Health HealthOptions
	// ShutdownTimeout bounds the wait for the components after ctx is
	// cancelled (default 8 s).
	ShutdownTimeout time.Duration
	// MinBackoff and MaxBackoff bound the restart delay of a failed
	// component (defaults 1 s and 5 min).
	MinBackoff, MaxBackoff time.Duration
	// Registry receives the agent's metrics and serves /metrics; nil
	// makes a new one.
	Registry *prometheus.Registry
	// Page is what the status page (/) shows beyond the status, and the
	// HTTP endpoint's authentication (page.go).
	Page PageOptions
}

// Agent runs the parts.
type Agent struct {
	opts    Options
	sup     *supervisor
	errs    *prometheus.CounterVec
	latency prometheus.Histogram
	started time.Time

	mu            sync.Mutex
	addr          string
	lastStreaming time.Time
	lastArchived  uint64
	archivedAt    time.Time
	pendingSince  time.Time
	pendingAtMark int64

	hist *history
}

// New returns an agent; Run starts it.
func New(opts Options) *Agent {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 8 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	h := &opts.Health
	if h.Disconnected <= 0 {
		h.Disconnected = time.Minute
	}
	if h.SlotLag <= 0 {
		h.SlotLag = 1 << 30
	}
	if h.MediaBacklog <= 0 {
		h.MediaBacklog = 10 * time.Minute
	}
	if h.MediaFailure <= 0 {
		h.MediaFailure = time.Minute
	}
	if h.WALBacklog <= 0 {
		h.WALBacklog = 2 * time.Minute
	}
	a := &Agent{opts: opts, started: time.Now(), hist: newHistory(opts.Page.HistoryInterval, opts.Page.HistoryKeep)}
	a.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "synbak_component_errors_total", Help: "Errors returned by each agent component (each is retried with backoff).",
	}, []string{"component"})
	for _, c := range opts.Components {
		a.errs.WithLabelValues(c.Name) // export 0 from the start
	}
	if d := opts.Drills; d != nil && d.OnFailure == nil {
		// A drill that fails is the drill component failing, although
		// its loop goes on.
		d.OnFailure = func() { a.errs.WithLabelValues("drill").Inc() }
	}
	a.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "synbak_media_copy_latency_seconds",
		Help:    "From a new media file's completion (its mtime) to its durable copy in the repository.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300},
	})
	a.sup = newSupervisor(opts.Log, opts.MinBackoff, opts.MaxBackoff, func(name string) { a.errs.WithLabelValues(name).Inc() })
	a.sup.register(opts.Components)
	a.registerMetrics()
	return a
}

// ObserveMediaLatency records how long a new media file took from its
// completion to its durable copy.
func (a *Agent) ObserveMediaLatency(d time.Duration) { a.latency.Observe(d.Seconds()) }

// Addr is the HTTP endpoint's address once Run has started listening.
func (a *Agent) Addr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.addr
}

// Run runs the components and the HTTP endpoint until ctx is cancelled,
// then waits (at most ShutdownTimeout) for the components to finish: the
// WAL receiver stores its open partial segment and sends a last status
// update. It returns an error only when the endpoint cannot listen or the
// components do not stop in time.
func (a *Agent) Run(ctx context.Context) error {
	var srv *http.Server
	if a.opts.Listen != "" {
		l, err := net.Listen("tcp", a.opts.Listen)
		if err != nil {
			return fmt.Errorf("http.listen %s: %w (set http.listen to a free address, or port 0 for any)", a.opts.Listen, err)
		}
		a.mu.Lock()
		a.addr = l.Addr().String()
		a.mu.Unlock()
		srv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.opts.Log.Error("http endpoint", "err", err)
			}
		}()
		a.opts.Log.Info("http endpoint", "addr", "http://"+a.Addr(), "paths", "/metrics /healthz /status")
		if a.opts.OnListen != nil {
			a.opts.OnListen(a.Addr())
		}
	}

	sctx, stopSampler := context.WithCancel(context.Background())
	go a.sample(sctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.sup.run(ctx, a.opts.Components)
	}()

	var err error
	select {
	case <-done:
	case <-ctx.Done():
		a.opts.Log.Info("stopping")
		select {
		case <-done:
		case <-time.After(a.opts.ShutdownTimeout):
			var running []string
			for _, c := range a.sup.snapshot() {
				if c.Running {
					running = append(running, c.Name)
				}
			}
			err = fmt.Errorf("components %v did not stop within %s", running, a.opts.ShutdownTimeout)
		}
	}
	stopSampler()
	if srv != nil {
		sh, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sh)
		cancel()
	}
	return err
}

// sample tracks what health needs over time: since when the receiver is
// disconnected, when WAL was last archived, since when media are pending.
func (a *Agent) sample(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		a.sampleOnce(time.Now())
		a.recordHistory(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) sampleOnce(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.opts.WAL != nil {
		st := a.opts.WAL.Status()
		if st.Streaming {
			a.lastStreaming = now
		}
		if uint64(st.Archived) != a.lastArchived {
			a.lastArchived, a.archivedAt = uint64(st.Archived), now
		}
	}
	if a.opts.Media != nil {
		p := a.opts.Media.Stats().Pending
		switch {
		case p == 0:
			a.pendingSince = time.Time{}
		case a.pendingSince.IsZero() || p < a.pendingAtMark:
			// Pending and newly so, or shrinking: start the clock again.
			a.pendingSince, a.pendingAtMark = now, p
		}
	}
}

// Status is the agent's whole state, served as /status.
type Status struct {
	Healthy    bool              `json:"healthy"`
	Problems   []string          `json:"problems,omitempty"`
	Started    time.Time         `json:"started"`
	Components []ComponentStatus `json:"components"`
	WAL        *WALStatus        `json:"wal,omitempty"`
	Postgres   *ProbeStatus      `json:"postgres,omitempty"`
	Backups    *BackupStatus     `json:"base_backups,omitempty"`
	Media      *mediawatch.Stats `json:"media,omitempty"`
	Config     *ConfigStatus     `json:"config,omitempty"`
	Drills     *DrillStatus      `json:"drills,omitempty"`
	Dumps      *DumpStatus       `json:"dumps,omitempty"`
	// Verify is the newest `synbak verify` result (nil: none recorded).
	Verify *verify.Record `json:"verify,omitempty"`
}

// WALStatus is the receiver's state with LSNs as text.
type WALStatus struct {
	Timeline  uint32    `json:"timeline"`
	Streaming bool      `json:"streaming"`
	Received  string    `json:"received_lsn"`
	Flushed   string    `json:"flushed_lsn"`
	Archived  string    `json:"archived_lsn"`
	LagBytes  int64     `json:"lag_bytes"`
	LastMsg   time.Time `json:"last_message_server_time,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// ArchivedAt is when the archived position last moved (this agent's
	// clock).
	ArchivedAt time.Time `json:"archived_at,omitzero"`
	// Stored: all acknowledged WAL before it is in the repository.
	Stored string `json:"stored_lsn"`
	// UnstoredBytes and UnstoredSeconds: acknowledged WAL not yet in the
	// repository, and the age of its oldest byte.
	UnstoredBytes   uint64  `json:"unstored_bytes"`
	UnstoredSeconds float64 `json:"unstored_seconds"`
	// Spooled is how many finished files wait in the spool for upload.
	Spooled     int    `json:"spooled_files"`
	UploadError string `json:"upload_error,omitempty"`
}

// Status returns the agent's state and health now.
func (a *Agent) Status() Status {
	now := time.Now()
	st := Status{Started: a.started, Components: a.sup.snapshot()}
	var probe *ProbeStatus
	if a.opts.Probe != nil {
		p := a.opts.Probe.Status()
		probe = &p
		st.Postgres = probe
	}
	a.mu.Lock()
	lastStreaming, archivedAt, pendingSince := a.lastStreaming, a.archivedAt, a.pendingSince
	a.mu.Unlock()
	if a.opts.WAL != nil {
		w := a.opts.WAL.Status()
		ws := &WALStatus{Timeline: w.Timeline, Streaming: w.Streaming, Received: w.Received.String(), Flushed: w.Flushed.String(),
			Archived: w.Archived.String(), LastMsg: w.ServerTime, LastError: w.LastError, ArchivedAt: archivedAt,
			Stored: w.Stored.String(), UnstoredBytes: w.UnstoredBytes(), UnstoredSeconds: unstoredAge(w, now).Seconds(),
			Spooled: w.Spooled, UploadError: w.UploadError}
		if probe != nil && probe.Up && probe.ServerLSN > w.Flushed {
			ws.LagBytes = int64(probe.ServerLSN - w.Flushed)
		}
		st.WAL = ws
		st.Problems = append(st.Problems, a.archiveProblems(w, archivedAt, now)...)
		if !w.Streaming {
			since := lastStreaming
			if since.IsZero() {
				since = a.started
			}
			if now.Sub(since) > a.opts.Health.Disconnected {
				msg := fmt.Sprintf("wal: the receiver has not been streaming for %s", now.Sub(since).Round(time.Second))
				if w.LastError != "" {
					msg += ": " + w.LastError
				}
				st.Problems = append(st.Problems, msg)
			}
		}
	}
	if probe != nil {
		if !probe.Up && probe.LastError != "" {
			st.Problems = append(st.Problems, "postgres: unreachable: "+probe.LastError)
		}
		if probe.Up && probe.SlotLag > a.opts.Health.SlotLag {
			st.Problems = append(st.Problems, fmt.Sprintf("postgres: slot %s is %d MiB behind the server (more than %d MiB)", a.opts.Probe.Slot, probe.SlotLag>>20, a.opts.Health.SlotLag>>20))
		}
	}
	if a.opts.Backups != nil {
		b := a.opts.Backups.Status()
		st.Backups = &b
		switch {
		case b.Count == 0:
			msg := "base backups: none complete yet (no restore is possible)"
			if b.Running {
				msg += "; the first one is running"
			}
			if b.LastError != "" {
				msg += "; last error: " + b.LastError
			}
			st.Problems = append(st.Problems, msg)
		case a.opts.Health.BackupInterval > 0 && now.Sub(b.LastEnd) > 2*a.opts.Health.BackupInterval:
			msg := fmt.Sprintf("base backups: the newest (%s) ended %s ago, more than twice basebackup.interval (%s)", b.LastID, now.Sub(b.LastEnd).Round(time.Second), a.opts.Health.BackupInterval)
			if b.LastError != "" {
				msg += "; last error: " + b.LastError
			}
			st.Problems = append(st.Problems, msg)
		}
	}
	if a.opts.Media != nil {
		m := a.opts.Media.Stats()
		st.Media = &m
		if !pendingSince.IsZero() && now.Sub(pendingSince) > a.opts.Health.MediaBacklog {
			st.Problems = append(st.Problems, fmt.Sprintf("media: %d files pending and the backlog has not shrunk for %s", m.Pending, now.Sub(pendingSince).Round(time.Second)))
		}
		if p := mediaFailureProblem(m, now, a.opts.Health.MediaFailure); p != "" {
			st.Problems = append(st.Problems, p)
		}
	}
	if a.opts.Config != nil {
		c := a.opts.Config.ConfigStatus()
		st.Config = &c
	}
	if rec := a.lastVerify(); rec != nil {
		st.Verify = rec
		if !rec.OK {
			msg := fmt.Sprintf("verify: the last synbak verify (%s) found %d %s", rec.Time.Format(time.RFC3339), rec.Count, plural(rec.Count, "problem", "problems"))
			if len(rec.Problems) > 0 {
				msg += ", first: " + rec.Problems[0]
			}
			st.Problems = append(st.Problems, msg+" — run synbak verify for the list; a passing run clears this")
		}
	}
	if a.opts.Drills != nil {
		d := a.opts.Drills.Status()
		st.Drills = &d
		if d.Runs > 0 && !d.LastOK {
			st.Problems = append(st.Problems, "drill: the last restore drill ("+d.LastRun.UTC().Format(time.RFC3339)+") failed: "+strings.Join(d.LastProblems, "; "))
		}
	}
	if a.opts.Dumps != nil {
		d := a.opts.Dumps.Status()
		st.Dumps = &d
		st.Problems = append(st.Problems, dumpProblems(d, a.opts.Dumps.Interval, a.started, now)...)
	}
	for _, c := range st.Components {
		if !c.Running && !c.RetryAt.IsZero() {
			st.Problems = append(st.Problems, fmt.Sprintf("%s: failed %d times, retrying at %s: %s", c.Name, c.Failures, c.RetryAt.UTC().Format(time.RFC3339), c.LastError))
		}
	}
	st.Healthy = len(st.Problems) == 0
	return st
}

// unstoredAge is the age of the oldest acknowledged byte not yet in the
// repository (0: none).
func unstoredAge(w wal.Status, now time.Time) time.Duration {
	if w.UnstoredSince.IsZero() {
		return 0
	}
	return max(now.Sub(w.UnstoredSince), 0)
}

// archiveProblems watches the WAL moving into the repository, not only the
// receiver running: acknowledged WAL must reach the repository within
// WALBacklog, and finished segments must not wait while nothing is
// archived. Each names the last upload error (a full disk, an unreachable
// or failing repository).
func (a *Agent) archiveProblems(w wal.Status, archivedAt, now time.Time) []string {
	var out []string
	cause := ""
	if w.UploadError != "" {
		cause = "; last upload error: " + w.UploadError
	}
	limit := a.opts.Health.WALBacklog
	if age := unstoredAge(w, now); age > limit {
		out = append(out, fmt.Sprintf("wal: acknowledged WAL (%d bytes from %s) has not reached the repository for %s (more than health.wal_backlog %s)%s",
			w.UnstoredBytes(), w.Stored, age.Round(time.Second), limit, cause))
	}
	since := archivedAt
	if since.IsZero() {
		since = a.started
	}
	if w.Spooled > 0 && now.Sub(since) > limit {
		out = append(out, fmt.Sprintf("wal: %d finished files wait in the spool and the archived position (%s) has not moved for %s%s",
			w.Spooled, w.Archived, now.Sub(since).Round(time.Second), cause))
	}
	return out
}

// Handler serves /metrics, /healthz, /status and the status page (/),
// behind the configured authentication.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	a.handlePage(mux)
	mux.Handle("/metrics", promhttpHandler(a.opts.Registry))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		st := a.Status()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !st.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range st.Problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.Status())
	})
	return a.opts.Page.Auth.Wrap(mux)
}

// mediaFailureProblem names the media files that have failed to copy for
// longer than limit, with the error, or returns "".
func mediaFailureProblem(m mediawatch.Stats, now time.Time, limit time.Duration) string {
	if m.FailingFiles == 0 || len(m.Failing) == 0 || now.Sub(m.Failing[0].Since) < limit {
		return ""
	}
	f := m.Failing[0]
	msg := fmt.Sprintf("media: %s cannot be copied (failing for %s, %d attempts): %s", f.Path, now.Sub(f.Since).Round(time.Second), f.Attempts, f.Err)
	if more := m.FailingFiles - 1; more > 0 {
		msg += fmt.Sprintf("; %d more %s failing", more, plural(int(more), "file", "files"))
	}
	return msg + " — make the media store readable by the agent's user (see the README's service section), or check the repository"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// lastVerify reads the newest `synbak verify` result, if any.
func (a *Agent) lastVerify() *verify.Record {
	if a.opts.StateDir == "" {
		return nil
	}
	rec, err := verify.LoadRecord(a.opts.StateDir)
	if err != nil {
		return nil
	}
	return rec
}
