package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/bench/internal/benchpg"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/restore"
)

// extractOnly is the child process of the extract phase: it extracts the
// newest base backup of the local repository repoDir into dest with
// restore.Extract (what `synbak restore` does before it starts the server),
// with workers decoding goroutines.
func extractOnly(repoDir, dest string, workers int) error {
	ctx := context.Background()
	b, err := local.New(repoDir)
	if err != nil {
		return err
	}
	r, err := repo.Open(ctx, b, repo.Options{})
	if err != nil {
		return err
	}
	bs, err := basebackup.List(ctx, r)
	if err != nil {
		return err
	}
	if len(bs) == 0 {
		return fmt.Errorf("no base backup in %s", repoDir)
	}
	return restore.Extract(ctx, r, bs[len(bs)-1], dest, restore.ExtractOptions{ReadWorkers: workers},
		slog.New(slog.DiscardHandler))
}

// extractCase is one configuration of the extract phase.
type extractCase struct {
	name    string
	repo    string // synbak repository; "" for pgBackRest
	workers int
}

// extractPhase takes one base backup with each synbak binary into kept
// repositories, then alternates extracting them (new objects with every
// core and with one decoding goroutine, the base build's objects) with
// pgBackRest's restore of its newest full backup into an empty directory.
func extractPhase(ctx context.Context, c *benchpg.Cluster, synbak, synbakBase, work string, pgbr *pgbackrest, runs int, size string, dbMB float64) ([]result, error) {
	dir := filepath.Join(work, "extract")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	take := func(bin, repoDir string) error {
		cmd := exec.CommandContext(ctx, bin, "-c", "/dev/null", "backup")
		cmd.Env = benchpg.CleanEnv("SYNBAK_POSTGRES_DSN="+c.DSN(), "SYNBAK_STATE_DIR="+repoDir+".state",
			"SYNBAK_LOG_LEVEL=warn", "SYNBAK_REPOSITORY_PATH="+repoDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("synbak backup: %v\n%s", err, out)
		}
		return nil
	}
	cases := []extractCase{{name: "synbak extract", repo: filepath.Join(dir, "repo-new")},
		{name: "synbak extract (1 decoder)", repo: filepath.Join(dir, "repo-new"), workers: 1}}
	if err := take(synbak, cases[0].repo); err != nil {
		return nil, err
	}
	if synbakBase != "" {
		cases = append(cases, extractCase{name: "synbak extract, base build's objects", repo: filepath.Join(dir, "repo-base")})
		if err := take(synbakBase, cases[2].repo); err != nil {
			return nil, err
		}
	}
	if pgbr != nil {
		cases = append(cases, extractCase{name: "pgBackRest restore"})
		if out, err := pgbr.cmd(ctx, "--type=full", "backup").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("pgbackrest backup: %v\n%s", err, out)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var rs []result
	for i := range runs {
		order := slices.Clone(cases)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for j, x := range order {
			// A new directory every run, all removed at the end: deleting
			// the previous run's gigabytes just before a run made ext4
			// skip recently freed inodes (recently_deleted, 14% of one
			// profile) in whichever tool ran next.
			dest := filepath.Join(dir, fmt.Sprintf("dest-%d-%d", i, j))
			if err := os.Mkdir(dest, 0o700); err != nil {
				return nil, err
			}
			if w := benchpg.WaitIOQuiet(2, time.Minute); w > 5*time.Second {
				fmt.Fprintf(os.Stderr, "(waited %.0f s for I/O to settle)\n", w.Seconds())
			}
			var cmd *exec.Cmd
			if x.repo == "" {
				if err := c.Chown(dest); err != nil {
					return nil, err
				}
				cmd = pgbr.cmd(ctx, "--pg1-path="+dest, "restore")
			} else {
				cmd = exec.CommandContext(ctx, self, "-extract-only", "-extract-repo", x.repo, "-extract-dest", dest, "-extract-workers", strconv.Itoa(x.workers))
			}
			var stderr strings.Builder
			cmd.Stderr, cmd.Stdout = &stderr, &stderr
			m, err := benchpg.RunMeasured(cmd)
			if err != nil {
				return nil, fmt.Errorf("%s: %v\n%s", x.name, err, stderr.String())
			}
			stored, err := benchpg.DirSize(dest, func(string) bool { return true })
			if err != nil {
				return nil, err
			}
			r := result{size: size, dbMB: dbMB, config: x.name, wall: m.Wall, cpu: m.CPU, rssMB: m.RSSMB, stored: stored}
			fmt.Fprintf(os.Stderr, "%s: wall %.2f s, cpu %.2f s, rss %.1f MB, extracted %d MiB\n", r.config, r.wall, r.cpu, r.rssMB, r.stored>>20)
			rs = append(rs, r)
		}
	}
	return rs, nil
}
