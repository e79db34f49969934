// Command walstream benchmarks synbak's WAL receiver (`synbak wal stream`)
// against pg_receivewal, side by side on one throwaway PostgreSQL cluster:
// catch-up of the same WAL (wall time, CPU, peak RSS, bytes stored), lag
// under a steady load, and byte-for-byte checks of what synbak stored.
//
//	go run ./bench/walstream -wal-gb 2 -runs 3 -json /tmp/walstream.json
//
// See bench/README.md for what is measured and how to read it.
package main

import (
	"github.com/synbak/synbak/bench/internal/benchpg"

	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// defaultConfigs are the catch-up configurations run without -configs.
// pgrw-gzip is left out (about 50 s per run on 2 cores, and not the
// comparison the goals use); -configs can add it.
const defaultConfigs = "pgrw-none,pgrw-lz4,synbak-zstd,synbak-s2,synbak-none"

type options struct {
	walGB       float64
	runs        int
	data        string
	jsonPath    string
	synbak      string
	synbakBase  string
	synbakEnv   string
	pgBin       string
	configs     []string
	lagSeconds  int
	lagRate     int
	keep        bool
	scale       int
	verifyCount int
	perf        string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "walstream:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	var o options
	var configs string
	flag.Float64Var(&o.walGB, "wal-gb", 2, "GiB of WAL to generate and catch up")
	flag.IntVar(&o.runs, "runs", 3, "catch-up runs per configuration (medians are reported)")
	flag.StringVar(&o.data, "data", "mixed", "WAL content: pgbench, synapse or mixed")
	flag.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.synbak, "synbak", "", "synbak binary (default: build ./cmd/synbak of this module)")
	flag.StringVar(&o.synbakBase, "synbak-base", "", "a second synbak binary, run by the base-zstd, base-s2 and base-none configurations (to compare two builds in one run)")
	flag.StringVar(&o.synbakEnv, "synbak-env", "", "diagnostics: extra environment for the synbak runs, comma-separated KEY=VALUE (e.g. GODEBUG=gctrace=1; with -keep the logs are kept)")
	flag.StringVar(&o.pgBin, "pg-bin", "/usr/lib/postgresql/15/bin", "PostgreSQL server binaries")
	flag.StringVar(&configs, "configs", defaultConfigs,
		"catch-up configurations: "+strings.Join(slices.Sorted(mapKeys(knownConfigs)), ","))
	flag.IntVar(&o.lagSeconds, "lag-seconds", 30, "duration of each steady-load lag phase (0 skips them)")
	flag.IntVar(&o.lagRate, "lag-rate", 200, "pgbench transactions per second during the lag phases")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (cluster, logs, and the first pgrw-none run's uncompressed segments) at the end")
	flag.IntVar(&o.scale, "pgbench-scale", 0, "pgbench -i scale (0: derived from -wal-gb)")
	flag.IntVar(&o.verifyCount, "verify", 3, "segments per synbak run fetched back and compared")
	flag.StringVar(&o.perf, "perf", "", "diagnostics: record system-wide `perf` profiles of the synbak runs into this directory (slows those runs)")
	flag.Parse()
	switch o.data {
	case "pgbench", "synapse", "mixed":
	default:
		return fmt.Errorf("-data %q: must be pgbench, synapse or mixed", o.data)
	}
	if o.runs < 1 || o.walGB <= 0 {
		return errors.New("-runs must be at least 1 and -wal-gb positive")
	}
	var cfgs []receiverConfig
	for _, n := range strings.Split(configs, ",") {
		c, ok := knownConfigs[strings.TrimSpace(n)]
		if !ok {
			return fmt.Errorf("-configs: unknown configuration %q", n)
		}
		if c.Base && o.synbakBase == "" {
			return fmt.Errorf("-configs %s needs -synbak-base", c.Name)
		}
		cfgs = append(cfgs, c)
	}
	if cfgs[0].Name != "pgrw-none" && slices.ContainsFunc(cfgs, func(c receiverConfig) bool { return c.Name == "pgrw-none" }) {
		return errors.New("-configs: put pgrw-none first (its copy is the reference for verification)")
	}

	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	go func() { <-ctx.Done(); stopSignals() }() // a second Ctrl-C kills at once
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("interrupted (cluster stopped, work directory removed): %w", err)
		}
	}()

	work, err := os.MkdirTemp("/tmp", "walbench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			logf("kept %s", work)
			return
		}
		if err := os.RemoveAll(work); err != nil {
			logf("remove %s: %v", work, err)
		}
	}()
	logf("work directory %s", work)

	if o.synbak == "" {
		o.synbak = filepath.Join(work, "synbak")
		if err := buildSynbak(ctx, o.synbak); err != nil {
			return err
		}
	}
	c, conn, err := benchpg.StartConnected(ctx, o.pgBin, filepath.Join(work, "pg"), clusterSettings)
	if err != nil {
		return err
	}
	defer func() { logf("stopping PostgreSQL"); c.Stop() }()
	var synbakEnv []string
	if o.synbakEnv != "" {
		synbakEnv = strings.Split(o.synbakEnv, ",")
	}
	e := &env{c: c, synbak: o.synbak, base: o.synbakBase, extra: synbakEnv, work: work, procs: map[*proc]struct{}{}, perf: o.perf}
	defer e.stopAll()
	defer conn.Close(context.Background())

	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	var segSize int64
	if err := conn.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").Scan(&segSize); err != nil {
		return err
	}

	// One slot per run, all reserving WAL before any is generated, so
	// every run catches up exactly the same WAL.
	slotOf := func(cfg receiverConfig, round int) string {
		return fmt.Sprintf("b_%s_%d", strings.ReplaceAll(cfg.Name, "-", "_"), round)
	}
	for round := range o.runs {
		for _, cfg := range cfgs {
			if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", slotOf(cfg, round)); err != nil {
				return fmt.Errorf("create slot: %w", err)
			}
		}
	}
	var startLSN int64
	if err := conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff(min(restart_lsn), '0/0')::bigint FROM pg_replication_slots").Scan(&startLSN); err != nil {
		return err
	}

	total := int64(o.walGB * (1 << 30))
	logf("generating %.1f GiB of %s WAL", o.walGB, o.data)
	gen, err := generate(ctx, c, conn, o.data, total, o.scale)
	if err != nil {
		return fmt.Errorf("generate WAL: %w", err)
	}
	switched, target, err := benchpg.SwitchWAL(ctx, conn)
	if err != nil {
		return err
	}
	var tli uint32
	if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tli); err != nil {
		return err
	}
	w := walInfo{SegSize: segSize, StartLSN: startLSN, TargetLSN: switched, Timeline: tli,
		StartSegment: segName(tli, startLSN/segSize, segSize), TargetSegment: target}
	w.Segments = int((switched-1)/segSize - startLSN/segSize + 1)
	w.Bytes = int64(w.Segments) * segSize
	logf("WAL to catch up: %d segments %s..%s (%d MB) in %.0fs", w.Segments, w.StartSegment, w.TargetSegment, w.Bytes>>20, gen.Seconds)

	rep := report{
		Host:      hostInfo(),
		Server:    version,
		Data:      gen,
		WAL:       w,
		StartedAt: time.Now().UTC().Format(time.RFC3339),
	}
	var refDir string
	verifyNames := []string{w.StartSegment, segName(tli, startLSN/segSize+int64(w.Segments/2), segSize), w.TargetSegment}
	if o.verifyCount < len(verifyNames) {
		verifyNames = verifyNames[len(verifyNames)-o.verifyCount:]
	}
	for round := range o.runs {
		order := slices.Clone(cfgs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, cfg := range order {
			dir := filepath.Join(work, fmt.Sprintf("run-%d-%s", round, cfg.Name))
			logf("round %d: %s", round+1, cfg.Name)
			res, p, err := e.catchUp(ctx, conn, cfg, slotOf(cfg, round), dir, w)
			if err != nil {
				return err
			}
			res.Round = round + 1
			if cfg.Tool == "synbak" && o.verifyCount > 0 {
				refs := []string{filepath.Join(c.Data, "pg_wal")}
				if refDir != "" {
					refs = append([]string{refDir}, refs...)
				}
				n, against, err := e.verify(ctx, filepath.Join(dir, "repo"), filepath.Join(dir, "fetch-state"), verifyNames, refs)
				if err != nil {
					return fmt.Errorf("verify %s: %w", cfg.Name, err)
				}
				res.Verified, res.VerifiedAgainst = n, against
			}
			logf("  %.1fs  %.0f MB/s  cpu %.1fs  rss %.1f MB  stored %d MB (%.2fx)  walsender cpu %.1fs%s",
				res.WallS, res.MBps, res.CPUS, res.MaxRSSMB, res.StoredBytes>>20, res.Ratio, res.WalsenderCPUS,
				map[bool]string{true: fmt.Sprintf("  verified %d segments", res.Verified), false: ""}[res.Verified > 0])
			rep.Runs = append(rep.Runs, res)
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slotOf(cfg, round)); err != nil {
				return err
			}
			if o.keep {
				// Keep the receiver's log beside the work directory's runs.
				if b, err := os.ReadFile(p.stderr); err == nil {
					_ = os.WriteFile(dir+".stderr.log", b, 0o644)
				}
			}
			if cfg.Name == "pgrw-none" && refDir == "" {
				refDir = p.out
			} else if err := os.RemoveAll(dir); err != nil {
				return err
			}
			// Let the page cache write back before the next run.
			syscall.Sync()
		}
	}
	if refDir != "" && !o.keep {
		_ = os.RemoveAll(filepath.Dir(refDir))
	} else if refDir != "" {
		logf("kept pg_receivewal's uncompressed segments in %s", refDir)
	}

	if o.lagSeconds > 0 {
		for _, sync := range []bool{false, true} {
			ph, err := e.lagPhase(ctx, conn, o, sync)
			if err != nil {
				return fmt.Errorf("lag phase: %w", err)
			}
			rep.Lag = append(rep.Lag, ph)
		}
	}
	rep.summarize(cfgs)
	rep.print(os.Stdout)
	if o.jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
		logf("wrote %s", o.jsonPath)
	}
	return nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// walInfo is the WAL every catch-up run receives.
type walInfo struct {
	Timeline      uint32 `json:"timeline"`
	SegSize       int64  `json:"segment_size"`
	StartLSN      int64  `json:"start_lsn"`
	TargetLSN     int64  `json:"target_lsn"`
	StartSegment  string `json:"start_segment"`
	TargetSegment string `json:"target_segment"`
	Segments      int    `json:"segments"`
	Bytes         int64  `json:"bytes"`
}

func segName(tli uint32, no, segSize int64) string {
	per := int64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, no/per, no%per)
}

func buildSynbak(ctx context.Context, out string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		return errors.New("run from inside the synbak module, or pass -synbak BINARY")
	}
	logf("building synbak from %s", root)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/synbak")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/synbak: %w\n%s", err, b)
	}
	return nil
}

func hostInfo() map[string]string {
	h := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				h["cpu"] = strings.TrimSpace(l[strings.IndexByte(l, ':')+1:])
				break
			}
		}
	}
	return h
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile is the nearest-rank percentile (q in 0..1).
func percentile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
