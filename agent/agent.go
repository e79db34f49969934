// Package agent joins synbak's parts into one long-running process: the WAL
// receiver, the base-backup schedule, the media watcher, the config watcher,
// a database probe and, when configured, the dump and drill schedules run
// side by side as one list of parts under a supervisor that restarts a
// failed part with backoff (a failing base backup never stops WAL
// streaming), and an HTTP endpoint serves /metrics (Prometheus), /healthz
// and /status.
//
// The package composes; it knows no configuration file. cmd/synbak builds
// the parts from the configuration and hands them over in Options.Parts.
//
// Logging: whoever builds a part's logger adds component=<the part's name>
// (cmd/synbak, once per part); the parts and the packages they come from
// never add it themselves, so that every key appears once per line.
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

	"github.com/synbak/synbak/internal/shutdown"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/verify"
	"github.com/synbak/synbak/wal"
)

// Runner is what every part of the agent is: Run works until ctx is
// cancelled and returns nil then. An error makes the supervisor report it
// and run the part again after a backoff; nil before ctx is cancelled
// means the part has nothing (more) to do. The work that stops a part
// cleanly after ctx is cancelled (a final flush, an upload queue's drain)
// runs within the shutdown budget ctx carries: see shutdown.Grace.
type Runner interface {
	Run(ctx context.Context) error
}

// RunFunc makes a function a Runner.
type RunFunc func(ctx context.Context) error

// Run calls f.
func (f RunFunc) Run(ctx context.Context) error { return f(ctx) }

// Part is one named part of the agent: the WAL receiver, the base-backup
// schedule, the media watcher, the config watcher, the database probe, ...
// The supervisor reports every part's state (running, failures, restarts)
// under its name; what else a part reports is found by the interfaces its
// Runner implements: WALSource, MediaSource, ConfigSource, or the agent's
// own *Probe, *BackupSchedule, *DrillSchedule and *DumpSchedule (at most one
// part of each). A part that needs the agent itself implements
// StatusReader or LatencyReporter and is handed it by New.
type Part struct {
	Name string
	Runner
}

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

// StatusReader is a part that reads the agent's own status (the
// notifier's watch); New hands it the agent's Status before anything runs.
type StatusReader interface {
	ReadStatusFrom(status func() Status)
}

// LatencyReporter is a part that reports how long new media files took to
// reach the repository (the media watcher); New hands it the agent's
// histogram (synbak_media_copy_latency_seconds) before anything runs.
type LatencyReporter interface {
	ReportLatencyTo(observe func(time.Duration))
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
	// Parts run under the supervisor, side by side, in this order.
	Parts []Part
	// BuildInfo labels synbak_build_info (e.g. version, commit).
	BuildInfo map[string]string
	// RetentionWindow is retention.window, exported for alert rules.
	RetentionWindow time.Duration
	// StateDir is where `synbak verify` records its newest result
	// (verify.RecordFile); "" for none.
	StateDir string
	Health   HealthOptions
	// ShutdownTimeout is the agent's shutdown budget: how long Run waits
	// for the parts after ctx is cancelled (default DefaultShutdownTimeout).
	// The parts get a budget shorter by PartsReserve (shutdown.WithBudget):
	// the receiver's final status update and its uploader's drain use what
	// is left of it, so that they end before Run stops waiting.
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

// DefaultShutdownTimeout is the agent's shutdown budget when
// Options.ShutdownTimeout is 0; systemd's TimeoutStopSec in the packaged
// unit is longer.
const DefaultShutdownTimeout = 90 * time.Second

// PartsReserve is the share of the shutdown budget the agent keeps for
// itself (joining the parts, the HTTP endpoint): a tenth, at most 5 s.
func PartsReserve(budget time.Duration) time.Duration { return min(budget/10, 5*time.Second) }

// Agent runs the parts.
type Agent struct {
	opts Options
	// The parts seen as status sources (nil: no such part).
	wal     WALSource
	media   MediaSource
	config  ConfigSource
	probe   *Probe
	backups *BackupSchedule
	drills  *DrillSchedule
	dumps   *DumpSchedule
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
		opts.ShutdownTimeout = DefaultShutdownTimeout
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
	for _, p := range opts.Parts {
		a.errs.WithLabelValues(p.Name) // export 0 from the start
		a.addSource(p)
	}
	if d := a.drills; d != nil && d.OnFailure == nil {
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
	a.sup.register(opts.Parts)
	a.registerMetrics()
	for _, p := range opts.Parts {
		if r, ok := p.Runner.(StatusReader); ok {
			r.ReadStatusFrom(a.Status)
		}
		if r, ok := p.Runner.(LatencyReporter); ok {
			r.ReportLatencyTo(a.observeMediaLatency)
		}
	}
	return a
}

// addSource notes what p reports beyond the supervisor's state. Two parts
// of one kind are a wiring mistake.
func (a *Agent) addSource(p Part) {
	set := func(kind string, isSet bool, f func()) {
		if isSet {
			panic(fmt.Sprintf("agent: part %q is a second %s", p.Name, kind))
		}
		f()
	}
	switch r := p.Runner.(type) {
	case *Probe:
		set("probe", a.probe != nil, func() { a.probe = r })
	case *BackupSchedule:
		set("base-backup schedule", a.backups != nil, func() { a.backups = r })
	case *DrillSchedule:
		set("drill schedule", a.drills != nil, func() { a.drills = r })
	case *DumpSchedule:
		set("dump schedule", a.dumps != nil, func() { a.dumps = r })
	}
	if w, ok := p.Runner.(WALSource); ok {
		set("WAL source", a.wal != nil, func() { a.wal = w })
	}
	if m, ok := p.Runner.(MediaSource); ok {
		set("media source", a.media != nil, func() { a.media = m })
	}
	if c, ok := p.Runner.(ConfigSource); ok {
		set("config source", a.config != nil, func() { a.config = c })
	}
}

// observeMediaLatency records how long a new media file took from its
// completion to its durable copy.
func (a *Agent) observeMediaLatency(d time.Duration) { a.latency.Observe(d.Seconds()) }

// Addr is the HTTP endpoint's address once Run has started listening.
func (a *Agent) Addr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.addr
}

// Run runs the parts and the HTTP endpoint until ctx is cancelled, then
// waits at most ShutdownTimeout for the parts to finish: the WAL receiver
// makes what it received durable, sends a last status update and stores
// what it can of the spool within the parts' budget (ShutdownTimeout less
// PartsReserve; what is left stays fsynced in the spool for the next
// start). Every goroutine Run starts has returned when it returns, unless
// a part ignores its budget: then Run returns an error naming it. It also
// returns an error when the endpoint cannot listen.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if a.opts.Listen != "" {
		l, err := net.Listen("tcp", a.opts.Listen)
		if err != nil {
			return fmt.Errorf("http.listen %s: %w (set http.listen to a free address, or port 0 for any)", a.opts.Listen, err)
		}
		a.mu.Lock()
		a.addr = l.Addr().String()
		a.mu.Unlock()
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.opts.Log.Error("http endpoint", "err", err)
			}
		})
		defer func() {
			sh, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := srv.Shutdown(sh); err != nil {
				_ = srv.Close()
			}
		}()
		a.opts.Log.Info("http endpoint", "addr", "http://"+a.Addr(), "paths", "/metrics /healthz /status")
		if a.opts.OnListen != nil {
			a.opts.OnListen(a.Addr())
		}
	}

	sctx, stopSampler := context.WithCancel(context.Background())
	defer stopSampler()
	wg.Go(func() { a.sample(sctx) })

	budget := a.opts.ShutdownTimeout
	pctx, release := shutdown.WithBudget(ctx, budget-PartsReserve(budget))
	defer release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.sup.run(pctx, a.opts.Parts)
	}()

	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	a.opts.Log.Info("stopping", "budget", budget)
	select {
	case <-done:
		return nil
	case <-time.After(budget):
	}
	var running []string
	for _, c := range a.sup.snapshot() {
		if c.Running {
			running = append(running, c.Name)
		}
	}
	return fmt.Errorf("parts %v did not stop within the shutdown budget (%s)", running, budget)
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
	if a.wal != nil {
		st := a.wal.Status()
		if st.Streaming {
			a.lastStreaming = now
		}
		if uint64(st.Archived) != a.lastArchived {
			a.lastArchived, a.archivedAt = uint64(st.Archived), now
		}
	}
	if a.media != nil {
		p := a.media.Stats().Pending
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
	if a.probe != nil {
		p := a.probe.Status()
		probe = &p
		st.Postgres = probe
	}
	a.mu.Lock()
	lastStreaming, archivedAt, pendingSince := a.lastStreaming, a.archivedAt, a.pendingSince
	a.mu.Unlock()
	if a.wal != nil {
		w := a.wal.Status()
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
			st.Problems = append(st.Problems, fmt.Sprintf("postgres: slot %s is %d MiB behind the server (more than %d MiB)", a.probe.Slot, probe.SlotLag>>20, a.opts.Health.SlotLag>>20))
		}
	}
	a.backupHealth(&st, now)
	a.mediaHealth(&st, pendingSince, now)
	a.scheduleHealth(&st, now)
	for _, c := range st.Components {
		if !c.Running && !c.RetryAt.IsZero() {
			st.Problems = append(st.Problems, fmt.Sprintf("%s: failed %d times, retrying at %s: %s", c.Name, c.Failures, c.RetryAt.UTC().Format(time.RFC3339), c.LastError))
		}
	}
	st.Healthy = len(st.Problems) == 0
	return st
}

// backupHealth adds the base-backup schedule's state and problems.
func (a *Agent) backupHealth(st *Status, now time.Time) {
	if a.backups == nil {
		return
	}
	b := a.backups.Status()
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

// mediaHealth adds the media watcher's state and problems.
func (a *Agent) mediaHealth(st *Status, pendingSince, now time.Time) {
	if a.media != nil {
		m := a.media.Stats()
		st.Media = &m
		if !pendingSince.IsZero() && now.Sub(pendingSince) > a.opts.Health.MediaBacklog {
			st.Problems = append(st.Problems, fmt.Sprintf("media: %d files pending and the backlog has not shrunk for %s", m.Pending, now.Sub(pendingSince).Round(time.Second)))
		}
		if p := mediaFailureProblem(m, now, a.opts.Health.MediaFailure); p != "" {
			st.Problems = append(st.Problems, p)
		}
	}
}

// scheduleHealth adds the config watcher's state, the last verify, and the
// drill and dump schedules' state and problems.
func (a *Agent) scheduleHealth(st *Status, now time.Time) {
	if a.config != nil {
		c := a.config.ConfigStatus()
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
	if a.drills != nil {
		d := a.drills.Status()
		st.Drills = &d
		if d.Runs > 0 && !d.LastOK {
			st.Problems = append(st.Problems, "drill: the last restore drill ("+d.LastRun.UTC().Format(time.RFC3339)+") failed: "+strings.Join(d.LastProblems, "; "))
		}
	}
	if a.dumps != nil {
		d := a.dumps.Status()
		st.Dumps = &d
		st.Problems = append(st.Problems, dumpProblems(d, a.dumps.Interval, a.started, now)...)
	}
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
