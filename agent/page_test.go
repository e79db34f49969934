package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/overview"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/retention/retentiontest"
	"github.com/synbak/synbak/wal"
)

// yearRepo builds a repository holding a year of WAL, one 1 MiB segment
// every 10 minutes (52,560 segments), switching to timeline 2 after 200
// days, with three segments missing on day 300, and a base backup every
// week. Only the objects whose headers the overview reads (each range's
// first and last) are written through the repository; the others are
// hard links to one object (their names are what a listing sees).
func yearRepo(t testing.TB) (*repo.Repo, time.Time, int) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	const seg = 1 << 20
	const per = 10 * time.Minute
	n := int(365 * 24 * time.Hour / per)
	switchAt := uint64(200 * 24 * time.Hour / per)
	gapAt := uint64(300 * 24 * time.Hour / per)
	t0 := time.Date(2025, 12, 1, 0, 0, 0, 0, time.UTC)
	put := func(name string, data []byte, attrs map[string]string) {
		t.Helper()
		if _, err := r.Put(ctx, name, bytes.NewReader(data), attrs); err != nil {
			t.Fatal(err)
		}
	}
	put("wal/settings.json", []byte(`{"system_id":"7","segment_size":1048576}`), nil)
	put(wal.HistoryObjectName(2), fmt.Appendf(nil, "1\t%s\tno recovery target specified\n", pglogrepl.LSN(switchAt*seg)), nil)
	segTime := func(no uint64) time.Time { return t0.Add(time.Duration(no) * per) }
	real := func(tli uint32, no uint64) string {
		s := wal.SegmentAt(tli, pglogrepl.LSN(no*seg), seg)
		put(s.ObjectName(), []byte("wal"), map[string]string{
			wal.AttrSystemID: "7", wal.AttrTimeline: fmt.Sprint(tli), wal.AttrStartLSN: s.StartLSN().String(), wal.AttrEndLSN: s.EndLSN().String(),
			wal.AttrSegSize: fmt.Sprint(seg), wal.AttrFirstTime: segTime(no).Format(time.RFC3339Nano), wal.AttrLastTime: segTime(no + 1).Format(time.RFC3339Nano),
		})
		return s.ObjectName()
	}
	tmpl := filepath.Join(dir, real(1, 1))
	real(2, switchAt) // creates timeline 2's directory
	edges := map[uint64]bool{1: true, switchAt - 1: true, switchAt: true, gapAt - 1: true, gapAt + 3: true, uint64(n) - 1: true}
	count := 0
	for no := uint64(1); no < uint64(n); no++ {
		tli := uint32(1)
		if no >= switchAt {
			tli = 2
		}
		if no >= gapAt && no < gapAt+3 {
			continue
		}
		count++
		if edges[no] {
			real(tli, no)
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(wal.SegmentAt(tli, pglogrepl.LSN(no*seg), seg).ObjectName()))
		if err := os.Link(tmpl, p); err != nil { // hard links: cheap to make
			t.Fatal(err)
		}
	}
	for week := 0; week < 52; week++ {
		no := uint64(week)*7*24*6 + 2
		tli := uint32(1)
		if no >= switchAt {
			tli = 2
		}
		st := segTime(no)
		bk := basebackup.Backup{ID: basebackup.NewID(st), StartLSN: pglogrepl.LSN(no*seg + 0x28), EndLSN: pglogrepl.LSN(no*seg + 0x100),
			Timeline: tli, EndTimeline: tli, StartTime: st, EndTime: st.Add(5 * time.Minute), PGVersion: 170000, SystemID: "7", SegmentSize: seg}
		meta, _ := json.Marshal(bk)
		put(basebackup.MetaName(bk.ID), meta, map[string]string{"kind": "basebackup"})
	}
	return r, segTime(uint64(n)), count
}

// TestPageYearOfSegments renders the status page over a year of WAL: the
// first build of the overview and every render after it are timed, and
// the page shows the gap, the timeline switch and a recovery window that
// starts after the gap.
func TestPageYearOfSegments(t *testing.T) {
	r, end, segs := yearRepo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cache := &overview.Cache{Repo: r, MaxAge: time.Hour}
	done := make(chan error, 1)
	go func() { done <- cache.Run(ctx) }()
	defer func() { cancel(); <-done }()

	start := time.Now()
	gctx, gcancel := context.WithTimeout(ctx, time.Minute)
	o, err := cache.Get(gctx)
	gcancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first overview of %d segments built in %s", segs, time.Since(start))
	if o.Segments != segs {
		t.Errorf("overview counts %d segments, want %d", o.Segments, segs)
	}
	if len(o.Gaps) != 1 || o.Gaps[0].Segments != 3 || o.Gaps[0].Timeline != 2 {
		t.Errorf("gaps %+v, want one of 3 segments on timeline 2", o.Gaps)
	}
	if len(o.Switches) != 1 || o.Switches[0].Timeline != 2 || o.Switches[0].Time.IsZero() {
		t.Errorf("switches %+v", o.Switches)
	}
	if w := o.Window(); w == nil || !w.To.Equal(end) || w.From.Before(o.Gaps[0].To) {
		t.Errorf("newest window %+v, want from after the gap (%s) to %s", w, o.Gaps[0].To, end)
	}
	if len(o.Windows) != 2 {
		t.Errorf("windows %+v, want two (before and after the gap)", o.Windows)
	}
	if len(o.Problems) != 1 || !strings.Contains(o.Problems[0], "wal/00000002/"+o.Gaps[0].Missing+" is missing") {
		t.Errorf("problems %q, want the one gap", o.Problems)
	}

	a := New(Options{Page: PageOptions{Overview: cache, Server: "year.example"}})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	var worst time.Duration
	var page []byte
	for range 5 {
		st := time.Now()
		resp, err := http.Get(srv.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		page, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		worst = max(worst, time.Since(st))
		if resp.StatusCode != 200 {
			t.Fatalf("GET /: %d", resp.StatusCode)
		}
	}
	t.Logf("page: %d bytes, slowest of 5 renders %s", len(page), worst)
	if worst > time.Second {
		t.Errorf("a render took %s, want well under a second", worst)
	}
	if len(page) > 300<<10 {
		t.Errorf("page is %d bytes, want under 300 kB", len(page))
	}
	for _, want := range []string{`id="gap-0"`, "→ TL 2", `id="window-1"`, "52 base backups"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestPageRetentionWorld renders the page over retentiontest's world
// (timeline switch, media and config snapshots, dumps) behind a token.
func TestPageRetentionWorld(t *testing.T) {
	w := retentiontest.New(t, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	w.AddDumps(t)
	ctx, cancel := context.WithCancel(context.Background())
	cache := &overview.Cache{Repo: w.R}
	done := make(chan error, 1)
	go func() { done <- cache.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// The overview's archive problems are restore.ArchiveProblems', word
	// for word: none here, then the hole after backup B3.
	checkProblems := func(c *overview.Cache) {
		t.Helper()
		o, err := c.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want, err := restore.ArchiveProblems(ctx, w.R)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(o.Problems, want) && !(len(o.Problems) == 0 && len(want) == 0) {
			t.Errorf("overview problems %q, restore.ArchiveProblems %q", o.Problems, want)
		}
	}
	checkProblems(cache)
	if err := w.R.Delete(ctx, wal.SegmentAt(2, pglogrepl.LSN(11*retentiontest.SegSize), retentiontest.SegSize).ObjectName()); err != nil {
		t.Fatal(err)
	}
	c2 := &overview.Cache{Repo: w.R}
	done2 := make(chan error, 1)
	go func() { done2 <- c2.Run(ctx) }()
	checkProblems(c2)
	if o, _ := c2.Get(ctx); len(o.Problems) != 1 || len(o.Gaps) != 1 {
		t.Errorf("with segment 11 of timeline 2 gone: problems %q, gaps %+v", o.Problems, o.Gaps)
	}
	defer func() { cancel(); <-done2 }()

	a := New(Options{Page: PageOptions{Overview: cache, Auth: &Auth{Token: "s3cret", Users: map[string]string{"admin": "pw"}}}})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	get := func(path string, set func(*http.Request)) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if set != nil {
			set(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/", "/status", "/metrics", "/healthz"} {
		if code, _ := get(p, nil); code != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d, want 401", p, code)
		}
	}
	if code, _ := get("/", func(r *http.Request) { r.Header.Set("Authorization", "Bearer wrong") }); code != 401 {
		t.Errorf("wrong token: %d", code)
	}
	if code, _ := get("/", func(r *http.Request) { r.SetBasicAuth("admin", "pw") }); code != 200 {
		t.Errorf("basic auth: %d", code)
	}
	code, page := get("/", func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret") })
	if code != 200 {
		t.Fatalf("GET / with the token: %d", code)
	}
	for _, want := range []string{`id="row-wal-1"`, `id="row-wal-2"`, "→ TL 2", `class="dump"`, `class="media"`, `class="config"`, `id="window-0"`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "src=") || strings.Contains(page, `href="http`) || strings.Contains(page, "url(") {
		t.Errorf("the page loads something from outside")
	}
}
