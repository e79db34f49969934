package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/wal"
)

// chromiumPath finds Debian's chromium; a missing one fails under CI and
// skips elsewhere.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found (apt-get install chromium)")
	}
	t.Skip("chromium not found (apt-get install chromium)")
	return ""
}

// TestStatusPageInBrowser opens the agent's status page in headless
// Chromium. The repository holds a real base backup, WAL on timeline 1
// and, after a promotion, timeline 2, media and config snapshots, and a
// hole: one timeline-1 segment after the backup is removed. The agent runs
// a drill, which fails on the hole. The page must show the recovery
// window, the gap, the timeline switch and the failed drill (DOM checks),
// and a screenshot is written (to $SYNBAK_SCREENSHOT, else the test's
// temporary directory, logged).
func TestStatusPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL and Chromium (skipped with -short)")
	}
	chrome := chromiumPath(t)
	ctx := context.Background()
	conf := pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}}
	primary := pgtest.Start(t, conf)
	primary.CreateDB(t, "synapse")
	primary.CreateSynapseSchema(t, "synapse")
	primary.FillSynapse(t, "synapse", 10)
	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: conf.Conf})
	dir := pgtest.ServerDir(t)
	repoDir := filepath.Join(dir, "repo")
	r := newLocalRepo(t, repoDir)
	stop := streamInto(t, standby, r)
	b, err := basebackup.Take(ctx, primary.ReplicationConn(t), r, basebackup.Options{PartSize: 1 << 20, WALTimeout: 2 * time.Minute,
		Facts: map[string]string{"main_database": "synapse", "server_name": "test.example"}}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		primary.FillSynapse(t, "synapse", 5)
		primary.Exec(t, "postgres", "select pg_switch_wal()")
	}
	lsn := primary.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	waitFor(t, time.Minute, "standby replay", func() bool {
		return standby.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
	})
	standby.Promote(t)
	standby.Exec(t, "synapse", "create table after_promotion as select generate_series(1, 5000) as i")
	end, err := pglogrepl.ParseLSN(standby.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	last := wal.SegmentAt(2, end-1, 1<<20)
	waitFor(t, time.Minute, "timeline 2 archived", func() bool { _, err := r.Stat(ctx, last.ObjectName()); return err == nil })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Media and config snapshots.
	media := t.TempDir()
	mp := filepath.Join(media, "local_content", "ab", "cd", "efghijklmnopqrstuvwx")
	if err := os.MkdirAll(filepath.Dir(mp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, []byte(strings.Repeat("media bytes ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	os.Chtimes(mp, old, old)
	if _, err := mediawatch.Sync(ctx, r, media, mediawatch.Options{}); err != nil {
		t.Fatal(err)
	}
	hsFile := filepath.Join(t.TempDir(), "homeserver.yaml")
	if err := os.WriteFile(hsFile, []byte("server_name: test.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := confsnap.Snapshot(ctx, r, []synapse.File{{Path: hsFile, Role: "config", Secret: true}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	// The hole: the second timeline-1 segment after the backup's end.
	gapSeg := wal.SegmentAt(1, pglogrepl.LSN(b.EndLSN), 1<<20).Next().Next()
	lb, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Delete(ctx, gapSeg.ObjectName()); err != nil {
		t.Fatal(err)
	}
	pgtest.GiveToServerUser(t, repoDir)

	// The agent, on the promoted server, drilling every 2 s.
	s := &agentSite{c: standby, bin: pgtest.SynbakBinary(t), dir: dir, stateDir: filepath.Join(dir, "state")}
	s.env = []string{
		"SYNBAK_SYNAPSE_CONFIG=" + filepath.Join(dir, "no-homeserver.yaml"), "SYNBAK_POSTGRES_DSN=" + standby.DSN("postgres"),
		"SYNBAK_STATE_DIR=" + s.stateDir, "SYNBAK_HTTP_LISTEN=127.0.0.1:0",
		"SYNBAK_WAL_STATUS_INTERVAL=200ms", "SYNBAK_WAL_PARTIAL_INTERVAL=500ms", "SYNBAK_BASEBACKUP_INTERVAL=0",
		"SYNBAK_HEALTH_PROBE_INTERVAL=200ms", "SYNBAK_DRILL_INTERVAL=2s", "SYNBAK_DRILL_SCRATCH_DIR=" + filepath.Join(dir, "scratch"),
		"SYNBAK_LOG_LEVEL=debug",
	}
	s.repoEnv = []string{"SYNBAK_REPOSITORY_PATH=" + repoDir}
	if err := os.MkdirAll(filepath.Join(dir, "scratch"), 0o700); err != nil {
		t.Fatal(err)
	}
	p := s.startAgent(t)
	waitFor(t, 90*time.Second, "a drill", func() bool {
		st := s.status(t)
		return st.Drills != nil && st.Drills.Runs > 0
	})
	if st := s.status(t); st.Drills.LastOK || !strings.Contains(strings.Join(st.Drills.LastProblems, " "), gapSeg.Name()) {
		t.Fatalf("the drill did not fail on the hole at %s: %+v", gapSeg.ObjectName(), st.Drills)
	}

	// The browser.
	actx, cancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1200, 900))...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// Generous: on a loaded 2-core CI machine Chromium's start alone can
	// take tens of seconds.
	bctx, cancel = context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	if err := chromedp.Do(bctx, chromedp.Navigate("http://"+s.addr(t)+"/"), chromedp.WaitVisible(chromedp.CSS("#timeline"))); err != nil {
		t.Fatalf("browser: %v", err)
	}
	// Everything the checks need is read in one evaluation, so that no
	// query can hold a node of a document the browser has since replaced
	// (the page refreshes itself every minute).
	type pageRead struct {
		Title, HealthClass, Health, Gaps, Drills, Window string
		NGap, NWindow, NFailed, NTL2, NBackups           int
	}
	const readPage = `(() => {
		const text = s => { const e = document.querySelector(s); return e ? e.innerText : ""; };
		const n = s => document.querySelectorAll(s).length;
		const h = document.querySelector("#health");
		return {Title: document.title, HealthClass: h ? h.className : "", Health: text("#health"),
			Gaps: text("#gaps"), Drills: text("#drills"), Window: text("#window"),
			NGap: n("#timeline rect.gap"), NWindow: n("#timeline rect.win"), NFailed: n("#drills tr.drill.failed"),
			NTL2: n("#row-wal-2"), NBackups: n("#timeline path.backup")};
	})()`
	// An evaluation that meets the refresh fails ("execution context was
	// destroyed"); the next one reads the new document.
	var pg pageRead
	waitFor(t, 2*time.Minute, "the page read in one evaluation", func() bool {
		pg, err = chromedp.Run(bctx, chromedp.Evaluate[pageRead](readPage))
		if err != nil {
			t.Logf("reading the page: %v", err)
		}
		return err == nil
	})
	title, healthClass, health, gaps, drills, window := pg.Title, pg.HealthClass, pg.Health, pg.Gaps, pg.Drills, pg.Window
	nGap, nWindow, nFailed, nTL2, nBackups := pg.NGap, pg.NWindow, pg.NFailed, pg.NTL2, pg.NBackups
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	out := os.Getenv("SYNBAK_SCREENSHOT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "status-page.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot (%d bytes): %s", len(shot), out)

	if !strings.Contains(healthClass, "red") || !strings.Contains(health, "drill") || !strings.Contains(health, "UNHEALTHY") {
		t.Errorf("health box (class %q) does not say the drill failed: %q", healthClass, health)
	}
	if !strings.Contains(title, "UNHEALTHY") {
		t.Errorf("title %q", title)
	}
	if nGap < 1 || !strings.Contains(gaps, gapSeg.Name()) {
		t.Errorf("%d gap marks; gap list %q does not name %s", nGap, gaps, gapSeg.Name())
	}
	if nWindow < 1 || !strings.Contains(window, b.EndTime.UTC().Format("2006-01-02 15:04:05")) {
		t.Errorf("%d window bars; window card %q does not start at the backup's end %s", nWindow, window, b.EndTime.UTC())
	}
	if nFailed < 1 || !strings.Contains(drills, "FAILED") {
		t.Errorf("drill table %q has %d failed rows", drills, nFailed)
	}
	if nTL2 != 1 || nBackups != 1 {
		t.Errorf("timeline-2 rows %d, backup marks %d; want 1 and 1", nTL2, nBackups)
	}
	var st map[string]any
	_, body := s.get(t, "/status")
	_ = json.Unmarshal([]byte(body), &st)
	if _, err := p.stop(t, syscall.SIGTERM, 20*time.Second); err != nil {
		t.Errorf("agent exit: %v", err)
	}
}
