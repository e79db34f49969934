// Command restore measures the recovery phase of `synbak restore --latest`
// against PostgreSQL replaying the same WAL with a plain `cp` from a local
// directory of segments (the floor) and with pgBackRest's asynchronous
// archive-get. See bench/README.md.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/minio/minio-go/v7"

	"github.com/synbak/synbak/bench/internal/benchpg"
	"github.com/synbak/synbak/bench/internal/benchs3"
)

type options struct {
	walGB   float64
	runs    int
	data    string
	configs []string
	synbak  string
	pgBin   string
	keep    bool
	jsonOut string
}

func main() {
	var o options
	var configs string
	flag.Float64Var(&o.walGB, "wal-gb", 2, "GiB of WAL written after the base backups, to replay")
	flag.IntVar(&o.runs, "runs", 3, "restore runs per configuration (alternating order); medians are reported")
	flag.StringVar(&o.data, "data", "mixed", "pgbench, synapse or mixed (half each)")
	flag.StringVar(&configs, "configs", "cp,pgbackrest,synbak-local-zstd,synbak-local-s2,synbak-s3-zstd,synbak-s3-s2", "configurations; cp (the floor) must be one of them")
	flag.StringVar(&o.synbak, "synbak", "", "the synbak binary (default: build ./cmd/synbak)")
	flag.StringVar(&o.pgBin, "pg-bin", "/usr/lib/postgresql/15/bin", "PostgreSQL binaries")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.StringVar(&o.jsonOut, "json", "", "write every run and the summary as JSON to this file")
	chain := flag.Bool("chain", false, "instead: restore from an incremental chain against a full backup (PostgreSQL 17+; see chain.go)")
	chainGB := flag.Float64("chain-gb", 2, "-chain: GiB of Synapse-like data")
	chainChanged := flag.Float64("chain-changed", 0.05, "-chain: share of the pages changed between the full backup and the incremental")
	chainPGBin := flag.String("chain-pg-bin", "/opt/synbak-pg/17/bin", "-chain: PostgreSQL 17+ binaries")
	flag.Parse()
	if *chain {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := runChain(ctx, chainOptions{gb: *chainGB, changed: *chainChanged, runs: o.runs, synbak: o.synbak, pgBin: *chainPGBin, keep: o.keep}); err != nil {
			fmt.Fprintln(os.Stderr, "restore bench -chain:", err)
			os.Exit(1)
		}
		return
	}
	o.configs = strings.Split(configs, ",")
	if !slices.Contains(o.configs, "cp") {
		fmt.Fprintln(os.Stderr, "-configs must include cp (the floor)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "restore bench:", err)
		os.Exit(1)
	}
}

// bench is the state shared by the phases.
type bench struct {
	o       options
	b       *benchpg.Bench
	pg      *pgUser
	archive string // plain segments (the floor's source)
	floor   string // pg_basebackup -Fp of the source, before the load
	pgbr    *pgbackrest
	gw      *benchs3.Server
	repos   map[string]*synbakRepo
	walMB   float64 // WAL written after the base backups
	segment string  // the last segment of the load
	endLSN  int64   // pg_switch_wal() after the load, in bytes
	gen     genResult
}

type synbakRepo struct {
	name   string
	env    []string // repository settings
	local  string   // the repository directory (local ones)
	bucket string
	prefix string
	slot   string
}

func run(ctx context.Context, o options) error {
	pg, err := lookupPostgres()
	if err != nil {
		return err
	}
	settings := "max_wal_size = 64GB\nmin_wal_size = 1GB\narchive_mode = on\narchive_command = ''\nfull_page_writes = on\n"
	b, err := benchpg.Setup(ctx, "restorebench-", o.synbak, o.pgBin, settings, o.keep)
	if err != nil {
		return err
	}
	bn := &bench{o: o, b: b, pg: pg, repos: map[string]*synbakRepo{}}
	defer func() {
		bn.gw.Stop()
		b.Close(o.keep)
		if o.keep {
			logf("work directory kept: %s", b.Work)
		}
	}()
	logf("work directory %s, synbak %s", b.Work, b.Synbak)
	if err := bn.prepare(ctx); err != nil {
		return err
	}
	results, err := bn.measure(ctx)
	if err != nil {
		return err
	}
	return bn.report(results)
}

// prepare takes the base backups, writes the WAL and archives it
// everywhere.
func (bn *bench) prepare(ctx context.Context) error {
	b, o := bn.b, bn.o
	c := b.Cluster
	bn.archive = filepath.Join(b.Work, "archive")
	if err := bn.pg.mkdir(bn.archive); err != nil {
		return err
	}
	archiveCmd := "cp %p " + bn.archive + "/%f"
	if slices.Contains(o.configs, "pgbackrest") {
		pb, err := newPgbackrest(ctx, bn.pg, filepath.Join(b.Work, "pgbackrest"), c)
		if err != nil {
			return err
		}
		bn.pgbr = pb
		archiveCmd += " && " + pb.cmdline("archive-push %p")
	}
	if _, err := b.Conn.Exec(ctx, "ALTER SYSTEM SET archive_command = '"+strings.ReplaceAll(archiveCmd, "'", "''")+"'"); err != nil {
		return err
	}
	if _, err := b.Conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return err
	}
	if bn.pgbr != nil {
		if err := bn.pgbr.run(ctx, "stanza-create"); err != nil {
			return err
		}
	}

	// Repositories and their slots (so that every receiver gets the same WAL).
	for _, name := range o.configs {
		if !strings.HasPrefix(name, "synbak-") {
			continue
		}
		parts := strings.Split(name, "-") // synbak-local-zstd
		if len(parts) != 3 {
			return fmt.Errorf("configuration %q: want synbak-local|s3-zstd|s2|none", name)
		}
		r := &synbakRepo{name: name, slot: "bench_" + strings.ReplaceAll(name, "-", "_")}
		switch parts[1] {
		case "local":
			r.local = filepath.Join(b.Work, "repo-"+name)
			r.env = []string{"SYNBAK_REPOSITORY_PATH=" + r.local}
		case "s3":
			if bn.gw == nil {
				gw, err := benchs3.Start(ctx, filepath.Join(b.Work, "s3"))
				if err != nil {
					return err
				}
				bn.gw = gw
			}
			r.bucket, r.prefix = strings.ReplaceAll(name, "synbak-s3-", "bench-"), "homeserver"
			if err := bn.gw.MakeBucket(ctx, r.bucket); err != nil {
				return err
			}
			r.env = bn.gw.SynbakEnv(r.bucket, r.prefix)
		default:
			return fmt.Errorf("configuration %q: repository %q is local or s3", name, parts[1])
		}
		r.env = append(r.env, "SYNBAK_REPOSITORY_COMPRESSION="+parts[2])
		if _, err := b.Conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", r.slot); err != nil {
			return fmt.Errorf("create slot %s: %w", r.slot, err)
		}
		bn.repos[name] = r
	}

	// Base backups, all before the load.
	for _, name := range o.configs {
		r := bn.repos[name]
		if r == nil {
			continue
		}
		logf("%s: synbak backup", name)
		cmd := exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "backup")
		cmd.Env = bn.synbakEnv(r)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: synbak backup: %w\n%s", name, err, tail(out, 3000))
		}
	}
	bn.floor = filepath.Join(b.Work, "floor-base")
	if err := bn.pg.mkdir(bn.floor); err != nil {
		return err
	}
	logf("cp: pg_basebackup")
	if err := bn.pg.run(ctx, filepath.Join(o.pgBin, "pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-D", bn.floor, "-Fp", "-X", "fetch", "-c", "fast"); err != nil {
		return err
	}
	if bn.pgbr != nil {
		logf("pgbackrest: backup --type=full")
		if err := bn.pgbr.run(ctx, "--type=full", "backup"); err != nil {
			return err
		}
	}

	// The load.
	start, err := walLSN(ctx, b.Conn, "pg_current_wal_lsn()")
	if err != nil {
		return err
	}
	logf("writing %.2f GiB of WAL (%s)", o.walGB, o.data)
	if bn.gen, err = generate(ctx, c, b.Conn, o.data, int64(o.walGB*(1<<30)), 0); err != nil {
		return err
	}
	end, seg, err := benchpg.SwitchWAL(ctx, b.Conn)
	if err != nil {
		return err
	}
	bn.walMB, bn.segment, bn.endLSN = float64(end-start)/1e6, seg, end
	logf("WAL after the base backups: %.0f MB, last segment %s", bn.walMB, seg)

	logf("waiting for the archiver to reach %s", seg)
	if err := poll(ctx, 30*time.Minute, func() (bool, error) {
		var last string
		var failed int64
		if err := b.Conn.QueryRow(ctx, "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver").Scan(&last, &failed); err != nil {
			return false, err
		}
		if failed > 0 {
			return false, fmt.Errorf("archive_command failed %d times; see %s", failed, filepath.Join(b.Work, "pg", "postgres.log"))
		}
		return last >= seg, nil
	}); err != nil {
		return err
	}

	// synbak's WAL: each receiver catches up from its slot.
	for _, name := range o.configs {
		r := bn.repos[name]
		if r == nil {
			continue
		}
		logf("%s: synbak wal stream until %s is stored", name, seg)
		cmd := exec.CommandContext(ctx, b.Synbak, "-c", "/dev/null", "wal", "stream")
		cmd.Env = bn.synbakEnv(r)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return err
		}
		err := poll(ctx, 30*time.Minute, func() (bool, error) { return bn.stored(ctx, r, seg) })
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", name, err, tail(out.Bytes(), 3000))
		}
	}
	// The source is no longer needed: its memory and CPU are the restores'.
	b.Conn.Close(ctx)
	b.Conn = nil
	c.Stop()
	return nil
}

// stored reports whether segment is complete in r.
func (bn *bench) stored(ctx context.Context, r *synbakRepo, seg string) (bool, error) {
	if r.local != "" {
		_, err := os.Stat(filepath.Join(r.local, "wal", seg[:8], seg))
		return err == nil, nil
	}
	mc, err := bn.gw.Client()
	if err != nil {
		return false, err
	}
	_, err = mc.StatObject(ctx, r.bucket, r.prefix+"/wal/"+seg[:8]+"/"+seg, minio.StatObjectOptions{})
	return err == nil, nil
}

func (bn *bench) synbakEnv(r *synbakRepo) []string {
	env := benchpg.CleanEnv(r.env...)
	return append(env,
		"SYNBAK_POSTGRES_DSN="+bn.b.Cluster.DSN(), "SYNBAK_POSTGRES_SLOT="+r.slot,
		"SYNBAK_STATE_DIR="+filepath.Join(bn.b.Work, "state-"+r.name), "SYNBAK_LOG_LEVEL=warn")
}

// result is one restore run.
type result struct {
	Config string `json:"config"`
	Round  int    `json:"round"`
	// Replay is the recovery phase in seconds: from starting the server to
	// its promotion (for synbak, its report's "recovery" phase).
	Replay float64 `json:"replay_s"`
	// Wall is the whole command for synbak (plan, extract, recovery,
	// fix-ups, stop); the recovery phase for the others.
	Wall float64 `json:"wall_s"`
	// CPU: the restore process alone (synbak) and the whole tree (the
	// server, restore_command's processes, pgBackRest's async process).
	ProcCPU float64 `json:"restore_process_cpu_s"`
	TreeCPU float64 `json:"tree_cpu_s"`
	// Peak RSS of the restore process (synbak; VmHWM) and the highest sum
	// of PSS over the tree (shared_buffers shared out, not counted once per
	// server process), sampled every 50 ms.
	ProcRSSMB float64 `json:"restore_process_peak_rss_mb"`
	TreeRSSMB float64 `json:"tree_peak_pss_mb"`
	// Other is the machine's busy CPU during the run minus the tree's.
	Other float64 `json:"other_cpu_s"`
}

func (bn *bench) measure(ctx context.Context) ([]result, error) {
	var out []result
	for round := range bn.o.runs {
		order := slices.Clone(bn.o.configs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			_ = exec.Command("sync").Run()
			dir := filepath.Join(bn.b.Work, fmt.Sprintf("run-%d-%s", round, name))
			var res result
			var err error
			busy := benchpg.BusyCPU()
			switch {
			case name == "cp":
				res, err = bn.runCP(ctx, dir)
			case name == "pgbackrest":
				res, err = bn.runPgbackrest(ctx, dir)
			default:
				res, err = bn.runSynbak(ctx, bn.repos[name], dir)
			}
			if err != nil {
				return out, fmt.Errorf("round %d, %s: %w", round+1, name, err)
			}
			res.Config, res.Round = name, round+1
			res.Other = max(0, benchpg.BusyCPU()-busy-res.TreeCPU)
			logf("round %d %-18s replay %.2fs (%.0f MB/s), wall %.2fs, tree CPU %.2fs, restore process CPU %.2fs, peak RSS %.1f MB (tree PSS %.1f MB), other CPU %.1fs",
				res.Round, name, res.Replay, bn.walMB/res.Replay, res.Wall, res.TreeCPU, res.ProcCPU, res.ProcRSSMB, res.TreeRSSMB, res.Other)
			out = append(out, res)
			if !bn.o.keep {
				os.RemoveAll(dir)
			}
		}
	}
	return out, nil
}

// runCP restores the floor: a copy of the plain base backup, replaying
// with restore_command = 'cp ARCHIVE/%f %p'.
func (bn *bench) runCP(ctx context.Context, dir string) (result, error) {
	if out, err := exec.CommandContext(ctx, "cp", "-a", bn.floor, dir).CombinedOutput(); err != nil {
		return result{}, fmt.Errorf("copy the base backup: %w\n%s", err, out)
	}
	return bn.replay(ctx, dir, "restore_command = 'cp "+bn.archive+"/%f %p'\n", "")
}

// runPgbackrest restores pgBackRest's backup (untimed) and replays with the
// restore_command it writes (archive-get, asynchronous).
func (bn *bench) runPgbackrest(ctx context.Context, dir string) (result, error) {
	if err := bn.pg.mkdir(dir); err != nil {
		return result{}, err
	}
	if err := bn.pgbr.run(ctx, "--pg1-path="+dir, "restore"); err != nil {
		return result{}, err
	}
	return bn.replay(ctx, dir, "", bn.pgbr.conf)
}

// replay starts a server on dir (a base backup with recovery settings),
// waits for its promotion and stops it; it measures the server's tree.
// extraMatch names processes outside the tree to count as well (pgBackRest's
// async archive-get detaches from it).
func (bn *bench) replay(ctx context.Context, dir, restoreCommand, extraMatch string) (result, error) {
	sock := dir + ".s"
	if err := bn.pg.mkdir(sock); err != nil {
		return result{}, err
	}
	defer os.RemoveAll(sock)
	port, err := freePort()
	if err != nil {
		return result{}, err
	}
	settings := restoreCommand + fmt.Sprintf("archive_mode = off\nport = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nhot_standby = on\n", port, sock)
	if err := appendFile(filepath.Join(dir, "postgresql.auto.conf"), settings); err != nil {
		return result{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "recovery.signal"), nil, 0o600); err != nil {
		return result{}, err
	}
	if err := bn.pg.chownTree(dir); err != nil {
		return result{}, err
	}
	logPath := dir + ".log"
	logf2, err := os.Create(logPath)
	if err != nil {
		return result{}, err
	}
	defer logf2.Close()
	cmd := exec.Command(filepath.Join(bn.o.pgBin, "postgres"), "-D", dir)
	bn.pg.as(cmd)
	cmd.Stdout, cmd.Stderr = logf2, logf2
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	smp := startSampler(cmd.Process.Pid, extraMatch)
	err = poll(ctx, 2*time.Hour, func() (bool, error) {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			return false, fmt.Errorf("postgres exited during recovery:\n%s", tail(b, 3000))
		default:
		}
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("database system is ready to accept connections")), nil
	})
	replay := time.Since(start).Seconds()
	smp.stop()
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
	}
	if err != nil {
		return result{}, err
	}
	if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("FATAL")) || !bytes.Contains(b, []byte("archive recovery complete")) {
		return result{}, fmt.Errorf("recovery did not complete cleanly:\n%s", tail(b, 3000))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	res := result{Replay: replay, Wall: replay, TreeCPU: tv(ru.Utime) + tv(ru.Stime) + smp.extraCPU(), TreeRSSMB: smp.treeRSS()}
	os.Remove(logPath)
	return res, nil
}

// runSynbak runs `synbak restore --latest` and reads its report.
func (bn *bench) runSynbak(ctx context.Context, r *synbakRepo, dir string) (result, error) {
	parent := dir + ".p"
	if err := bn.pg.mkdir(parent); err != nil {
		return result{}, err
	}
	defer os.RemoveAll(parent)
	pgdata := filepath.Join(parent, "data")
	cmd := exec.CommandContext(ctx, bn.b.Synbak, "-c", "/dev/null", "restore", "--latest", "--pgdata", pgdata, "--pg-bindir", bn.o.pgBin, "--json")
	cmd.Env = append(benchpg.CleanEnv(r.env...), "SYNBAK_STATE_DIR="+filepath.Join(parent, "state"), "SYNBAK_LOG_LEVEL=warn")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	smp := startSampler(cmd.Process.Pid, "")
	err := cmd.Wait()
	wall := time.Since(start).Seconds()
	smp.stop()
	if err != nil {
		return result{}, fmt.Errorf("synbak restore: %w\n%s\n%s", err, tail(stdout.Bytes(), 2000), tail(stderr.Bytes(), 3000))
	}
	var rep struct {
		EndOfArchive bool   `json:"end_of_archive"`
		RecoveryLSN  string `json:"recovery_lsn"`
		Phases       []struct {
			Name    string  `json:"name"`
			Seconds float64 `json:"seconds"`
		} `json:"phases"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return result{}, fmt.Errorf("synbak restore --json: %w\n%s", err, tail(stdout.Bytes(), 2000))
	}
	res := result{Wall: wall, ProcCPU: smp.rootCPU(), ProcRSSMB: smp.rootHWM(), TreeRSSMB: smp.treeRSS()}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	res.TreeCPU = tv(ru.Utime) + tv(ru.Stime)
	for _, p := range rep.Phases {
		if p.Name == "recovery" {
			res.Replay = p.Seconds
		}
	}
	// The restore must have replayed into the load's last segment.
	reached, perr := pglogrepl.ParseLSN(rep.RecoveryLSN)
	if perr != nil || int64(reached) < bn.endLSN-16<<20 {
		return result{}, fmt.Errorf("synbak restore reached %s, short of the load's end %s", rep.RecoveryLSN, pglogrepl.LSN(bn.endLSN))
	}
	if res.Replay == 0 {
		return result{}, fmt.Errorf("synbak restore's report has no recovery phase:\n%s", stdout.String())
	}
	return res, nil
}

func (bn *bench) report(results []result) error {
	type summary struct {
		Config    string  `json:"config"`
		Replay    float64 `json:"replay_s"`
		Min, Max  float64 `json:"-"`
		MBs       float64 `json:"wal_mb_per_s"`
		Ratio     float64 `json:"replay_vs_cp"`
		Wall      float64 `json:"wall_s"`
		ProcCPU   float64 `json:"restore_process_cpu_s"`
		TreeCPU   float64 `json:"tree_cpu_s"`
		ProcRSSMB float64 `json:"restore_process_peak_rss_mb"`
		TreeRSSMB float64 `json:"tree_peak_pss_mb"`
		Other     float64 `json:"other_cpu_s"`
	}
	med := func(name string, f func(result) float64) (m, lo, hi float64) {
		var v []float64
		for _, r := range results {
			if r.Config == name {
				v = append(v, f(r))
			}
		}
		if len(v) == 0 {
			return 0, 0, 0
		}
		return benchpg.Median(v), slices.Min(v), slices.Max(v)
	}
	floor, _, _ := med("cp", func(r result) float64 { return r.Replay })
	var sums []summary
	fmt.Printf("\nWAL replayed: %.0f MB (%s data; pgbench %d MB, Synapse-like rows %d MB), %d run(s) per configuration\n\n",
		bn.walMB, bn.o.data, bn.gen.PgbenchBytes>>20, bn.gen.SynapseBytes>>20, bn.o.runs)
	fmt.Println("| config | replay s (min–max) | WAL MB/s | replay / cp | whole command s | restore process CPU s | tree CPU s | restore process peak RSS MB | tree peak PSS MB | other CPU s |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, name := range bn.o.configs {
		s := summary{Config: name}
		s.Replay, s.Min, s.Max = med(name, func(r result) float64 { return r.Replay })
		s.MBs = bn.walMB / s.Replay
		s.Ratio = s.Replay / floor
		s.Wall, _, _ = med(name, func(r result) float64 { return r.Wall })
		s.ProcCPU, _, _ = med(name, func(r result) float64 { return r.ProcCPU })
		s.TreeCPU, _, _ = med(name, func(r result) float64 { return r.TreeCPU })
		s.ProcRSSMB, _, _ = med(name, func(r result) float64 { return r.ProcRSSMB })
		s.TreeRSSMB, _, _ = med(name, func(r result) float64 { return r.TreeRSSMB })
		s.Other, _, _ = med(name, func(r result) float64 { return r.Other })
		sums = append(sums, s)
		dash := func(v float64) string {
			if v == 0 {
				return "–"
			}
			return fmt.Sprintf("%.1f", v)
		}
		fmt.Printf("| %s | %.2f (%.2f–%.2f) | %.0f | %.2f | %.2f | %s | %.2f | %s | %.1f | %.1f |\n",
			name, s.Replay, s.Min, s.Max, s.MBs, s.Ratio, s.Wall, dash(s.ProcCPU), s.TreeCPU, dash(s.ProcRSSMB), s.TreeRSSMB, s.Other)
	}
	fmt.Println("\nGoal: replay / cp ≤ 1.05 from a local repository, ≤ 1.2 from S3.")
	if bn.o.jsonOut == "" {
		return nil
	}
	b, err := json.MarshalIndent(map[string]any{"wal_mb": bn.walMB, "generated": bn.gen, "runs": results, "summary": sums}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(bn.o.jsonOut, b, 0o644)
}

// pgUser runs things as the server's OS user (postgres when we are root).
type pgUser struct {
	uid, gid int
	home     string
	cred     *syscall.Credential
}

func lookupPostgres() (*pgUser, error) {
	if os.Geteuid() != 0 {
		return &pgUser{uid: os.Geteuid(), gid: os.Getegid(), home: os.Getenv("HOME")}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL runs as the postgres OS user, which does not exist: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &pgUser{uid: uid, gid: gid, home: u.HomeDir, cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

func (u *pgUser) as(cmd *exec.Cmd) {
	env := benchpg.CleanEnv()
	if u.home != "" {
		env = append(env, "HOME="+u.home)
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred, Setpgid: true}
}

func (u *pgUser) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	u.as(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out, 3000))
	}
	return nil
}

func (u *pgUser) mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chown(dir, u.uid, u.gid)
}

func (u *pgUser) chownTree(dir string) error {
	if u.cred == nil {
		return nil
	}
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.uid, u.gid)
	})
}

// pgbackrest is a stanza on a local repository, with asynchronous archiving
// both ways.
type pgbackrest struct {
	bin  string
	conf string
	pg   *pgUser
}

func newPgbackrest(ctx context.Context, pg *pgUser, dir string, c *benchpg.Cluster) (*pgbackrest, error) {
	bin, err := exec.LookPath("pgbackrest")
	if err != nil {
		return nil, fmt.Errorf("pgbackrest not installed (apt-get install -y pgbackrest, or leave it out of -configs): %w", err)
	}
	for _, d := range []string{dir, dir + "/repo", dir + "/log", dir + "/lock", dir + "/spool"} {
		if err := pg.mkdir(d); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "pgbackrest.conf")
	body := fmt.Sprintf(`[global]
repo1-path=%s/repo
log-path=%s/log
lock-path=%s/lock
spool-path=%s/spool
archive-async=y
archive-get-queue-max=256MiB
process-max=2
compress-type=zst
compress-level=1
start-fast=y
log-level-console=warn
log-level-file=warn

[bench]
pg1-path=%s
pg1-port=%d
pg1-socket-path=%s
`, dir, dir, dir, dir, c.Data, c.Port, filepath.Join(filepath.Dir(c.Data), "s"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	return &pgbackrest{bin: bin, conf: conf, pg: pg}, nil
}

// cmdline is a shell command line running pgbackrest with args (for
// archive_command).
func (p *pgbackrest) cmdline(args string) string {
	return p.bin + " --config=" + p.conf + " --stanza=bench " + args
}

func (p *pgbackrest) run(ctx context.Context, args ...string) error {
	return p.pg.run(ctx, p.bin, append([]string{"--config=" + p.conf, "--stanza=bench"}, args...)...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func appendFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// poll calls cond every 20 ms until it is true, fails, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
