package main

import (
	"github.com/synbak/synbak/bench/internal/benchpg"

	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// lagTool is one receiver's lag during a steady-load phase.
type lagTool struct {
	Config         string  `json:"config"`
	Samples        int     `json:"samples"`
	MedianBytes    float64 `json:"median_lag_bytes"`
	P95Bytes       float64 `json:"p95_lag_bytes"`
	MaxBytes       float64 `json:"max_lag_bytes"`
	MedianFlushLag float64 `json:"median_flush_lag_ms"`
	P95FlushLag    float64 `json:"p95_flush_lag_ms"`
	CPUS           float64 `json:"cpu_s"`
	MaxRSSMB       float64 `json:"max_rss_mb"`
	// Series is every sample: milliseconds since the load started, lag
	// bytes.
	Series [][2]float64 `json:"series"`
}

// lagPhase is one steady-load phase with both receivers streaming.
type lagPhase struct {
	Mode     string    `json:"mode"` // "default" or "synchronous"
	Rate     int       `json:"target_tps"`
	TPS      float64   `json:"tps"`
	Seconds  float64   `json:"seconds"`
	WALBytes int64     `json:"wal_bytes"`
	Tools    []lagTool `json:"tools"`
}

// eventsScript inserts one Synapse-like event per transaction.
const eventsScript = `\set n random(1, 2000000000)
INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version) VALUES ('$lag' || md5(random()::text) || :n, '!lagroom' || (:n % 50) || ':example.org', '{"stream_ordering":' || :n || '}', '{"type":"m.room.message","content":{"msgtype":"m.text","body":"' || repeat(md5(random()::text) || ' ', 1 + :n % 10) || '"},"hashes":{"sha256":"' || md5(random()::text) || '"}}', 3) ON CONFLICT DO NOTHING;
`

// lagPhase runs pgbench at a fixed rate while pg_receivewal and synbak
// stream side by side (each on its own slot), sampling every 100 ms how far
// each slot's restart_lsn (the flush position the receiver reported) is
// behind the server's flushed WAL.
func (e *env) lagPhase(ctx context.Context, conn *pgx.Conn, o options, synchronous bool) (lagPhase, error) {
	mode := "default"
	if synchronous {
		mode = "synchronous"
	}
	ph := lagPhase{Mode: mode, Rate: o.lagRate}
	var havePgbench, haveEvents bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgbench_accounts') IS NOT NULL, to_regclass('event_json') IS NOT NULL").Scan(&havePgbench, &haveEvents); err != nil {
		return ph, err
	}
	if !havePgbench {
		logf("pgbench -i -s 10 for the lag phase")
		if _, err := pgbench(ctx, e.c, nil, "-i", "-q", "-s", "10"); err != nil {
			return ph, err
		}
	}
	args := []string{"-n", "-c", "4", "-j", "2", "-R", strconv.Itoa(o.lagRate), "-T", strconv.Itoa(o.lagSeconds)}
	if haveEvents {
		script := filepath.Join(e.work, "events.sql")
		if err := os.WriteFile(script, []byte(eventsScript), 0o644); err != nil {
			return ph, err
		}
		args = append(args, "-b", "tpcb-like@3", "-f", script+"@1")
	}

	pg := receiverConfig{Name: "pg_receivewal", Tool: "pg_receivewal", Compress: "none"}
	sb := receiverConfig{Name: "synbak", Tool: "synbak", Compress: "zstd"}
	if synchronous {
		pg.Name, sb.Name = "pg_receivewal --synchronous", "synbak synchronous=true"
	}
	slots := []string{"lag_pgrw_" + mode, "lag_synbak_" + mode}
	// A physical slot reserves WAL from the last checkpoint's redo point:
	// make that now, so both receivers start near the end of WAL.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return ph, err
	}
	for _, s := range slots {
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", s); err != nil {
			return ph, err
		}
	}
	defer func() {
		for _, s := range slots {
			_, _ = conn.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", s)
		}
	}()
	var procs []*proc
	for i, cfg := range []receiverConfig{pg, sb} {
		p, err := e.startReceiver(cfg, slots[i], filepath.Join(e.work, "lag-"+mode+"-"+strconv.Itoa(i)), synchronous)
		if err != nil {
			return ph, err
		}
		procs = append(procs, p)
	}
	cpuAtStart := map[*proc]float64{}
	stopAll := func() []lagTool {
		var out []lagTool
		for _, p := range procs {
			lt := lagTool{Config: p.cfg.Name}
			if ru := e.stop(p); ru != nil {
				lt.CPUS = tv(ru.Utime) + tv(ru.Stime) - cpuAtStart[p]
			}
			lt.MaxRSSMB = p.peakRSSMB()
			out = append(out, lt)
		}
		return out
	}
	// Wait until both stream and have been sent everything.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = ANY($1) AND r.sent_lsn >= pg_current_wal_flush_lsn()`, slots).Scan(&n)
		if err != nil {
			stopAll()
			return ph, err
		}
		if n == len(slots) {
			break
		}
		for _, p := range procs {
			if p.exited() {
				stopAll()
				return ph, fmt.Errorf("%s exited:\n%s", p.cfg.Name, p.stderrTail())
			}
		}
		if time.Now().After(deadline) {
			stopAll()
			return ph, fmt.Errorf("receivers did not catch up within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("lag phase (%s): pgbench -R %d -T %d while both stream", mode, o.lagRate, o.lagSeconds)

	startLSN, err := walLSN(ctx, conn, "pg_current_wal_flush_lsn()")
	if err != nil {
		stopAll()
		return ph, err
	}
	type benchOut struct {
		out string
		err error
	}
	for _, p := range procs {
		cpuAtStart[p], _ = benchpg.ProcCPU(p.cmd.Process.Pid)
	}
	benchDone := make(chan benchOut, 1)
	stopPerf := e.startPerf("lag-" + mode)
	defer stopPerf()
	t0 := time.Now()
	go func() {
		out, err := pgbench(ctx, e.c, []string{"PGOPTIONS=-c synchronous_commit=on"}, args...)
		benchDone <- benchOut{out, err}
	}()
	lagBytes := make([][]float64, len(slots))
	flushLag := make([][]float64, len(slots))
	series := make([][][2]float64, len(slots))
	var bo benchOut
	tick := time.NewTicker(100 * time.Millisecond)
sample:
	for {
		select {
		case bo = <-benchDone:
			break sample
		case <-tick.C:
		}
		rows, err := conn.Query(ctx, `SELECT s.slot_name,
				pg_wal_lsn_diff(pg_current_wal_flush_lsn(), s.restart_lsn)::float8,
				extract(epoch FROM r.flush_lag)::float8 * 1000
			FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = ANY($1)`, slots)
		if err != nil {
			continue
		}
		for rows.Next() {
			var name string
			var lb, fl *float64
			if rows.Scan(&name, &lb, &fl) != nil {
				continue
			}
			for i, s := range slots {
				if s == name && lb != nil {
					lagBytes[i] = append(lagBytes[i], max(0, *lb))
					series[i] = append(series[i], [2]float64{float64(time.Since(t0).Milliseconds()), *lb})
					if fl != nil {
						flushLag[i] = append(flushLag[i], *fl)
					}
				}
			}
		}
		rows.Close()
	}
	tick.Stop()
	stopPerf()
	ph.Seconds = time.Since(t0).Seconds()
	endLSN, _ := walLSN(context.Background(), conn, "pg_current_wal_flush_lsn()")
	ph.WALBytes = endLSN - startLSN
	tools := stopAll()
	if bo.err != nil {
		return ph, bo.err
	}
	if m := tpsRE.FindStringSubmatch(bo.out); m != nil {
		ph.TPS, _ = strconv.ParseFloat(m[1], 64)
	}
	for i := range tools {
		tools[i].Samples = len(lagBytes[i])
		tools[i].Series = series[i]
		tools[i].MedianBytes = median(lagBytes[i])
		tools[i].P95Bytes = percentile(lagBytes[i], 0.95)
		tools[i].MaxBytes = percentile(lagBytes[i], 1)
		tools[i].MedianFlushLag = median(flushLag[i])
		tools[i].P95FlushLag = percentile(flushLag[i], 0.95)
	}
	ph.Tools = tools
	for i := range procs {
		_ = os.RemoveAll(filepath.Join(e.work, "lag-"+mode+"-"+strconv.Itoa(i)))
	}
	return ph, nil
}
