// Command s3wal benchmarks `synbak wal stream` catching up the same WAL into
// a local repository and into S3 (versitygw on loopback, started by the
// benchmark for each run): wall time until the last segment is stored,
// synbak's CPU and peak RSS, and the S3 server's CPU beside it.
//
//	go run ./bench/s3wal -wal-mb 512 -runs 3
//
// See bench/README.md for what is measured and how to read it.
package main

import (
	"github.com/synbak/synbak/bench/internal/benchpg"
	"github.com/synbak/synbak/bench/internal/benchs3"

	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/minio/minio-go/v7"
)

// clusterSettings: no checkpoint while generating (the slots keep the WAL
// anyway).
const clusterSettings = `
max_wal_size = 16GB
min_wal_size = 256MB
`

const (
	bucket = "bench"
	prefix = "repo" // the repository is s3://bench/repo
)

var configs = []string{"local", "s3"}

type result struct {
	config    string
	wall      float64 // start until the target segment is stored
	cpu       float64 // synbak's user + system (rusage, shutdown included)
	user, sys float64
	rssMB     float64 // synbak's VmHWM
	stored    int64   // bytes under <repo>/wal/
	walsender float64 // CPU of the walsender serving the slot
	gwCPU     float64 // versitygw's CPU during the run (s3 only)
	gwRSSMB   float64
	other     float64 // busy CPU of the machine minus all of the above
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "s3wal:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func run() error {
	walMB := flag.Int("wal-mb", 512, "MiB of WAL to generate and catch up")
	runs := flag.Int("runs", 3, "catch-up runs per configuration (medians are reported)")
	synbak := flag.String("synbak", "", "synbak binary (default: build ./cmd/synbak)")
	compression := flag.String("compression", "", "SYNBAK_REPOSITORY_COMPRESSION for both (default: synbak's, zstd)")
	pgBin := flag.String("pg-bin", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	keep := flag.Bool("keep", false, "keep the work directory (cluster, logs)")
	synbakEnv := flag.String("synbak-env", "", "diagnostics: extra environment for synbak, comma-separated KEY=VALUE (e.g. GODEBUG=gctrace=1; -keep keeps the logs)")
	flag.Parse()
	if _, err := benchs3.Binary(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := benchpg.Setup(ctx, "s3walbench-", *synbak, *pgBin, clusterSettings, *keep)
	if err != nil {
		return err
	}
	defer func() {
		b.Close(*keep)
		if *keep {
			logf("kept %s", b.Work)
		}
	}()
	work, c, conn := b.Work, b.Cluster, b.Conn
	*synbak = b.Synbak

	// Slots first: every run catches up exactly the same WAL.
	var extraEnv []string
	if *compression != "" {
		extraEnv = append(extraEnv, "SYNBAK_REPOSITORY_COMPRESSION="+*compression)
	}
	if *synbakEnv != "" {
		extraEnv = append(extraEnv, strings.Split(*synbakEnv, ",")...)
	}
	slot := func(cfg string, round int) string { return fmt.Sprintf("b_%s_%d", cfg, round) }
	for round := range *runs {
		for _, cfg := range configs {
			if _, err := conn.Exec(ctx, "select pg_create_physical_replication_slot($1, true)", slot(cfg, round)); err != nil {
				return fmt.Errorf("create slot: %w", err)
			}
		}
	}
	var startLSN, segSize int64
	if err := conn.QueryRow(ctx, "select pg_wal_lsn_diff(min(restart_lsn), '0/0')::bigint from pg_replication_slots").Scan(&startLSN); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, "select setting::bigint from pg_settings where name = 'wal_segment_size'").Scan(&segSize); err != nil {
		return err
	}
	scale, err := generate(ctx, c, conn, int64(*walMB)<<20)
	if err != nil {
		return fmt.Errorf("generate WAL: %w", err)
	}
	switched, target, err := benchpg.SwitchWAL(ctx, conn)
	if err != nil {
		return err
	}
	segs := (switched-1)/segSize - startLSN/segSize + 1
	walBytes := segs * segSize
	fmt.Printf("WAL: %d segments up to %s = %d MiB (pgbench -i -s %d, then pgbench -T runs)\n\n", segs, target, walBytes>>20, scale)

	var results []result
	for round := range *runs {
		order := slices.Clone(configs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, cfg := range order {
			dir := filepath.Join(work, fmt.Sprintf("run-%d-%s", round, cfg))
			logf("round %d: %s", round+1, cfg)
			r, err := catchUp(ctx, conn, c.DSN(), *synbak, extraEnv, cfg, slot(cfg, round), dir, target, filepath.Join(c.Data, "pg_wal", target))
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", cfg, round+1, err)
			}
			logf("  wall %.2f s (%.0f MB/s), cpu %.2f s, rss %.1f MB, stored %d MiB, walsender %.2f s, versitygw %.2f s / %.1f MB, other %.2f s",
				r.wall, float64(walBytes)/1e6/r.wall, r.cpu, r.rssMB, r.stored>>20, r.walsender, r.gwCPU, r.gwRSSMB, r.other)
			results = append(results, r)
			if _, err := conn.Exec(ctx, "select pg_drop_replication_slot($1)", slot(cfg, round)); err != nil {
				return err
			}
			if !*keep {
				if err := os.RemoveAll(dir); err != nil {
					return err
				}
			}
			syscall.Sync() // write back this run's files before the next one
		}
	}
	report(results, walBytes)
	return nil
}

// generate writes about total bytes of WAL with pgbench: an init at a
// scale giving ~3/4 of it, then timed runs, each after a checkpoint (so that
// updates log full-page images, as in production). It returns the scale.
func generate(ctx context.Context, c *benchpg.Cluster, conn *pgx.Conn, total int64) (int, error) {
	lsn := func() (int64, error) {
		var v int64
		err := conn.QueryRow(ctx, "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").Scan(&v)
		return v, err
	}
	start, err := lsn()
	if err != nil {
		return 0, err
	}
	scale := max(1, int(float64(total)*0.75/16e6)) // pgbench -i logs ~16 MB per scale unit
	logf("generating %d MiB of WAL: pgbench -i -s %d", total>>20, scale)
	if err := pgbench(ctx, c, "-i", "-q", "-s", strconv.Itoa(scale)); err != nil {
		return 0, err
	}
	for {
		now, err := lsn()
		if err != nil {
			return 0, err
		}
		if now-start >= total {
			return scale, nil
		}
		if _, err := conn.Exec(ctx, "checkpoint"); err != nil {
			return 0, err
		}
		logf("pgbench -T 5: %d / %d MiB of WAL", (now-start)>>20, total>>20)
		if err := pgbench(ctx, c, "-n", "-c", "4", "-j", "2", "-T", "5"); err != nil {
			return 0, err
		}
	}
}

func pgbench(ctx context.Context, c *benchpg.Cluster, args ...string) error {
	base := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "pgbench"), append(append(base, args...), "postgres")...)
	cmd.Env = benchpg.CleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// catchUp runs `synbak wal stream` from slot into a fresh repository in dir
// (local) or on a fresh versitygw (s3) until the target segment is stored,
// then stops it with SIGINT and checks the stored segment against the
// server's copy with `synbak wal-fetch`.
func catchUp(ctx context.Context, conn *pgx.Conn, dsn, synbak string, extraEnv []string, cfg, slot, dir, target, serverCopy string) (result, error) {
	r := result{config: cfg}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return r, err
	}
	repoEnv := []string{"SYNBAK_REPOSITORY_PATH=" + filepath.Join(dir, "repo")}
	var stored func() (bool, error)
	var gw *benchs3.Server
	if cfg == "s3" {
		var err error
		if gw, err = benchs3.Start(ctx, filepath.Join(dir, "s3")); err != nil {
			return r, err
		}
		defer gw.Stop()
		if err := gw.MakeBucket(ctx, bucket); err != nil {
			return r, fmt.Errorf("create bucket: %w", err)
		}
		mc, err := gw.Client()
		if err != nil {
			return r, err
		}
		repoEnv = gw.SynbakEnv(bucket, prefix)
		key := prefix + "/wal/00000001/" + target
		stored = func() (bool, error) {
			_, err := mc.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
			if minio.ToErrorResponse(err).StatusCode == 404 {
				return false, nil
			}
			return err == nil, err
		}
	} else {
		p := filepath.Join(dir, "repo", "wal", "00000001", target)
		stored = func() (bool, error) {
			_, err := os.Stat(p)
			if errors.Is(err, fs.ErrNotExist) {
				return false, nil
			}
			return err == nil, err
		}
	}
	env := append([]string{
		"SYNBAK_POSTGRES_SLOT=" + slot,
		"SYNBAK_STATE_DIR=" + filepath.Join(dir, "state"),
	}, repoEnv...)
	env = append(env, extraEnv...)
	logPath := filepath.Join(dir, "synbak.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return r, err
	}
	defer lf.Close()
	cmd := exec.Command(synbak, "-c", "/dev/null", "--log-level", "info", "wal", "stream")
	cmd.Env = benchpg.CleanEnv(append(env, "SYNBAK_POSTGRES_DSN="+dsn)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group (a Ctrl-C reaches only us; we stop it), SIGKILL
	// if we die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	var gwCPU0 float64
	if gw != nil {
		gwCPU0, _ = benchpg.ProcCPU(gw.PID())
	}
	busy0 := benchpg.BusyCPU()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stopSynbak := func() {
		select {
		case <-done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	defer stopSynbak()

	var hwm int64
	var walsenderPID int
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if kb := benchpg.VmHWM(cmd.Process.Pid); kb > hwm {
			hwm = kb
		}
		if walsenderPID == 0 && i%10 == 0 {
			_ = conn.QueryRow(ctx, "select coalesce(active_pid, 0) from pg_replication_slots where slot_name = $1", slot).Scan(&walsenderPID)
		}
		ok, err := stored()
		if err != nil {
			return r, fmt.Errorf("poll for %s: %w", target, err)
		}
		if ok {
			r.wall = time.Since(start).Seconds()
			break
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-done:
			b, _ := os.ReadFile(logPath)
			return r, fmt.Errorf("synbak exited before storing %s:\n%s", target, tail(b))
		case <-tick.C:
		}
	}
	// The walsender and versitygw at the moment the target is stored.
	if kb := benchpg.VmHWM(cmd.Process.Pid); kb > hwm {
		hwm = kb
	}
	if walsenderPID != 0 {
		r.walsender, _ = benchpg.ProcCPU(walsenderPID)
	}
	if gw != nil {
		cpu, _ := benchpg.ProcCPU(gw.PID())
		r.gwCPU, r.gwRSSMB = cpu-gwCPU0, float64(benchpg.VmHWM(gw.PID()))/1024
	}
	busy := benchpg.BusyCPU() - busy0
	stopSynbak()
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	r.user, r.sys = tv(ru.Utime), tv(ru.Stime)
	r.cpu, r.rssMB = r.user+r.sys, float64(hwm)/1024
	// Approximate: synbak's CPU includes its shutdown after the target.
	r.other = max(0, busy-r.cpu-r.walsender-r.gwCPU)

	if gw != nil {
		r.stored, err = gw.Size(ctx, bucket, prefix+"/wal/")
	} else {
		r.stored, err = benchpg.DirSize(filepath.Join(dir, "repo", "wal"), nil)
	}
	if err != nil {
		return r, err
	}
	// What was stored is what the server wrote.
	fetched := filepath.Join(dir, "fetched")
	fc := exec.CommandContext(ctx, synbak, "-c", "/dev/null", "wal-fetch", target, fetched)
	fc.Env = benchpg.CleanEnv(append(repoEnv, "SYNBAK_STATE_DIR="+filepath.Join(dir, "fetch-state"))...)
	if out, err := fc.CombinedOutput(); err != nil {
		return r, fmt.Errorf("synbak wal-fetch %s: %w\n%s", target, err, out)
	}
	a, err1 := os.ReadFile(fetched)
	b, err2 := os.ReadFile(serverCopy)
	if err := errors.Join(err1, err2); err != nil {
		return r, err
	}
	if !bytes.Equal(a, b) {
		return r, fmt.Errorf("segment %s fetched back differs from the server's %s", target, serverCopy)
	}
	return r, nil
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func report(rs []result, walBytes int64) {
	med := map[string]map[string]float64{}
	fmt.Printf("Catch-up (medians of %d runs; wall = start until the last segment is stored)\n", len(rs)/len(configs))
	fmt.Println("| config | wall s (min–max) | MB/s | synbak CPU s | user s | sys s | peak RSS MB | stored MiB | walsender CPU s | versitygw CPU s | versitygw peak RSS MB | other CPU s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, cfg := range configs {
		var g []result
		for _, r := range rs {
			if r.config == cfg {
				g = append(g, r)
			}
		}
		m := func(f func(result) float64) float64 {
			var v []float64
			for _, r := range g {
				v = append(v, f(r))
			}
			return benchpg.Median(v)
		}
		walls := make([]float64, len(g))
		for i, r := range g {
			walls[i] = r.wall
		}
		med[cfg] = map[string]float64{
			"wall": m(func(r result) float64 { return r.wall }),
			"cpu":  m(func(r result) float64 { return r.cpu }),
			"rss":  m(func(r result) float64 { return r.rssMB }),
			"gw":   m(func(r result) float64 { return r.gwCPU }),
		}
		gw, gwRSS := "–", "–"
		if cfg == "s3" {
			gw = fmt.Sprintf("%.2f", med[cfg]["gw"])
			gwRSS = fmt.Sprintf("%.1f", m(func(r result) float64 { return r.gwRSSMB }))
		}
		fmt.Printf("| synbak-%s | %.2f (%.2f–%.2f) | %.0f | %.2f | %.2f | %.2f | %.1f | %.0f | %.2f | %s | %s | %.2f |\n",
			cfg, med[cfg]["wall"], slices.Min(walls), slices.Max(walls), float64(walBytes)/1e6/med[cfg]["wall"],
			med[cfg]["cpu"], m(func(r result) float64 { return r.user }), m(func(r result) float64 { return r.sys }),
			med[cfg]["rss"], m(func(r result) float64 { return float64(r.stored) / (1 << 20) }),
			m(func(r result) float64 { return r.walsender }), gw, gwRSS, m(func(r result) float64 { return r.other }))
	}
	l, s := med["local"], med["s3"]
	fmt.Println()
	fmt.Println("| s3 / local (medians) | wall | synbak CPU | peak RSS | (synbak + versitygw CPU) / synbak CPU local |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| | %.2f | %.2f | %.2f | %.2f |\n", s["wall"]/l["wall"], s["cpu"]/l["cpu"], s["rss"]/l["rss"], (s["cpu"]+s["gw"])/l["cpu"])
}
