package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/drill"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/durable"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/retention"
	"github.com/synbak/synbak/wal"
)

func newAgentCommand(st *rootState) *cobra.Command {
	return &cobra.Command{
		Use:   "agent",
		Short: "Run continuously: WAL stream, scheduled base backups, media watcher, config snapshots, HTTP endpoint",
		Long: `agent runs every part of synbak in one process until SIGTERM or SIGINT:

  wal      the WAL receiver (as 'synbak wal stream')
  backups  a base backup at start when the repository has none, then every
           basebackup.interval after the newest one ended
  media    the media watcher over local_content (and local_thumbnails unless
           dynamic_thumbnails), when homeserver.yaml is readable
  config   snapshots of homeserver.yaml, its log config, appservice files,
           the signing key and secret files, and PostgreSQL's own settings
           files outside its data directory, whenever one changes
  probe    asks PostgreSQL for its WAL position and the slot's lag
  dumps    with dump.interval, a logical dump (pg_dump) when the repository
           has none recent, then every dump.interval after the newest ended
  drill    with drill.interval, a restore drill every drill.interval

After each base backup and each dump the retention policy (retention.*) is
applied, as 'synbak prune' would.

A part that fails is logged, counted and run again with backoff; it never
stops the others. On SIGTERM the agent stops taking new work, stores the open
partial WAL segment, sends a last status update to PostgreSQL, stores what
it can of the WAL spool within shutdown_timeout (what is left is fsynced in
the spool and stored at the next start) and exits 0.

http.listen serves / (a status page for people: health, the recovery window
on a time axis, lag, drills, sizes), /metrics (Prometheus), /healthz (200, or
503 with the problems) and /status (JSON, which 'synbak status' reads). With
port 0 a free port is picked and recorded in state_dir/agent.addr.
http.auth_token_file / http.basic_auth_file put them behind a token or a
password. With notify.* set, the agent posts to a Matrix room and/or a
webhook when health turns red and back, a backup, dump or drill fails, or a
drill exceeds notify.rto_bound.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runAgent(cmd.Context(), cfg)
		},
	}
}

// agentAddrFile records the agent's HTTP address for 'synbak status'.
func agentAddrFile(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "agent.addr") }

func runAgent(ctx context.Context, cfg *config.Config) error {
	log := newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	hs, hsErr, src, err := homeserverSource(cfg)
	if err != nil {
		return err
	}
	if hsErr != nil {
		log.Warn("homeserver.yaml unreadable: streaming WAL and taking base backups from postgres.dsn, but no media or config snapshots", "err", hsErr)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir %s: %w", cfg.StateDir, err)
	}
	r, err := openRepo(ctx, cfg, true)
	if err != nil {
		return err
	}
	opts, err := agentOptions(cfg, hs, src, r, log)
	if err != nil {
		return err
	}
	a := agent.New(opts)
	log.Info("agent starting", "repository", r.String(), "postgres", src.Redacted(), "slot", cfg.Postgres.Slot, "shutdown_timeout", cfg.ShutdownTimeout.D())
	err = a.Run(ctx)
	if err == nil {
		log.Info("agent stopped")
	}
	return err
}

// agentOptions builds the agent's parts from the configuration. Each
// part's logger carries component=<its name>, added here and nowhere else.
func agentOptions(cfg *config.Config, hs *synapse.Homeserver, src pgsource.Source, r *repo.Repo, log *slog.Logger) (agent.Options, error) {
	partLog := func(name string) *slog.Logger { return log.With("component", name) }
	facts := homeserverFacts(hs)
	// Retention runs after each backup and each dump; never two at once.
	var pruneMu sync.Mutex
	prune := func(ctx context.Context) string {
		pruneMu.Lock()
		defer pruneMu.Unlock()
		return agentPrune(ctx, cfg, r, partLog("retention"))
	}
	blog := partLog("backups")
	parts := []agent.Part{
		{Name: "wal", Runner: wal.NewReceiver(src, r, walOptions(cfg), partLog("wal"))},
		{Name: "backups", Runner: &agent.BackupSchedule{
			Repo: r, Interval: cfg.Basebackup.Interval.D(), Log: blog,
			Take: func(ctx context.Context) (*basebackup.Backup, error) {
				return takeAgentBackup(ctx, cfg, src, r, facts, blog)
			},
			AfterBackup: func(ctx context.Context, _ *basebackup.Backup) string { return prune(ctx) },
		}},
		{Name: "probe", Runner: &agent.Probe{
			Slot: cfg.Postgres.Slot, Interval: cfg.Health.ProbeInterval.D(),
			Connect: func(ctx context.Context) (*pgconn.PgConn, error) { return src.Connect(ctx, "") },
		}},
	}
	if hs != nil && hs.EnableLocalMediaStorage && cfg.Media.Enabled {
		parts = append(parts, agent.Part{Name: "media", Runner: newAgentMedia(cfg, hs, src, r, partLog("media"))})
	}
	if hs != nil {
		parts = append(parts, agent.Part{Name: "config", Runner: newAgentConfig(cfg, hs, src, r, partLog("config"))})
	}
	if iv := cfg.Drill.Interval.D(); iv > 0 {
		dlog := partLog("drill")
		parts = append(parts, agent.Part{Name: "drill", Runner: &agent.DrillSchedule{Interval: iv, Log: dlog, Drill: func(ctx context.Context) (agent.DrillResult, error) {
			rep, err := drill.Run(ctx, drill.Options{Repo: r, Prefetch: cfg.WAL.PrefetchSegments, ScratchDir: cfg.Drill.ScratchDir, Log: dlog})
			return agent.DrillResult{OK: rep.OK, Problems: rep.Problems, Seconds: rep.RTOSeconds}, err
		}}})
	}
	if iv := cfg.Dump.Interval.D(); iv > 0 {
		dlog := partLog("dumps")
		parts = append(parts, agent.Part{Name: "dumps", Runner: &agent.DumpSchedule{Repo: r, Interval: iv, Log: dlog,
			Take: func(ctx context.Context) (dump.Dump, error) {
				return takeDump(ctx, cfg, hs, r, nil, dlog, mediaWatched(cfg))
			},
			AfterDump: func(ctx context.Context, _ dump.Dump) string { return prune(ctx) },
		}})
	}
	server := ""
	if hs != nil {
		server = hs.ServerName
	}
	reg := prometheus.NewRegistry()
	page, more, err := agentPageParts(cfg, r, server, reg, partLog)
	if err != nil {
		return agent.Options{}, err
	}
	build := currentBuild()
	return agent.Options{
		Log: log, Listen: cfg.HTTP.Listen, Registry: reg, Page: page,
		Parts:           append(parts, more...),
		ShutdownTimeout: cfg.ShutdownTimeout.D(),
		BuildInfo:       map[string]string{"version": build.Version, "commit": build.Commit},
		RetentionWindow: cfg.Retention.Window.D(),
		StateDir:        cfg.StateDir,
		// Record the address (port 0 picks one) for `synbak status`.
		OnListen: func(addr string) {
			if err := writeFileAtomic(agentAddrFile(cfg), []byte(addr+"\n")); err != nil {
				log.Warn("cannot record the agent's address for 'synbak status'", "file", agentAddrFile(cfg), "err", err)
			}
		},
		Health: agent.HealthOptions{
			BackupInterval: cfg.Basebackup.Interval.D(), Disconnected: cfg.Health.Disconnected.D(),
			SlotLag: int64(cfg.Health.SlotLagMB) << 20, MediaBacklog: cfg.Health.MediaBacklog.D(),
			WALBacklog: cfg.Health.WALBacklog.D(),
		},
	}, nil
}

// homeserverFacts are recorded with every base backup, for a restore on a
// new machine.
func homeserverFacts(hs *synapse.Homeserver) map[string]string {
	facts := map[string]string{}
	if hs == nil {
		return facts
	}
	facts["server_name"] = hs.ServerName
	var names []string
	for _, d := range hs.Databases {
		names = append(names, d.Params["dbname"])
	}
	facts["databases"] = strings.Join(names, ",")
	facts["main_database"] = hs.MainDatabase().Params["dbname"]
	return facts
}

// agentPrune applies the retention policy after a base backup or a dump. A
// failure is logged and reported, never fatal: the next one tries again.
func agentPrune(ctx context.Context, cfg *config.Config, r *repo.Repo, log *slog.Logger) string {
	plan, err := retention.NewPlan(ctx, r, retention.Options{Backups: cfg.Retention.Backups, Window: cfg.Retention.Window.D(), Dumps: cfg.Retention.Dumps})
	if err != nil {
		log.Error("retention: planning the prune failed", "err", err)
		return "failed: " + err.Error()
	}
	if plan.Empty() {
		return "nothing to delete"
	}
	res, err := retention.Apply(ctx, r, plan, log)
	if err != nil {
		log.Error("retention: the prune failed (the next one completes it)", "err", err)
		return "failed: " + err.Error()
	}
	msg := fmt.Sprintf("deleted %d backups, %d dumps, %d WAL, %d media and %d config objects (%s)", res.Backups, res.Dumps, res.WAL, res.Media, res.Config, humanBytes(res.Bytes))
	log.Info("retention: pruned", "backups", res.Backups, "dumps", res.Dumps, "wal", res.WAL, "media", res.Media, "config", res.Config, "bytes", res.Bytes)
	return msg
}

// takeAgentBackup takes one base backup; the agent's own receiver archives
// its WAL.
func takeAgentBackup(ctx context.Context, cfg *config.Config, src pgsource.Source, r *repo.Repo, facts map[string]string, log *slog.Logger) (*basebackup.Backup, error) {
	conn, err := src.ConnectReplication(ctx, cfg.Postgres.Slot+"_backup")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	parent, err := chooseParent(ctx, r, basebackup.ModeAuto, cfg, log)
	if err != nil {
		return nil, err
	}
	return basebackup.Take(ctx, conn, r, basebackup.Options{
		Incremental:       parent,
		Checkpoint:        cfg.Basebackup.Checkpoint,
		ServerCompression: cfg.Basebackup.ServerCompression,
		PartSize:          int64(cfg.Basebackup.PartSizeMB) << 20,
		CompressWorkers:   cfg.Basebackup.CompressWorkers,
		WALTimeout:        cfg.Basebackup.WALTimeout.D(),
		Facts:             facts,
	}, log)
}

// agentMedia runs the media watcher, with the database's media lengths
// when the database is reachable at start.
type agentMedia struct {
	r     *repo.Repo
	store string
	opts  mediawatch.Options
	src   pgsource.Source
	log   *slog.Logger

	mu sync.Mutex
	w  *mediawatch.Watcher // the running watcher, for Stats
}

func newAgentMedia(cfg *config.Config, hs *synapse.Homeserver, src pgsource.Source, r *repo.Repo, log *slog.Logger) *agentMedia {
	opts := mediaOptions(cfg, hs, log)
	m := &agentMedia{r: r, store: hs.MediaStorePath, opts: opts, src: src, log: log}
	m.w = mediawatch.New(r, m.store, opts)
	return m
}

// ReportLatencyTo makes the watcher report, for each file written since
// the agent started, the time from its completion (its mtime) to its
// durable copy (agent.LatencyReporter).
func (m *agentMedia) ReportLatencyTo(observe func(time.Duration)) {
	started := time.Now()
	m.opts.OnStored = func(ev mediawatch.Event) {
		if ev.Event == mediawatch.Added && ev.MTime.After(started) {
			observe(time.Since(ev.MTime))
		}
	}
}

func (m *agentMedia) Stats() mediawatch.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.w.Stats()
}

func (m *agentMedia) Run(ctx context.Context) error {
	opts := m.opts
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	db, err := mediawatch.OpenDBLengths(cctx, m.src.ConnString)
	cancel()
	if err != nil {
		m.log.Warn("database unreachable: recently written media are copied after the quiet period alone", "err", err)
	} else {
		defer db.Close(context.WithoutCancel(ctx))
		opts.Lengths = db
	}
	w := mediawatch.New(m.r, m.store, opts)
	m.mu.Lock()
	m.w = w
	m.mu.Unlock()
	return w.Run(ctx)
}

// writeFileAtomic writes a small state file durably, readable by its owner
// only.
func writeFileAtomic(path string, b []byte) error { return durable.WriteFile(path, b, 0o600) }

// agentConfig is the config snapshot watcher as the agent sees it.
type agentConfig struct{ w *confsnap.Watcher }

func (c agentConfig) Run(ctx context.Context) error { return c.w.Run(ctx) }

func (c agentConfig) ConfigStatus() agent.ConfigStatus {
	st := c.w.Status()
	cs := agent.ConfigStatus{Files: st.Files, LastSnapshot: st.LastCheck}
	if st.LastError != nil {
		cs.LastError = st.LastError.Error()
	}
	return cs
}

// newAgentConfig returns the config snapshot watcher: homeserver.yaml and
// every file it depends on, and PostgreSQL's own settings files where
// they live outside its data directory, re-read at each check so that
// files the configuration starts naming are followed.
func newAgentConfig(cfg *config.Config, hs *synapse.Homeserver, src pgsource.Source, r *repo.Repo, log *slog.Logger) agentConfig {
	pg := postgresFiles(src, r, log)
	return agentConfig{w: confsnap.NewWatcher(r, confsnap.Options{
		Files: hs.BackupFiles(),
		Refresh: func(ctx context.Context) ([]synapse.File, error) {
			h, err := loadHomeserver(cfg)
			if err != nil {
				return nil, err
			}
			return confsnap.WithPostgresFiles(h.BackupFiles(), pg.Files(ctx)), nil
		},
		Logger: log,
	})}
}
