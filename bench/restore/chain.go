package main

// The -chain mode: restore time from an incremental chain (a full backup
// and an incremental with about chainChanged of the blocks changed) against
// a full backup of the same moment, on PostgreSQL 17 or later. Both
// restores replay next to no WAL, so the difference is the extraction:
// the chain writes the full backup and then the changed blocks again.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/synbak/synbak/bench/internal/benchpg"
)

type chainOptions struct {
	gb      float64
	changed float64
	runs    int
	synbak  string
	pgBin   string
	keep    bool
}

func runChain(ctx context.Context, o chainOptions) error {
	settings := "max_wal_size = 64GB\nmin_wal_size = 1GB\nsummarize_wal = on\nautovacuum = off\n"
	b, err := benchpg.Setup(ctx, "chainbench-", o.synbak, o.pgBin, settings, o.keep)
	if err != nil {
		return err
	}
	defer func() {
		b.Close(o.keep)
		if o.keep {
			logf("work directory kept: %s", b.Work)
		}
	}()
	logf("work directory %s, synbak %s, PostgreSQL %s", b.Work, b.Synbak, o.pgBin)
	mb, err := benchpg.Fill(ctx, b.Cluster, b.Conn, o.gb, 0) // Synapse-like event rows only: the server binaries have no pgbench
	if err != nil {
		return err
	}
	logf("database: %.0f MB", mb)
	var rel string
	var size int64
	if err := b.Conn.QueryRow(ctx, "select c.oid::regclass::text, pg_relation_size(c.oid) from pg_class c order by 2 desc limit 1").Scan(&rel, &size); err != nil {
		return err
	}
	// Above 1 GiB a relation spans two segment files (<relfilenode>.1),
	// and the chain's reconstruction goes across the segment boundary.
	logf("largest relation: %s, %.0f MB (%d segment files)", rel, float64(size)/(1<<20), size/(1<<30)+1)
	repoDir := filepath.Join(b.Work, "repo")
	env := append(benchpg.CleanEnv("SYNBAK_REPOSITORY_PATH="+repoDir, "SYNBAK_REPOSITORY_COMPRESSION=zstd"),
		"SYNBAK_POSTGRES_DSN="+b.Cluster.DSN(), "SYNBAK_POSTGRES_SLOT=bench",
		"SYNBAK_STATE_DIR="+filepath.Join(b.Work, "state"), "SYNBAK_LOG_LEVEL=warn")
	if _, err := b.Conn.Exec(ctx, "SELECT pg_create_physical_replication_slot('bench', true)"); err != nil {
		return err
	}
	stream := exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "wal", "stream")
	stream.Env = env
	var streamOut bytes.Buffer
	stream.Stdout, stream.Stderr = &streamOut, &streamOut
	if err := stream.Start(); err != nil {
		return err
	}
	defer func() {
		_ = stream.Process.Signal(syscall.SIGINT)
		_ = stream.Wait()
	}()
	backup := func(kind string) (time.Duration, error) {
		start := time.Now()
		cmd := exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "backup", "--"+kind)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("synbak backup --%s: %w\n%s\nwal stream: %s", kind, err, tail(out, 3000), tail(streamOut.Bytes(), 2000))
		}
		took := time.Since(start)
		logf("backup --%s: %s (%s)", kind, strings.TrimSpace(string(out)), took.Round(time.Millisecond))
		return took, nil
	}
	if _, err := backup("full"); err != nil {
		return err
	}
	// Change about o.changed of the event table's pages: every row on every
	// 1/o.changed-th page (the new row versions go to new pages, the primary
	// key gets new entries).
	every := int(1 / o.changed)
	tag, err := b.Conn.Exec(ctx, fmt.Sprintf("UPDATE event_json SET room_id = room_id WHERE ((ctid::text::point)[0])::bigint %% %d = 0", every))
	if err != nil {
		return err
	}
	logf("updated %d rows (every row on every %d. page)", tag.RowsAffected(), every)
	// The incremental first (--incremental builds on the newest backup),
	// then a full backup of the same moment; a target between them
	// restores from the chain, one after both from the full backup.
	incTook, err := backup("incremental")
	if err != nil {
		return err
	}
	var between time.Time
	if err := b.Conn.QueryRow(ctx, "SELECT now()").Scan(&between); err != nil {
		return err
	}
	time.Sleep(1100 * time.Millisecond) // backup end times are whole seconds apart from the target
	fullTook, err := backup("full")
	if err != nil {
		return err
	}
	var after time.Time
	if err := b.Conn.QueryRow(ctx, "SELECT now()").Scan(&after); err != nil {
		return err
	}
	// A commit after both targets: both recoveries stop at it, the same
	// way, and the archive is known complete past the targets once its
	// segment is stored.
	time.Sleep(1100 * time.Millisecond)
	if _, err := b.Conn.Exec(ctx, "CREATE TABLE bench_marker ()"); err != nil {
		return err
	}
	if _, err := b.Conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // the receiver stores the switched segment

	type run struct {
		wall, extract float64
		chain         int
	}
	restore := func(name string, args ...string) (run, error) {
		parent := filepath.Join(b.Work, "restore-"+name)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return run{}, err
		}
		defer os.RemoveAll(parent)
		cmd := exec.CommandContext(ctx, b.Synbak, append([]string{"-c", "/dev/null", "restore", "--pgdata", filepath.Join(parent, "data"), "--pg-bindir", o.pgBin, "--json"}, args...)...)
		cmd.Env = append(benchpg.CleanEnv("SYNBAK_REPOSITORY_PATH="+repoDir), "SYNBAK_STATE_DIR="+filepath.Join(parent, "state"), "SYNBAK_LOG_LEVEL=warn")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return run{}, fmt.Errorf("synbak restore %v: %w\n%s\n%s", args, err, tail(stdout.Bytes(), 2000), tail(stderr.Bytes(), 3000))
		}
		r := run{wall: time.Since(start).Seconds()}
		var rep struct {
			Plan struct {
				Chain []struct{ ID string } `json:"chain"`
			} `json:"plan"`
			Phases []struct {
				Name    string  `json:"name"`
				Seconds float64 `json:"seconds"`
			} `json:"phases"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			return run{}, fmt.Errorf("restore report: %w\n%s", err, tail(stdout.Bytes(), 2000))
		}
		for _, p := range rep.Phases {
			if p.Name == "extract" {
				r.extract = p.Seconds
			}
		}
		r.chain = len(rep.Plan.Chain)
		return r, nil
	}
	var fulls, chains []run
	for i := 0; i < o.runs; i++ {
		order := []string{"full", "chain"}
		if i%2 == 1 {
			order = []string{"chain", "full"}
		}
		for _, which := range order {
			if which == "full" {
				r, err := restore("full", "--target-time", after.UTC().Format(time.RFC3339Nano))
				if err != nil {
					return err
				}
				logf("restore of the full backup: %.1f s (extract %.1f s, chain of %d)", r.wall, r.extract, r.chain)
				fulls = append(fulls, r)
			} else {
				r, err := restore("chain", "--target-time", between.UTC().Format(time.RFC3339Nano))
				if err != nil {
					return err
				}
				logf("restore of the chain: %.1f s (extract %.1f s, chain of %d)", r.wall, r.extract, r.chain)
				chains = append(chains, r)
			}
		}
	}
	if fulls[0].chain != 1 || chains[0].chain != 2 {
		return fmt.Errorf("the restores used chains of %d and %d backups, want 1 and 2", fulls[0].chain, chains[0].chain)
	}
	med := func(rs []run, f func(run) float64) float64 {
		var v []float64
		for _, r := range rs {
			v = append(v, f(r))
		}
		return benchpg.Median(v)
	}
	best := func(rs []run, f func(run) float64) float64 {
		m := f(rs[0])
		for _, r := range rs[1:] {
			m = min(m, f(r))
		}
		return m
	}
	wall := func(r run) float64 { return r.wall }
	extract := func(r run) float64 { return r.extract }
	fmt.Printf("\nRestore from a chain (full + incremental, about %.0f %% of the pages changed) vs a full backup of the same moment\n", o.changed*100)
	fmt.Printf("database %.0f MB; backups: incremental %.1f s, full %.1f s; medians of %d runs\n\n", mb, incTook.Seconds(), fullTook.Seconds(), o.runs)
	fmt.Printf("| restore from | wall median (s) | extract median (s) | wall best (s) | extract best (s) |\n|---|---|---|---|---|\n")
	fmt.Printf("| full backup | %.1f | %.1f | %.1f | %.1f |\n", med(fulls, wall), med(fulls, extract), best(fulls, wall), best(fulls, extract))
	fmt.Printf("| chain (full + incremental) | %.1f | %.1f | %.1f | %.1f |\n", med(chains, wall), med(chains, extract), best(chains, wall), best(chains, extract))
	fmt.Printf("| ratio chain / full | %.2f | %.2f | %.2f | %.2f |\n", med(chains, wall)/med(fulls, wall), med(chains, extract)/med(fulls, extract),
		best(chains, wall)/best(fulls, wall), best(chains, extract)/best(fulls, extract))
	walls := func(rs []run) string {
		var out []string
		for _, r := range rs {
			out = append(out, fmt.Sprintf("%.1f", r.wall))
		}
		return strings.Join(out, ", ")
	}
	fmt.Printf("\nruns (wall s, in order): full %s; chain %s\n", walls(fulls), walls(chains))
	return nil
}
