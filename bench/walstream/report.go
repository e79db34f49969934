package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// report is everything the benchmark measured (also its JSON output).
type report struct {
	StartedAt string            `json:"started_at"`
	Host      map[string]string `json:"host"`
	Server    string            `json:"server_version"`
	Data      genResult         `json:"data"`
	WAL       walInfo           `json:"wal"`
	Runs      []runResult       `json:"runs"`
	Medians   []summary         `json:"medians"`
	Ratios    []ratio           `json:"ratios"`
	Goals     []goal            `json:"goals"`
	Lag       []lagPhase        `json:"lag,omitempty"`
}

// summary is one configuration's medians over its runs.
type summary struct {
	Config        string  `json:"config"`
	Runs          int     `json:"runs"`
	WallS         float64 `json:"wall_s"`
	WallMinS      float64 `json:"wall_min_s"`
	WallMaxS      float64 `json:"wall_max_s"`
	MBps          float64 `json:"mb_per_s"`
	CPUS          float64 `json:"cpu_s"`
	UserS         float64 `json:"user_s"`
	SysS          float64 `json:"sys_s"`
	MaxRSSMB      float64 `json:"max_rss_mb"`
	StoredBytes   float64 `json:"stored_bytes"`
	Ratio         float64 `json:"compression_ratio"`
	WalsenderCPUS float64 `json:"walsender_cpu_s"`
	OtherCPUS     float64 `json:"other_cpu_s"`
}

// ratio compares a synbak configuration's medians with pg_receivewal's.
type ratio struct {
	Synbak string  `json:"synbak"`
	Pgrw   string  `json:"pg_receivewal"`
	Wall   float64 `json:"wall"`
	CPU    float64 `json:"cpu"`
	RSS    float64 `json:"rss"`
	Stored float64 `json:"stored"`
}

// goal is one of the targets the WAL receiver is held to.
type goal struct {
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

func (r *report) summarize(cfgs []receiverConfig) {
	r.Medians, r.Ratios, r.Goals = nil, nil, nil
	byName := map[string]summary{}
	for _, cfg := range cfgs {
		var wall, mbps, cpu, user, sys, rss, stored, rat, ws, other []float64
		for _, run := range r.Runs {
			if run.Config != cfg.Name {
				continue
			}
			wall = append(wall, run.WallS)
			mbps = append(mbps, run.MBps)
			cpu = append(cpu, run.CPUS)
			user = append(user, run.UserS)
			sys = append(sys, run.SysS)
			rss = append(rss, run.MaxRSSMB)
			stored = append(stored, float64(run.StoredBytes))
			rat = append(rat, run.Ratio)
			ws = append(ws, run.WalsenderCPUS)
			other = append(other, run.OtherCPUS)
		}
		if len(wall) == 0 {
			continue
		}
		s := summary{Config: cfg.Name, Runs: len(wall), WallS: median(wall), WallMinS: percentile(wall, 0), WallMaxS: percentile(wall, 1),
			MBps: median(mbps), CPUS: median(cpu), UserS: median(user), SysS: median(sys), MaxRSSMB: median(rss),
			StoredBytes: median(stored), Ratio: median(rat), WalsenderCPUS: median(ws), OtherCPUS: median(other)}
		r.Medians = append(r.Medians, s)
		byName[cfg.Name] = s
	}
	pairs := [][2]string{
		{"synbak-zstd", "pgrw-lz4"}, {"synbak-s2", "pgrw-lz4"}, {"synbak-zstd4", "pgrw-lz4"},
		{"synbak-zstd", "pgrw-gzip"}, {"synbak-s2", "pgrw-gzip"},
		{"synbak-zstd", "pgrw-none"}, {"synbak-s2", "pgrw-none"}, {"synbak-none", "pgrw-none"},
		{"base-zstd", "pgrw-lz4"}, {"base-s2", "pgrw-lz4"}, {"base-none", "pgrw-none"},
		{"synbak-zstd", "base-zstd"}, {"synbak-s2", "base-s2"}, {"synbak-none", "base-none"},
	}
	for _, p := range pairs {
		a, okA := byName[p[0]]
		b, okB := byName[p[1]]
		if !okA || !okB {
			continue
		}
		r.Ratios = append(r.Ratios, ratio{Synbak: p[0], Pgrw: p[1], Wall: a.WallS / b.WallS, CPU: a.CPUS / b.CPUS,
			RSS: a.MaxRSSMB / b.MaxRSSMB, Stored: a.StoredBytes / b.StoredBytes})
	}
	// The wall-time goal holds for each compressing codec synbak offers.
	for _, q := range r.Ratios {
		if (q.Synbak == "synbak-zstd" || q.Synbak == "synbak-s2") && q.Pgrw == "pgrw-lz4" {
			r.Goals = append(r.Goals, goal{Goal: "wall " + q.Synbak + " / pgrw-lz4 <= 1.0", Value: q.Wall, Met: q.Wall <= 1.0})
		}
	}
	for _, s := range r.Medians {
		if strings.HasPrefix(s.Config, "synbak") {
			r.Goals = append(r.Goals, goal{Goal: "peak RSS " + s.Config + " <= 32 MB", Value: s.MaxRSSMB, Met: s.MaxRSSMB <= 32})
		}
	}
}

func (r *report) print(out io.Writer) {
	fmt.Fprintf(out, "\nWAL streaming benchmark: PostgreSQL %s, %s CPUs (%s), %s\n", r.Server, r.Host["cpus"], r.Host["cpu"], r.StartedAt)
	fmt.Fprintf(out, "WAL: %d segments %s..%s = %.0f MiB, data %q (pgbench %d MiB at scale %d, Synapse-like %d MiB in %d rows",
		r.WAL.Segments, r.WAL.StartSegment, r.WAL.TargetSegment, float64(r.WAL.Bytes)/(1<<20), r.Data.Mode,
		r.Data.PgbenchBytes>>20, r.Data.PgbenchScale, r.Data.SynapseBytes>>20, r.Data.SynapseRows)
	if r.Data.SampleZstdRat > 0 {
		fmt.Fprintf(out, "; raw event rows compress %.1fx with zstd-2", r.Data.SampleZstdRat)
	}
	fmt.Fprintf(out, ")\n\nCatch-up (medians of %d runs; wall = start until the last segment is stored)\n", maxRuns(r.Medians))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\twall s\t(min–max)\tMB/s\tcpu s\tuser s\tsys s\tpeak RSS MB\tstored MiB\tratio\twalsender cpu s\tother cpu s\t")
	for _, s := range r.Medians {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f–%.2f\t%.0f\t%.2f\t%.2f\t%.2f\t%.1f\t%.0f\t%.2fx\t%.2f\t%.2f\t\n", s.Config, s.WallS, s.WallMinS, s.WallMaxS,
			s.MBps, s.CPUS, s.UserS, s.SysS, s.MaxRSSMB, s.StoredBytes/(1<<20), s.Ratio, s.WalsenderCPUS, s.OtherCPUS)
	}
	tw.Flush()
	if len(r.Ratios) > 0 {
		fmt.Fprintln(out, "\nRatios synbak / pg_receivewal (medians; < 1 means synbak is faster / cheaper / smaller)")
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "synbak\tvs\twall\tcpu\tpeak RSS\tstored\t")
		for _, q := range r.Ratios {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t\n", q.Synbak, q.Pgrw, q.Wall, q.CPU, q.RSS, q.Stored)
		}
		tw.Flush()
	}
	if len(r.Goals) > 0 {
		fmt.Fprintln(out, "\nGoals")
		for _, g := range r.Goals {
			fmt.Fprintf(out, "  %-40s %8.2f  %s\n", g.Goal, g.Value, map[bool]string{true: "met", false: "NOT MET"}[g.Met])
		}
	}
	var verified []string
	for _, run := range r.Runs {
		if run.Verified > 0 {
			verified = append(verified, fmt.Sprintf("%s#%d: %d", run.Config, run.Round, run.Verified))
		}
	}
	if len(verified) > 0 {
		fmt.Fprintf(out, "\nVerified (synbak wal-fetch, byte-identical to pg_receivewal's copy and the server's pg_wal): %s segments\n", strings.Join(verified, ", "))
	}
	for _, ph := range r.Lag {
		fmt.Fprintf(out, "\nLag under steady load, %s mode: pgbench -R %d for %.0fs (%.0f tps, %.1f MB of WAL, %.0f kB/s); lag = server flush LSN - slot restart_lsn, sampled every 100 ms\n",
			ph.Mode, ph.Rate, ph.Seconds, ph.TPS, float64(ph.WALBytes)/1e6, float64(ph.WALBytes)/1e3/ph.Seconds)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "receiver\tsamples\tmedian kB\tp95 kB\tmax kB\tflush_lag median ms\tp95 ms\tcpu s (phase)\tpeak RSS MB\t")
		for _, t := range ph.Tools {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.1f\t\n", t.Config, t.Samples, t.MedianBytes/1e3, t.P95Bytes/1e3, t.MaxBytes/1e3,
				t.MedianFlushLag, t.P95FlushLag, t.CPUS, t.MaxRSSMB)
		}
		tw.Flush()
	}
}

func maxRuns(s []summary) int {
	n := 0
	for _, x := range s {
		n = max(n, x.Runs)
	}
	return n
}
