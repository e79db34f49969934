package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/synbak/synbak/bench/internal/benchpg"
)

// pgbackrest is a stanza on a local repository for full backups: zst at
// its default level (3, libzstd's), two processes. It does not check that
// the backup's WAL is archived (archive-check=n; the cluster's
// archive_command discards WAL): pg_basebackup streams the backup's WAL and
// synbak waits for its own receiver to store it, so pgBackRest does a little
// less work here than the others.
type pgbackrest struct {
	bin, conf, repo string
	c               *benchpg.Cluster
}

func newPgbackrest(ctx context.Context, c *benchpg.Cluster, dir string) (*pgbackrest, error) {
	bin, err := exec.LookPath("pgbackrest")
	if err != nil {
		return nil, err
	}
	p := &pgbackrest{bin: bin, conf: filepath.Join(dir, "pgbackrest.conf"), repo: filepath.Join(dir, "repo"), c: c}
	for _, d := range []string{dir, p.repo, dir + "/log", dir + "/lock", dir + "/spool"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if err := c.Chown(d); err != nil {
			return nil, err
		}
	}
	body := fmt.Sprintf(`[global]
repo1-path=%s
repo1-retention-full=1
log-path=%s/log
lock-path=%s/lock
spool-path=%s/spool
process-max=2
compress-type=zst
start-fast=y
archive-check=n
log-level-console=warn
log-level-file=off

[bench]
pg1-path=%s
pg1-port=%d
pg1-socket-path=%s
`, p.repo, dir, dir, dir, c.Data, c.Port, filepath.Join(filepath.Dir(c.Data), "s"))
	if err := os.WriteFile(p.conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	if out, err := p.cmd(ctx, "stanza-create").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgbackrest stanza-create: %v\n%s", err, out)
	}
	return p, nil
}

func (p *pgbackrest) cmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, p.bin, append([]string{"--config=" + p.conf, "--stanza=bench"}, args...)...)
	p.c.AsServer(cmd)
	return cmd
}

// measure takes a full backup and measures it; the stored size is the
// backup's directory (the previous backup is expired first, so that each
// run is a new full backup of the same data).
func (p *pgbackrest) measure(ctx context.Context, cfg config) (result, error) {
	backups := filepath.Join(p.repo, "backup", "bench")
	before, _ := os.ReadDir(backups)
	cmd := p.cmd(ctx, "--type=full", "backup")
	var stderr strings.Builder
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	m, err := benchpg.RunMeasured(cmd)
	if err != nil {
		return result{}, fmt.Errorf("pgbackrest backup: %v\n%s", err, stderr.String())
	}
	r := result{config: cfg.name, wall: m.Wall, cpu: m.CPU, rssMB: m.RSSMB}
	after, err := os.ReadDir(backups)
	if err != nil {
		return result{}, err
	}
	old := map[string]bool{}
	for _, e := range before {
		old[e.Name()] = true
	}
	for _, e := range after {
		if e.IsDir() && !old[e.Name()] && strings.HasSuffix(e.Name(), "F") {
			r.stored, err = benchpg.DirSize(filepath.Join(backups, e.Name()), func(string) bool { return true })
			if err != nil {
				return result{}, err
			}
		}
	}
	if r.stored == 0 {
		return result{}, fmt.Errorf("pgbackrest backup: no new full backup in %s", backups)
	}
	return r, nil
}
