package agent

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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

// registerMetrics registers gauges read at scrape time from the parts'
// status, so that /metrics is never staler than /status.
func (a *Agent) registerMetrics() {
	reg := a.opts.Registry
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	reg.MustRegister(a.errs)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gauge("synbak_healthy", "1 when /healthz is 200.", func() float64 { return boolf(a.Status().Healthy) })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "synbak_agent_start_timestamp_seconds", Help: "When the agent started."},
		func() float64 { return unix(a.started) }))
	if a.opts.WAL != nil {
		w := a.opts.WAL
		gauge("synbak_wal_streaming", "1 while the receiver streams from PostgreSQL.", func() float64 { return boolf(w.Status().Streaming) })
		gauge("synbak_wal_timeline", "The timeline being streamed.", func() float64 { return float64(w.Status().Timeline) })
		gauge("synbak_wal_received_lsn", "End of WAL received (as a number).", func() float64 { return float64(w.Status().Received) })
		gauge("synbak_wal_flushed_lsn", "End of WAL fsynced and reported flushed: the last durable LSN.", func() float64 { return float64(w.Status().Flushed) })
		gauge("synbak_wal_archived_lsn", "End of the newest complete segment stored in the repository.", func() float64 { return float64(w.Status().Archived) })
		gauge("synbak_wal_last_archive_timestamp_seconds", "When the archived position last moved (0: not since the agent started).", func() float64 {
			a.mu.Lock()
			defer a.mu.Unlock()
			return unix(a.archivedAt)
		})
		gauge("synbak_wal_stored_lsn", "All acknowledged WAL before this position is in the repository (as a number).", func() float64 { return float64(w.Status().Stored) })
		gauge("synbak_wal_unstored_bytes", "WAL acknowledged to PostgreSQL as flushed but not yet in the repository.", func() float64 { return float64(w.Status().UnstoredBytes()) })
		gauge("synbak_wal_unstored_seconds", "Age of the oldest acknowledged WAL byte not yet in the repository (0: none); bounded by wal.partial_interval plus an upload while the repository works.", func() float64 {
			return unstoredAge(w.Status(), time.Now()).Seconds()
		})
		gauge("synbak_wal_spooled_files", "Finished WAL files waiting in the spool for upload.", func() float64 { return float64(w.Status().Spooled) })
		gauge("synbak_wal_upload_failing", "1 while the last WAL upload to the repository failed.", func() float64 { return boolf(w.Status().UploadError != "") })
		gauge("synbak_wal_last_message_server_timestamp_seconds", "Server time of the last message received (WAL or keepalive).", func() float64 { return unix(w.Status().ServerTime) })
		gauge("synbak_wal_lag_seconds", "Seconds since the last message from the server when streaming; since the agent started or last streamed otherwise.", func() float64 {
			st := w.Status()
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
		gauge("synbak_wal_lag_bytes", "Bytes of WAL the server has that the agent has not made durable (needs the probe).", func() float64 {
			if a.opts.Probe == nil {
				return 0
			}
			p := a.opts.Probe.Status()
			f := uint64(w.Status().Flushed)
			if !p.Up || p.ServerLSN <= f {
				return 0
			}
			return float64(p.ServerLSN - f)
		})
	}
	if p := a.opts.Probe; p != nil {
		gauge("synbak_postgres_up", "1 when the last probe reached PostgreSQL.", func() float64 { return boolf(p.Status().Up) })
		gauge("synbak_postgres_slot_lag_bytes", "How far the slot's restart_lsn is behind the server's WAL position (-1: no slot).", func() float64 { return float64(p.Status().SlotLag) })
		gauge("synbak_postgres_last_probe_success_timestamp_seconds", "When PostgreSQL was last reached.", func() float64 { return unix(p.Status().LastOK) })
	}
	if b := a.opts.Backups; b != nil {
		gauge("synbak_basebackup_count", "Complete base backups in the repository.", func() float64 { return float64(b.Status().Count) })
		gauge("synbak_basebackup_last_success_timestamp_seconds", "When the newest complete base backup ended.", func() float64 { return unix(b.Status().LastEnd) })
		gauge("synbak_basebackup_last_duration_seconds", "How long the newest complete base backup took.", func() float64 { return b.Status().LastDuration })
		gauge("synbak_basebackup_last_size_bytes", "Size of the newest complete base backup (uncompressed).", func() float64 { return float64(b.Status().LastSize) })
		gauge("synbak_basebackup_running", "1 while a base backup runs.", func() float64 { return boolf(b.Status().Running) })
	}
	if m := a.opts.Media; m != nil {
		reg.MustRegister(a.latency)
		gauge("synbak_media_pending_files", "Media files seen but not yet stored.", func() float64 { return float64(m.Stats().Pending) })
		gauge("synbak_media_added_files", "Media files recorded as added since the agent started.", func() float64 { return float64(m.Stats().Added) })
		gauge("synbak_media_deleted_files", "Media files recorded as deleted since the agent started.", func() float64 { return float64(m.Stats().Deleted) })
		gauge("synbak_media_added_bytes", "Bytes of media added since the agent started.", func() float64 { return float64(m.Stats().Bytes) })
		gauge("synbak_media_pending_seconds", "How long media have been pending without the backlog shrinking (0: none pending).", func() float64 {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.pendingSince.IsZero() {
				return 0
			}
			return time.Since(a.pendingSince).Seconds()
		})
	}
	if d := a.opts.Drills; d != nil {
		gauge("synbak_drill_last_success_timestamp_seconds", "When the last successful restore drill ended.", func() float64 { return unix(d.Status().LastSuccess) })
		gauge("synbak_drill_duration_seconds", "The last restore drill's duration (the measured RTO).", func() float64 { return d.Status().LastDuration })
		gauge("synbak_drill_last_ok", "1 when the last restore drill passed (0 also before the first).", func() float64 { return boolf(d.Status().LastOK) })
	}
	if d := a.opts.Dumps; d != nil {
		gauge("synbak_dumps", "Complete logical dumps in the repository.", func() float64 { return float64(d.Status().Count) })
		gauge("synbak_dump_last_end_timestamp_seconds", "When the newest complete logical dump ended.", func() float64 { return unix(d.Status().LastEnd) })
		gauge("synbak_dump_last_duration_seconds", "How long the newest complete logical dump took.", func() float64 { return d.Status().LastDuration })
		gauge("synbak_dump_last_size_bytes", "Size of the newest complete logical dump (pg_dump's output).", func() float64 { return float64(d.Status().LastSize) })
		gauge("synbak_dump_running", "1 while a logical dump runs.", func() float64 { return boolf(d.Status().Running) })
		gauge("synbak_dump_last_failed", "1 when the last dump attempt failed (cleared by a success).", func() float64 { return boolf(d.Status().LastError != "") })
	}
	if c := a.opts.Config; c != nil {
		gauge("synbak_config_last_snapshot_timestamp_seconds", "When the config files were last checked and stored.", func() float64 { return unix(c.ConfigStatus().LastSnapshot) })
		gauge("synbak_config_files", "Config files, keys and secrets followed.", func() float64 { return float64(c.ConfigStatus().Files) })
	}
}
