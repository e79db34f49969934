// Command dump benchmarks `synbak dump` against `pg_dump -Fc` writing a
// file (gzip, pg_dump's default, and -Z 0), and `synbak restore
// --from-dump` against `pg_restore -j` from that file, on one throwaway
// cluster filled with Synapse-like event JSON: wall time, client CPU (the
// tool and the children it waited for: pg_dump/pg_restore under synbak),
// client peak RSS, stored size.
//
//	go run ./bench/dump -gb 1 -runs 3
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
)

type config struct {
	name    string
	restore bool     // a restore (of the newest dump / file) instead of a dump
	synbak  bool     // synbak instead of pg_dump/pg_restore
	env     []string // synbak settings
	args    []string // pg_dump arguments besides the connection and -f
}

var configs = []config{
	{name: "pg_dump -Fc (gzip) > file", args: []string{"-Fc"}},
	{name: "pg_dump -Fc -Z 0 > file", args: []string{"-Fc", "-Z", "0"}},
	{name: "synbak dump (zstd)", synbak: true},
	{name: "synbak dump (s2)", synbak: true, env: []string{"SYNBAK_REPOSITORY_COMPRESSION=s2"}},
	{name: "pg_restore -j 2 (gzip file)", restore: true},
	{name: "synbak restore --from-dump --jobs 2 (zstd)", restore: true, synbak: true},
}

type result struct {
	config         string
	wall, cpu, rss float64
	stored         int64
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dump bench:", err)
		os.Exit(1)
	}
}

func run() error {
	gb := flag.Float64("gb", 1, "database size in GiB (approximate): Synapse-like event JSON")
	runs := flag.Int("runs", 3, "runs per configuration (medians are reported)")
	synbak := flag.String("synbak", "", "synbak binary (default: build ./cmd/synbak)")
	pgBin := flag.String("pg-bin", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := benchpg.Setup(ctx, "dumpbench-", *synbak, *pgBin, "max_wal_size = 4GB\n", *keep)
	if err != nil {
		return err
	}
	defer b.Close(*keep)
	dbMB, err := benchpg.Fill(ctx, b.Cluster, b.Conn, *gb, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "database: %.0f MB of Synapse-like event JSON\n", dbMB)

	var results []result
	for i := 0; i < *runs; i++ {
		order := slices.Clone(configs)
		if i%2 == 1 {
			// Dumps first, then restores, each group in reverse.
			slices.Reverse(order[:4])
			slices.Reverse(order[4:])
		}
		for _, cfg := range order {
			_ = exec.Command("sync").Run()
			r, err := measure(ctx, b, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", cfg.name, err)
			}
			fmt.Fprintf(os.Stderr, "%s: wall %.2f s, cpu %.2f s, rss %.1f MB", r.config, r.wall, r.cpu, r.rss)
			if !cfg.restore {
				fmt.Fprintf(os.Stderr, ", stored %d MiB", r.stored>>20)
			}
			fmt.Fprintln(os.Stderr)
			results = append(results, r)
		}
	}
	report(results, dbMB)
	return nil
}

func measure(ctx context.Context, b *benchpg.Bench, cfg config) (result, error) {
	c := b.Cluster
	out := filepath.Join(b.Work, "out-"+strconv.Itoa(slices.IndexFunc(configs, func(x config) bool { return x.name == cfg.name })))
	gzipFile := filepath.Join(b.Work, "out-0", "dump")
	repoDir := filepath.Join(b.Work, "out-2", "repo")
	synbakEnv := func(repo string, extra ...string) []string {
		return benchpg.CleanEnv(append([]string{
			"SYNBAK_POSTGRES_DSN=" + c.DSN(), "SYNBAK_REPOSITORY_PATH=" + repo,
			"SYNBAK_STATE_DIR=" + filepath.Join(b.Work, "state"), "SYNBAK_LOG_LEVEL=warn",
		}, extra...)...)
	}
	var cmd *exec.Cmd
	switch {
	case !cfg.restore:
		_ = os.RemoveAll(out)
		if err := os.MkdirAll(out, 0o700); err != nil {
			return result{}, err
		}
		if cfg.synbak {
			cmd = exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "dump")
			cmd.Env = synbakEnv(filepath.Join(out, "repo"), cfg.env...)
		} else {
			args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "-f", filepath.Join(out, "dump")}, cfg.args...)
			cmd = exec.CommandContext(ctx, filepath.Join(c.Bin, "pg_dump"), append(args, "postgres")...)
			cmd.Env = benchpg.CleanEnv()
		}
	default:
		if _, err := b.Conn.Exec(ctx, "DROP DATABASE IF EXISTS restored"); err != nil {
			return result{}, err
		}
		if cfg.synbak {
			cmd = exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "restore", "--from-dump", "latest", "--jobs", "2",
				"--work-dir", b.Work, "--target-dsn", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=restored", c.Port))
			cmd.Env = synbakEnv(repoDir)
		} else {
			if _, err := b.Conn.Exec(ctx, "CREATE DATABASE restored ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"); err != nil {
				return result{}, err
			}
			cmd = exec.CommandContext(ctx, filepath.Join(c.Bin, "pg_restore"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres",
				"-d", "restored", "--no-owner", "--exit-on-error", "-j", "2", gzipFile)
			cmd.Env = benchpg.CleanEnv()
		}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	m, err := benchpg.RunMeasured(cmd)
	if err != nil {
		return result{}, fmt.Errorf("%v\n%s", err, stderr.String())
	}
	r := result{config: cfg.name, wall: m.Wall, cpu: m.CPU, rss: m.RSSMB}
	if !cfg.restore {
		r.stored, err = benchpg.DirSize(out, nil)
	} else {
		var n int64
		err = b.Conn.QueryRow(ctx, "SELECT count(*) FROM event_json").Scan(&n) // the source's, for a sanity line
		if err == nil {
			var got int64
			conn2 := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=restored", c.Port)
			if got, err = countRows(ctx, conn2); err == nil && got != n {
				err = fmt.Errorf("restored %d rows of event_json, the source has %d", got, n)
			}
		}
	}
	return r, err
}

func report(rs []result, dbMB float64) {
	groups := map[string][]result{}
	for _, r := range rs {
		groups[r.config] = append(groups[r.config], r)
	}
	med := func(name string, f func(result) float64) float64 {
		var v []float64
		for _, r := range groups[name] {
			v = append(v, f(r))
		}
		return benchpg.Median(v)
	}
	wall := func(r result) float64 { return r.wall }
	cpu := func(r result) float64 { return r.cpu }
	rss := func(r result) float64 { return r.rss }
	fmt.Printf("Database: %.0f MB of Synapse-like event JSON; medians of %d runs.\n\n", dbMB, len(groups[configs[0].name]))
	fmt.Println("| client | wall s (min–max) | CPU s | peak RSS MB | stored MiB | wall vs reference |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, cfg := range configs {
		g := groups[cfg.name]
		lo, hi := g[0].wall, g[0].wall
		for _, r := range g {
			lo, hi = min(lo, r.wall), max(hi, r.wall)
		}
		ref := configs[0].name // pg_dump -Fc
		if cfg.restore {
			ref = configs[4].name // pg_restore -j 2
		}
		stored := "–"
		if !cfg.restore {
			stored = strconv.FormatInt(g[0].stored>>20, 10)
		}
		fmt.Printf("| %s | %.2f (%.2f–%.2f) | %.2f | %.1f | %s | %.2f |\n", cfg.name, med(cfg.name, wall), lo, hi,
			med(cfg.name, cpu), med(cfg.name, rss), stored, med(cfg.name, wall)/med(ref, wall))
	}
}

func countRows(ctx context.Context, dsn string) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, "SELECT count(*) FROM event_json").Scan(&n)
	return n, err
}
