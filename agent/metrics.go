package agent

import (
	"context"
	"net/http"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/overview"
	"github.com/synbak/synbak/verify"
	"github.com/synbak/synbak/wal"
)

func promhttpHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerMetrics registers the metrics, read at scrape time from the
// parts' status so that /metrics is never staler than /status. Every
// series is present whichever parts run (zero for a part that does not),
// so that alert rules and dashboards never see a series appear or vanish.
// Names and types follow Prometheus's conventions (promlint-clean, checked
// by a test): counters end in _total, units are base units.
func (a *Agent) registerMetrics() {
	reg := a.opts.Registry
	m := metricSet{reg}
	reg.MustRegister(a.errs, a.latency)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	labels := prometheus.Labels{"goversion": runtime.Version()}
	for k, v := range a.opts.BuildInfo {
		labels[k] = v
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "synbak_build_info", Help: "Always 1; the labels say which synbak runs.", ConstLabels: labels},
		func() float64 { return 1 }))
	m.gauge("synbak_healthy", "1 when /healthz is 200.", func() float64 { return boolf(a.Status().Healthy) })
	m.gauge("synbak_agent_start_timestamp_seconds", "When the agent started.", func() float64 { return unix(a.started) })

	a.registerWALMetrics(m)
	a.registerScheduleMetrics(m)
	a.registerMediaMetrics(m)
	a.registerRepositoryMetrics(reg)
}

// metricSet registers functions read at scrape time.
type metricSet struct{ reg prometheus.Registerer }

func (m metricSet) gauge(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

func (m metricSet) counter(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// registerWALMetrics: the receiver and the database probe.
func (a *Agent) registerWALMetrics(m metricSet) {
	m.gauge("synbak_wal_streaming", "1 while the receiver streams from PostgreSQL.", func() float64 { return boolf(a.walNow().Streaming) })
	m.gauge("synbak_wal_timeline", "The timeline being streamed (0: none yet).", func() float64 { return float64(a.walNow().Timeline) })
	m.gauge("synbak_wal_received_lsn", "End of WAL received, as a byte position.", func() float64 { return float64(a.walNow().Received) })
	m.gauge("synbak_wal_flushed_lsn", "End of WAL fsynced and reported flushed (the last durable byte position).", func() float64 { return float64(a.walNow().Flushed) })
	m.gauge("synbak_wal_archived_lsn", "End of the newest complete segment stored in the repository, as a byte position.", func() float64 { return float64(a.walNow().Archived) })
	m.gauge("synbak_wal_stored_lsn", "All acknowledged WAL before this byte position is in the repository (complete segments and partial objects).", func() float64 { return float64(a.walNow().Stored) })
	m.gauge("synbak_wal_unstored_bytes", "WAL acknowledged to PostgreSQL as flushed but not yet in the repository.", func() float64 { return float64(a.walNow().UnstoredBytes()) })
	m.gauge("synbak_wal_unstored_seconds", "Age of the oldest acknowledged WAL byte not yet in the repository (0: none); bounded by wal.partial_interval plus an upload while the repository works.", func() float64 {
		return unstoredAge(a.walNow(), time.Now()).Seconds()
	})
	m.gauge("synbak_wal_spooled_files", "Finished WAL files waiting in the spool for upload.", func() float64 { return float64(a.walNow().Spooled) })
	m.gauge("synbak_wal_upload_failing", "1 while the last WAL upload to the repository failed.", func() float64 { return boolf(a.walNow().UploadError != "") })
	m.gauge("synbak_wal_last_archive_timestamp_seconds", "When the archived position last moved (0: not since the agent started).", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return unix(a.archivedAt)
	})
	m.gauge("synbak_wal_last_message_server_timestamp_seconds", "Server time of the last message received (WAL or keepalive).", func() float64 { return unix(a.walNow().ServerTime) })
	m.gauge("synbak_wal_lag_seconds", "Seconds since the last message from the server when streaming; since the agent started or last streamed otherwise.", func() float64 {
		st := a.walNow()
		if st.Streaming && !st.ServerTime.IsZero() {
			return max(time.Since(st.ServerTime).Seconds(), 0)
		}
		a.mu.Lock()
		since := a.lastStreaming
		a.mu.Unlock()
		if since.IsZero() {
			since = a.started
		}
		return time.Since(since).Seconds()
	})
	m.gauge("synbak_wal_lag_bytes", "Bytes of WAL the server has that the agent has not made durable (needs the probe).", func() float64 {
		p := a.probeNow()
		f := a.walNow().Flushed
		if !p.Up || p.ServerLSN <= f {
			return 0
		}
		return float64(p.ServerLSN - f)
	})

	m.gauge("synbak_postgres_up", "1 when the last probe reached PostgreSQL.", func() float64 { return boolf(a.probeNow().Up) })
	m.gauge("synbak_postgres_slot_lag_bytes", "How far the slot's restart_lsn is behind the server's WAL position (-1: no slot).", func() float64 { return float64(a.probeNow().SlotLag) })
	m.gauge("synbak_postgres_last_probe_success_timestamp_seconds", "When PostgreSQL was last reached.", func() float64 { return unix(a.probeNow().LastOK) })
}

// registerScheduleMetrics: base backups, drills and dumps.
func (a *Agent) registerScheduleMetrics(m metricSet) {
	m.gauge("synbak_basebackups", "Complete base backups in the repository.", func() float64 { return float64(a.backupNow().Count) })
	m.gauge("synbak_basebackup_last_success_timestamp_seconds", "When the newest complete base backup ended.", func() float64 { return unix(a.backupNow().LastEnd) })
	m.gauge("synbak_basebackup_last_duration_seconds", "How long the newest complete base backup took.", func() float64 { return a.backupNow().LastDuration })
	m.gauge("synbak_basebackup_last_size_bytes", "Size of the newest complete base backup (uncompressed).", func() float64 { return float64(a.backupNow().LastSize) })
	m.gauge("synbak_basebackup_running", "1 while a base backup runs.", func() float64 { return boolf(a.backupNow().Running) })
	m.gauge("synbak_basebackup_interval_seconds", "basebackup.interval: the agent takes a base backup this often (0: not scheduled).", func() float64 { return a.opts.Health.BackupInterval.Seconds() })

	m.gauge("synbak_drill_last_success_timestamp_seconds", "When the last successful restore drill ended (0: none).", func() float64 { return unix(a.drillNow().LastSuccess) })
	m.gauge("synbak_drill_duration_seconds", "The last restore drill's duration (the measured RTO when it passed).", func() float64 { return a.drillNow().LastDuration })
	m.gauge("synbak_drill_last_ok", "1 when the last restore drill passed (0 also before the first, and when drills are off).", func() float64 { return boolf(a.drillNow().LastOK) })
	m.counter("synbak_drill_runs_total", "Restore drills run since the agent started.", func() float64 { return float64(a.drillNow().Runs) })

	m.gauge("synbak_dumps", "Complete logical dumps in the repository.", func() float64 { return float64(a.dumpNow().Count) })
	m.gauge("synbak_dump_last_end_timestamp_seconds", "When the newest complete logical dump ended.", func() float64 { return unix(a.dumpNow().LastEnd) })
	m.gauge("synbak_dump_last_duration_seconds", "How long the newest complete logical dump took.", func() float64 { return a.dumpNow().LastDuration })
	m.gauge("synbak_dump_last_size_bytes", "Size of the newest complete logical dump (pg_dump's output).", func() float64 { return float64(a.dumpNow().LastSize) })
	m.gauge("synbak_dump_running", "1 while a logical dump runs.", func() float64 { return boolf(a.dumpNow().Running) })
	m.gauge("synbak_dump_last_failed", "1 when the last dump attempt failed (cleared by a success).", func() float64 { return boolf(a.dumpNow().LastError != "") })
}

// registerMediaMetrics: the media watcher, the config watcher and the
// last verify.
func (a *Agent) registerMediaMetrics(m metricSet) {
	m.gauge("synbak_media_pending_files", "Media files seen but not yet stored.", func() float64 { return float64(a.mediaNow().Pending) })
	m.gauge("synbak_media_failing_files", "Media files that keep failing to copy (each is retried; /healthz names them).", func() float64 { return float64(a.mediaNow().FailingFiles) })
	m.counter("synbak_media_added_files_total", "Media files recorded as added since the agent started.", func() float64 { return float64(a.mediaNow().Added) })
	m.counter("synbak_media_deleted_files_total", "Media files recorded as deleted since the agent started.", func() float64 { return float64(a.mediaNow().Deleted) })
	m.counter("synbak_media_added_bytes_total", "Bytes of media added since the agent started.", func() float64 { return float64(a.mediaNow().Bytes) })
	m.gauge("synbak_media_pending_seconds", "How long media have been pending without the backlog shrinking (0: none pending).", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.pendingSince.IsZero() {
			return 0
		}
		return time.Since(a.pendingSince).Seconds()
	})

	verifySt := func() verify.Record {
		if rec := a.lastVerify(); rec != nil {
			return *rec
		}
		return verify.Record{}
	}
	m.gauge("synbak_verify_last_run_timestamp_seconds", "When synbak verify last ran (0: never, as far as this state directory knows).", func() float64 { return unix(verifySt().Time) })
	m.gauge("synbak_verify_last_ok", "1 when the last synbak verify found no problem (0 also before the first).", func() float64 { return boolf(verifySt().OK) })
	m.gauge("synbak_verify_last_problems", "Problems the last synbak verify found.", func() float64 { return float64(verifySt().Count) })

	m.gauge("synbak_config_last_snapshot_timestamp_seconds", "When the config files were last checked and stored.", func() float64 { return unix(a.configNow().LastSnapshot) })
	m.gauge("synbak_config_files", "Config files, keys and secrets followed.", func() float64 { return float64(a.configNow().Files) })
}

// The parts' status, zero for a part that does not run.

func (a *Agent) walNow() wal.Status {
	if a.wal == nil {
		return wal.Status{}
	}
	return a.wal.Status()
}

func (a *Agent) probeNow() ProbeStatus {
	if a.probe == nil {
		return ProbeStatus{}
	}
	return a.probe.Status()
}

func (a *Agent) backupNow() BackupStatus {
	if a.backups == nil {
		return BackupStatus{}
	}
	return a.backups.Status()
}

func (a *Agent) mediaNow() mediawatch.Stats {
	if a.media == nil {
		return mediawatch.Stats{}
	}
	return a.media.Stats()
}

func (a *Agent) drillNow() DrillStatus {
	if a.drills == nil {
		return DrillStatus{}
	}
	return a.drills.Status()
}

func (a *Agent) dumpNow() DumpStatus {
	if a.dumps == nil {
		return DumpStatus{}
	}
	return a.dumps.Status()
}

func (a *Agent) configNow() ConfigStatus {
	if a.config == nil {
		return ConfigStatus{}
	}
	return a.config.ConfigStatus()
}

// repositoryKinds are the object kinds synbak_repository_* always has.
var repositoryKinds = []string{"backups", "config", "dumps", "media", "meta", "wal"}

// repoCollector exports the repository's overview (the status page's
// cache, rebuilt at most every http.overview_max_age): the recovery window,
// gaps in the WAL, and the stored size by kind.
type repoCollector struct {
	a                                         *Agent
	winStart, winEnd, oldest, gaps, retention *prometheus.Desc
	bytes, objects                            *prometheus.Desc
}

func (a *Agent) registerRepositoryMetrics(reg prometheus.Registerer) {
	reg.MustRegister(&repoCollector{a: a,
		winStart:  prometheus.NewDesc("synbak_recovery_window_start_timestamp_seconds", "The oldest time a restore can reach (0: no recovery window).", nil, nil),
		winEnd:    prometheus.NewDesc("synbak_recovery_window_end_timestamp_seconds", "The newest time a restore can reach, as of the repository's last look (0: no recovery window).", nil, nil),
		oldest:    prometheus.NewDesc("synbak_repository_oldest_timestamp_seconds", "The oldest time anything in the repository records (0: empty).", nil, nil),
		gaps:      prometheus.NewDesc("synbak_wal_archive_gaps", "Holes in the archived WAL after the oldest base backup (restores across them are impossible).", nil, nil),
		retention: prometheus.NewDesc("synbak_retention_window_seconds", "retention.window: the recovery window the policy keeps.", nil, nil),
		bytes:     prometheus.NewDesc("synbak_repository_bytes", "Stored bytes in the repository by kind of object.", []string{"kind"}, nil),
		objects:   prometheus.NewDesc("synbak_repository_objects", "Objects in the repository by kind.", []string{"kind"}, nil),
	})
}

func (c *repoCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.winStart, c.winEnd, c.oldest, c.gaps, c.retention, c.bytes, c.objects} {
		ch <- d
	}
}

func (c *repoCollector) Collect(ch chan<- prometheus.Metric) {
	var o *overview.Overview
	if src := c.a.opts.Page.Overview; src != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		o, _ = src.Get(ctx) // the last good overview, also when the newest build failed
		cancel()
	}
	var start, end, oldest, gaps float64
	sizes := map[string]overview.KindSize{}
	if o != nil {
		if w := o.Window(); w != nil {
			start, end = unix(w.From), unix(w.To)
		}
		oldest, gaps = unix(o.Extent.From), float64(len(o.Gaps))
		for _, k := range o.Sizes {
			sizes[k.Kind] = k
		}
	}
	ch <- prometheus.MustNewConstMetric(c.winStart, prometheus.GaugeValue, start)
	ch <- prometheus.MustNewConstMetric(c.winEnd, prometheus.GaugeValue, end)
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest)
	ch <- prometheus.MustNewConstMetric(c.gaps, prometheus.GaugeValue, gaps)
	ch <- prometheus.MustNewConstMetric(c.retention, prometheus.GaugeValue, c.a.opts.RetentionWindow.Seconds())
	kinds := append([]string(nil), repositoryKinds...)
	for k := range sizes {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	for _, k := range kinds {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(sizes[k].Bytes), k)
		ch <- prometheus.MustNewConstMetric(c.objects, prometheus.GaugeValue, float64(sizes[k].Objects), k)
	}
}
