// Command basebackup benchmarks `synbak backup` against pg_basebackup
// (-Ft -Z zstd, and -Ft -Z server-lz4) on the same throwaway cluster at two
// database sizes: wall time, client CPU, client peak RSS, stored size. One
// synbak configuration stores into S3: a versitygw on loopback, started by
// the benchmark for each run.
//
//	go run ./bench/basebackup -sizes 1,2 -runs 1
//
// With -incremental it compares instead, on PostgreSQL 17 or later, a full
// backup with an incremental one after -change-pct % of the blocks changed:
//
//	go run ./bench/basebackup -incremental -sizes 2
//
// See bench/README.md for what is measured and how to read it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/bench/internal/benchpg"
	"github.com/synbak/synbak/bench/internal/benchs3"
)

type config struct {
	name string
	// synbak is true for `synbak backup`; env adds settings.
	synbak bool
	s3     bool // into s3://bench/repo on a versitygw of its own
	env    []string
	args   []string // pg_basebackup arguments after -D DIR
	// base runs the -synbak-base binary instead of the one measured.
	base bool
	// pgbackrest runs pgBackRest's full backup (compress-type=zst at its
	// default level 3, process-max=2).
	pgbackrest bool
}

var configs = []config{
	{name: "pg_basebackup -Z zstd", args: []string{"-Ft", "-Z", "zstd", "-c", "fast"}},
	{name: "pg_basebackup -Z server-lz4", args: []string{"-Ft", "-Z", "server-lz4", "-c", "fast"}},
	{name: "synbak (zstd)", synbak: true},
	{name: "synbak (zstd) to S3", synbak: true, s3: true},
	{name: "synbak (s2)", synbak: true, env: []string{"SYNBAK_REPOSITORY_COMPRESSION=s2"}},
	{name: "synbak (server lz4)", synbak: true, env: []string{"SYNBAK_BASEBACKUP_SERVER_COMPRESSION=lz4"}},
	{name: "synbak (zstd level 3)", synbak: true, env: []string{"SYNBAK_REPOSITORY_ZSTD_LEVEL=3"}},
	{name: "synbak (zstd, 1 worker)", synbak: true, env: []string{"SYNBAK_BASEBACKUP_COMPRESS_WORKERS=1"}},
	{name: "synbak base (zstd)", synbak: true, base: true},
	{name: "pgBackRest (zst, process-max 2)", pgbackrest: true},
}

type result struct {
	size   string
	dbMB   float64
	config string
	wall   float64
	cpu    float64
	rssMB  float64
	stored int64
	// S3 only: versitygw's CPU seconds and peak RSS during the run.
	gwCPU, gwRSSMB float64
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "basebackup bench:", err)
		os.Exit(1)
	}
}

func run() error {
	sizes := flag.String("sizes", "1,2", "database sizes in GiB (approximate), ascending")
	runs := flag.Int("runs", 1, "runs per configuration and size (medians are reported)")
	synbak := flag.String("synbak", "", "synbak binary (default: build ./cmd/synbak)")
	pgBin := flag.String("pg-bin", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	keep := flag.Bool("keep", false, "keep the work directory")
	withS3 := flag.Bool("s3", true, "also run synbak backup into S3 (versitygw on loopback; without the versitygw binary it is left out unless -s3 is given)")
	pgbenchShare := flag.Float64("pgbench-share", 2.0/3, "share of the database that is pgbench tables (the rest: Synapse-like event JSON); 1 = pgbench only, 0 = Synapse-like only")
	synbakBase := flag.String("synbak-base", "", "a second synbak binary, measured as \"synbak base (zstd)\" (e.g. the previous build)")
	only := flag.String("configs", "", "semicolon-separated configuration names to run (default: all available)")
	extract := flag.Bool("extract", false, "after the backups of each size, measure restore's extract (restore.Extract) against pgBackRest's restore")
	extractOnlyMode := flag.Bool("extract-only", false, "internal: be the extract phase's child process")
	extractRepo := flag.String("extract-repo", "", "internal: -extract-only's repository")
	extractDest := flag.String("extract-dest", "", "internal: -extract-only's target directory")
	extractWorkers := flag.Int("extract-workers", 0, "internal: -extract-only's decoding goroutines (0: one per CPU)")
	incremental := flag.Bool("incremental", false, "instead: full against incremental backups on PostgreSQL 17+ (-inc-pg-bin), a database of the first -sizes GiB, -change-pct % of its blocks changed")
	incPGBin := flag.String("inc-pg-bin", "/opt/synbak-pg/17/bin", "with -incremental: PostgreSQL 17+ server binaries")
	changePct := flag.Int("change-pct", 5, "with -incremental: the percentage of the tables' blocks changed before the incremental backup")
	flag.Parse()
	if *extractOnlyMode {
		return extractOnly(*extractRepo, *extractDest, *extractWorkers)
	}
	if *incremental {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		first, _, _ := strings.Cut(*sizes, ",")
		gb, err := strconv.ParseFloat(first, 64)
		if err != nil {
			return fmt.Errorf("-sizes: %w", err)
		}
		return runIncremental(ctx, incrementalOptions{synbak: *synbak, pgBin: *incPGBin, clientBin: *pgBin, gb: gb, changePct: *changePct, keep: *keep})
	}
	if *withS3 {
		if _, err := benchs3.Binary(); err != nil {
			explicit := false
			flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "s3" })
			if explicit {
				return err
			}
			fmt.Fprintf(os.Stderr, "leaving out the S3 configuration: %v\n", err)
			*withS3 = false
		}
	}
	_, errPgbr := exec.LookPath("pgbackrest")
	cfgs := slices.DeleteFunc(slices.Clone(configs), func(c config) bool {
		if *only != "" && !slices.Contains(strings.Split(*only, ";"), c.name) {
			return true
		}
		return (c.s3 && !*withS3) || (c.base && *synbakBase == "") || (c.pgbackrest && errPgbr != nil)
	})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := benchpg.Setup(ctx, "bbbench-", *synbak, *pgBin, clusterSettings, *keep)
	if err != nil {
		return err
	}
	defer b.Close(*keep)
	c, conn := b.Cluster, b.Conn
	var pgbr *pgbackrest
	if slices.ContainsFunc(cfgs, func(c config) bool { return c.pgbackrest }) || (*extract && errPgbr == nil) {
		if pgbr, err = newPgbackrest(ctx, c, filepath.Join(b.Work, "pgbackrest")); err != nil {
			return err
		}
	}

	var results, extracts []result
	for _, s := range strings.Split(*sizes, ",") {
		gb, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("-sizes: %w", err)
		}
		dbMB, err := benchpg.Fill(ctx, c, conn, gb, *pgbenchShare)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "database: %.0f MB\n", dbMB)
		for i := 0; i < *runs; i++ {
			order := slices.Clone(cfgs)
			if i%2 == 1 {
				slices.Reverse(order)
			}
			for _, cfg := range order {
				if conn.IsClosed() {
					// The server reset every connection (a backend killed
					// by another session on a shared machine): reconnect.
					fmt.Fprintln(os.Stderr, "the benchmark's connection was closed; reconnecting")
					if conn, err = pgx.Connect(ctx, c.DSN()); err != nil {
						return err
					}
					b.Conn = conn
				}
				if _, err := conn.Exec(ctx, "select pg_drop_replication_slot(slot_name) from pg_replication_slots"); err != nil {
					return err
				}
				if _, err := conn.Exec(ctx, "checkpoint"); err != nil {
					return err
				}
				_ = exec.Command("sync").Run()
				bin := b.Synbak
				if cfg.base {
					bin = *synbakBase
				}
				r, err := measure(ctx, c, cfg, bin, b.Work, pgbr)
				if err != nil {
					return fmt.Errorf("%s: %w", cfg.name, err)
				}
				r.size, r.dbMB = s+" GiB", dbMB
				fmt.Fprintf(os.Stderr, "%s: wall %.2f s, cpu %.2f s, rss %.1f MB, stored %d MiB", r.config, r.wall, r.cpu, r.rssMB, r.stored>>20)
				if cfg.s3 {
					fmt.Fprintf(os.Stderr, ", versitygw cpu %.2f s, rss %.1f MB", r.gwCPU, r.gwRSSMB)
				}
				fmt.Fprintln(os.Stderr)
				results = append(results, r)
			}
		}
		if *extract {
			xs, err := extractPhase(ctx, c, b.Synbak, *synbakBase, b.Work, pgbr, *runs, s+" GiB", dbMB)
			if err != nil {
				return err
			}
			extracts = append(extracts, xs...)
		}
	}
	report(results, "pgBackRest (zst, process-max 2)")
	if len(extracts) > 0 {
		fmt.Println()
		fmt.Println("Restore extract (files only, no recovery):")
		fmt.Println()
		report(extracts, "pgBackRest restore")
	}
	return nil
}

func measure(ctx context.Context, c *benchpg.Cluster, cfg config, synbak, work string, pgbr *pgbackrest) (result, error) {
	if cfg.pgbackrest {
		return pgbr.measure(ctx, cfg)
	}
	out := filepath.Join(work, "out")
	_ = os.RemoveAll(out)
	if err := os.Mkdir(out, 0o700); err != nil {
		return result{}, err
	}
	defer os.RemoveAll(out)
	var gw *benchs3.Server
	if cfg.s3 {
		var err error
		if gw, err = benchs3.Start(ctx, filepath.Join(out, "s3")); err != nil {
			return result{}, err
		}
		defer gw.Stop()
		if err := gw.MakeBucket(ctx, "bench"); err != nil {
			return result{}, fmt.Errorf("create bucket: %w", err)
		}
	}
	var cmd *exec.Cmd
	if cfg.synbak {
		cmd = exec.CommandContext(ctx, synbak, "-c", "/dev/null", "backup")
		repoEnv := []string{"SYNBAK_REPOSITORY_PATH=" + filepath.Join(out, "repo")}
		if gw != nil {
			repoEnv = gw.SynbakEnv("bench", "repo")
		}
		cmd.Env = benchpg.CleanEnv(append(append([]string{
			"SYNBAK_POSTGRES_DSN=" + c.DSN(),
			"SYNBAK_STATE_DIR=" + filepath.Join(out, "state"),
			"SYNBAK_LOG_LEVEL=warn",
		}, repoEnv...), cfg.env...)...)
	} else {
		args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "-D", filepath.Join(out, "pgbb")}, cfg.args...)
		cmd = exec.CommandContext(ctx, filepath.Join(c.Bin, "pg_basebackup"), args...)
		cmd.Env = benchpg.CleanEnv()
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	var gwCPU0 float64
	if gw != nil {
		gwCPU0, _ = benchpg.ProcCPU(gw.PID())
	}
	m, err := benchpg.RunMeasured(cmd)
	if err != nil {
		return result{}, fmt.Errorf("%v\n%s", err, stderr.String())
	}
	r := result{config: cfg.name, wall: m.Wall, cpu: m.CPU, rssMB: m.RSSMB}
	if gw != nil {
		gwCPU1, _ := benchpg.ProcCPU(gw.PID())
		r.gwCPU, r.gwRSSMB = gwCPU1-gwCPU0, float64(benchpg.VmHWM(gw.PID()))/1024
		r.stored, err = gw.Size(ctx, "bench", "repo/backups/")
	} else {
		r.stored, err = dirSize(out, cfg.synbak)
	}
	return r, err
}

// dirSize is the apparent size of the backup's files: for synbak the
// backups/ objects (not the WAL), for pg_basebackup base and tablespace
// tars (not pg_wal.tar, as synbak's WAL is not counted either).
func dirSize(dir string, synbak bool) (int64, error) {
	return benchpg.DirSize(dir, func(rel string) bool {
		if synbak {
			return strings.HasPrefix(rel, "repo/backups/")
		}
		return !strings.HasPrefix(filepath.Base(rel), "pg_wal")
	})
}

// report prints medians per size and configuration, with wall and CPU
// ratios to the configuration named ref.
func report(rs []result, ref string) {
	type key struct{ size, config string }
	groups := map[key][]result{}
	var keys []key
	for _, r := range rs {
		k := key{r.size, r.config}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	fmt.Printf("| DB size | client | wall s | CPU s | peak RSS MB | stored MiB | CPU s per stored GiB | wall vs %s | CPU vs %s |\n", ref, ref)
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	refWall, refCPU := map[string]float64{}, map[string]float64{}
	for _, k := range keys {
		if k.config != ref {
			continue
		}
		var wall, cpu []float64
		for _, r := range groups[k] {
			wall, cpu = append(wall, r.wall), append(cpu, r.cpu)
		}
		refWall[k.size], refCPU[k.size] = benchpg.Median(wall), benchpg.Median(cpu)
	}
	for _, k := range keys {
		g := groups[k]
		var wall, cpu, rss []float64
		for _, r := range g {
			wall, cpu, rss = append(wall, r.wall), append(cpu, r.cpu), append(rss, r.rssMB)
		}
		w, cp := benchpg.Median(wall), benchpg.Median(cpu)
		ratio, cratio := "–", "–"
		if refWall[k.size] > 0 {
			ratio = fmt.Sprintf("%.2f", w/refWall[k.size])
			cratio = fmt.Sprintf("%.2f", cp/refCPU[k.size])
		}
		perGiB := "–"
		if g[0].stored > 0 {
			perGiB = fmt.Sprintf("%.1f", cp/(float64(g[0].stored)/(1<<30)))
		}
		fmt.Printf("| %s (%.0f MB) | %s | %.2f | %.2f | %.1f | %d | %s | %s | %s |\n", k.size, g[0].dbMB, k.config, w, cp, benchpg.Median(rss), g[0].stored>>20, perGiB, ratio, cratio)
	}

	// synbak into S3 against the same synbak into a local directory.
	med := func(g []result, f func(result) float64) float64 {
		var v []float64
		for _, r := range g {
			v = append(v, f(r))
		}
		return benchpg.Median(v)
	}
	header := false
	for _, k := range keys {
		var local, remote config
		for _, c := range configs {
			if c.s3 && c.name == k.config {
				remote = c
			}
		}
		if !remote.s3 {
			continue
		}
		for _, c := range configs {
			if c.synbak && !c.s3 && !c.base && slices.Equal(c.env, remote.env) {
				local = c
			}
		}
		l, s := groups[key{k.size, local.name}], groups[k]
		if len(l) == 0 {
			continue
		}
		if !header {
			fmt.Println()
			fmt.Println("| DB size | S3 / local | wall | CPU | peak RSS | versitygw CPU s | versitygw peak RSS MB | (synbak + versitygw CPU) / local CPU |")
			fmt.Println("|---|---|---|---|---|---|---|---|")
			header = true
		}
		wall := func(r result) float64 { return r.wall }
		cpu := func(r result) float64 { return r.cpu }
		rss := func(r result) float64 { return r.rssMB }
		gwCPU := func(r result) float64 { return r.gwCPU }
		fmt.Printf("| %s | %s / %s | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f |\n", k.size, remote.name, local.name,
			med(s, wall)/med(l, wall), med(s, cpu)/med(l, cpu), med(s, rss)/med(l, rss),
			med(s, gwCPU), med(s, func(r result) float64 { return r.gwRSSMB }),
			(med(s, cpu)+med(s, gwCPU))/med(l, cpu))
	}
}
