package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/bench/internal/benchpg"
)

// incrementalOptions configure the -incremental runs.
type incrementalOptions struct {
	synbak    string  // synbak binary ("" builds one)
	pgBin     string  // PostgreSQL 17+ server binaries
	clientBin string  // pgbench
	gb        float64 // database size
	changePct int     // percentage of the tables' blocks changed
	keep      bool
}

// incResult is one measured `synbak backup` of the incremental runs.
type incResult struct {
	name      string
	id, kind  string
	wall, cpu float64
	serverCPU float64 // the postmaster's and all its children's CPU seconds
	sent      int64   // bytes the server sent (archives and manifest)
	stored    int64   // bytes stored under backups/<ID>/
}

// runIncremental measures, on a PostgreSQL 17+ cluster with summarize_wal
// on: a full backup; then, after changing about changePct % of the blocks
// of every table (pgbench_accounts and the Synapse-like event_json), an
// incremental backup on top of it and a full backup of the same data.
func runIncremental(ctx context.Context, o incrementalOptions) error {
	b, err := benchpg.Setup(ctx, "bbinc-", o.synbak, o.pgBin, clusterSettings+"summarize_wal = on\n", o.keep)
	if err != nil {
		return err
	}
	defer b.Close(o.keep)
	c, conn := b.Cluster, b.Conn
	c.ClientBin = o.clientBin
	var version string
	if err := conn.QueryRow(ctx, "show server_version").Scan(&version); err != nil {
		return err
	}
	dbMB, err := benchpg.Fill(ctx, c, conn, o.gb, 2.0/3)
	if err != nil {
		return err
	}
	// Room for HOT updates in pgbench_accounts (pgbench -i fills its pages
	// completely): an update then changes its own block only.
	for _, q := range []string{"alter table pgbench_accounts set (fillfactor = 90)", "vacuum full pgbench_accounts", "vacuum analyze"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	if err := conn.QueryRow(ctx, "select pg_database_size('postgres') / 1e6").Scan(&dbMB); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "PostgreSQL %s, database: %.0f MB\n", version, dbMB)

	out := filepath.Join(b.Work, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		return err
	}
	env := benchpg.CleanEnv(
		"SYNBAK_POSTGRES_DSN="+c.DSN(),
		"SYNBAK_REPOSITORY_PATH="+filepath.Join(out, "repo"),
		"SYNBAK_STATE_DIR="+filepath.Join(out, "state"),
		"SYNBAK_LOG_LEVEL=warn",
	)
	backup := func(name string, args ...string) (incResult, error) {
		if _, err := conn.Exec(ctx, "checkpoint"); err != nil {
			return incResult{}, err
		}
		_ = exec.Command("sync").Run()
		cpu0, err := serverCPU(c.Data)
		if err != nil {
			return incResult{}, err
		}
		cmd := exec.CommandContext(ctx, b.Synbak, append([]string{"-c", "/dev/null", "backup"}, args...)...)
		cmd.Env = env
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		m, err := benchpg.RunMeasured(cmd)
		if err != nil {
			return incResult{}, fmt.Errorf("%s: %v\n%s", name, err, stderr.String())
		}
		cpu1, err := serverCPU(c.Data)
		if err != nil {
			return incResult{}, err
		}
		r := incResult{name: name, id: strings.TrimSpace(stdout.String()), wall: m.Wall, cpu: m.CPU, serverCPU: cpu1 - cpu0}
		if strings.Contains(stderr.String(), "not incremental") {
			fmt.Fprintf(os.Stderr, "%s", stderr.String())
		}
		if r.stored, err = benchpg.DirSize(filepath.Join(out, "repo", "backups", r.id), nil); err != nil {
			return r, err
		}
		if r.kind, r.sent, err = listed(ctx, b.Synbak, env, r.id); err != nil {
			return r, err
		}
		fmt.Fprintf(os.Stderr, "%s: %s %s, wall %.2f s, cpu %.2f s, server cpu %.2f s, sent %d MiB, stored %d MiB\n",
			name, r.kind, r.id, r.wall, r.cpu, r.serverCPU, r.sent>>20, r.stored>>20)
		return r, nil
	}

	full, err := backup("full", "--full")
	if err != nil {
		return err
	}
	var fullStart string
	if err := conn.QueryRow(ctx, "select redo_lsn::text from pg_control_checkpoint()").Scan(&fullStart); err != nil {
		return err
	}
	changed, total, err := change(ctx, conn, o.changePct)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "updated a row in %d of %d table blocks (%.1f %%)\n", changed, total, 100*float64(changed)/float64(total))
	inc, err := backup("incremental", "--incremental")
	if err != nil {
		return err
	}
	// What the WAL summaries say changed between the two backups, against
	// the database's blocks.
	var summarized, dbBlocks int64
	if err := conn.QueryRow(ctx, `
select count(*) from (
  select distinct c.relfilenode, c.reltablespace, c.reldatabase, c.relforknumber, c.relblocknumber
  from pg_available_wal_summaries() s, pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c
  where s.end_lsn > $1::pg_lsn and not c.is_limit_block) x`, fullStart).Scan(&summarized); err != nil {
		return fmt.Errorf("WAL summaries: %w", err)
	}
	if err := conn.QueryRow(ctx, "select pg_database_size('postgres') / current_setting('block_size')::int").Scan(&dbBlocks); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "WAL summaries since the full backup: %d blocks changed of the database's %d (%.1f %%)\n", summarized, dbBlocks, 100*float64(summarized)/float64(dbBlocks))
	if inc.kind != "incremental" {
		return fmt.Errorf("the incremental run took a %s backup", inc.kind)
	}
	full2, err := backup("full, same data", "--full")
	if err != nil {
		return err
	}

	fmt.Printf("PostgreSQL %s, database %.0f MB; between the first full backup and the incremental a row was updated in %.1f %% of the table blocks; the WAL summaries name %.1f %% of the database's blocks\n\n",
		version, dbMB, 100*float64(changed)/float64(total), 100*float64(summarized)/float64(dbBlocks))
	fmt.Println("| backup | wall s | synbak CPU s | server CPU s | sent MiB | stored MiB | wall / full | server CPU / full | stored / full |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range []incResult{full, inc, full2} {
		fmt.Printf("| %s | %.2f | %.2f | %.2f | %.1f | %.1f | %.3f | %.3f | %.3f |\n", r.name, r.wall, r.cpu, r.serverCPU,
			float64(r.sent)/(1<<20), float64(r.stored)/(1<<20), r.wall/full2.wall, r.serverCPU/full2.serverCPU, float64(r.stored)/float64(full2.stored))
	}
	return nil
}

// change updates one row in about pct % of the blocks of pgbench_accounts
// and event_json (the first row of every (100/pct)-th block) and returns how
// many blocks that was and how many the two tables have.
func change(ctx context.Context, conn *pgx.Conn, pct int) (changed, total int64, err error) {
	if pct <= 0 || pct > 100 {
		return 0, 0, errors.New("-change-pct must be 1..100")
	}
	every := 100 / pct
	for _, t := range []struct{ table, set string }{
		{"pgbench_accounts", "abalance = abalance + 1"},
		{"event_json", "room_id = room_id || ''"},
	} {
		var blocks int64
		if err := conn.QueryRow(ctx, "select pg_relation_size($1::regclass) / current_setting('block_size')::int", t.table).Scan(&blocks); err != nil {
			return 0, 0, err
		}
		total += blocks
		q := fmt.Sprintf("update %s set %s where ctid = any (array(select format('(%%s,1)', b)::tid from generate_series(0, %d, %d) b))", t.table, t.set, blocks-1, every)
		if _, err := conn.Exec(ctx, q); err != nil {
			return 0, 0, fmt.Errorf("%s: %w", q, err)
		}
		changed += (blocks + int64(every) - 1) / int64(every)
	}
	return changed, total, nil
}

// listed returns the kind and the size sent of backup id, as `synbak list
// --json` reports them.
func listed(ctx context.Context, synbak string, env []string, id string) (string, int64, error) {
	cmd := exec.CommandContext(ctx, synbak, "-c", "/dev/null", "list", "--json")
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return "", 0, fmt.Errorf("list --json: %w", err)
	}
	var l struct {
		Backups []struct {
			ID   string `json:"id"`
			Kind string `json:"kind"`
			Size int64  `json:"size"`
		} `json:"backups"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		return "", 0, err
	}
	for _, b := range l.Backups {
		if b.ID == id {
			return b.Kind, b.Size, nil
		}
	}
	return "", 0, fmt.Errorf("backup %q not listed", id)
}

// serverCPU returns the CPU seconds of the postmaster of dataDir and all
// its processes: its own, its reaped children's (cutime, cstime: backends
// that have exited, such as a base backup's walsender) and its live
// children's.
func serverCPU(dataDir string) (float64, error) {
	pidText, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(pidText), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	own, err := statTimes(pm)
	if err != nil {
		return 0, err
	}
	sum := own.utime + own.stime + own.cutime + own.cstime
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := statTimes(pid)
		if err != nil || st.ppid != pm {
			continue
		}
		sum += st.utime + st.stime
	}
	return sum / 100, nil
}

type procTimes struct {
	ppid                         int
	utime, stime, cutime, cstime float64
}

// statTimes reads /proc/PID/stat: the parent and the CPU times in clock
// ticks (1/100 s).
func statTimes(pid int) (procTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procTimes{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procTimes{}, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return procTimes{}, errors.New("unexpected /proc stat format")
	}
	var t procTimes
	t.ppid, _ = strconv.Atoi(f[1])
	vals := make([]float64, 4)
	for k := range vals {
		v, err := strconv.ParseFloat(f[11+k], 64)
		if err != nil {
			return procTimes{}, errors.New("unexpected /proc stat format")
		}
		vals[k] = v
	}
	t.utime, t.stime, t.cutime, t.cstime = vals[0], vals[1], vals[2], vals[3]
	return t, nil
}
