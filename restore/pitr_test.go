package restore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

// pitrSite is a backed-up cluster with its repository and a running
// receiver, ready for markers.
type pitrSite struct {
	c       *pgtest.Cluster
	r       *repo.Repo
	repoDir string
	b       basebackup.Backup
	stop    func()
}

// newPITRSite starts the receiver on c, takes a base backup of c and
// creates the markers table.
func newPITRSite(t *testing.T, c *pgtest.Cluster) *pitrSite {
	t.Helper()
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	c.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")
	repoDir, r, b, stop := backedUp(t, c)
	return &pitrSite{c: c, r: r, repoDir: repoDir, b: *b, stop: stop}
}

// markers inserts markers from..to one by one on c, each at a distinct
// server time, and returns after[i]: a server time strictly after marker
// from+i committed and strictly before the next one's commit.
func markers(t *testing.T, c *pgtest.Cluster, from, to int) []time.Time {
	t.Helper()
	var after []time.Time
	for n := from; n <= to; n++ {
		c.Exec(t, "synapse", "INSERT INTO markers VALUES ($1)", n)
		now := serverNow(t, c) // after the commit
		timeAfter(t, c, now)   // and the next commit after it
		after = append(after, now)
	}
	return after
}

// switchAndWait ends the open segment on c and waits until it is in the
// repository.
func (s *pitrSite) switchAndWait(t *testing.T, c *pgtest.Cluster, tli uint32) pglogrepl.LSN {
	t.Helper()
	// pg_switch_wal returns the end of the segment it completed (WAL
	// written after it, like a checkpoint's, goes to the next one).
	endLSN, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	seg := wal.SegmentAt(tli, endLSN-1, 1<<20)
	waitFor(t, time.Minute, "WAL archived: "+seg.ObjectName(), func() bool {
		_, err := s.r.Stat(context.Background(), seg.ObjectName())
		return err == nil
	})
	return endLSN
}

// restoreTo restores the site's repository into a fresh data directory,
// starts it and returns the markers it holds ("1,2") with the report.
func (s *pitrSite) restoreTo(t *testing.T, target restore.Point) (string, restore.Report, *pgtest.Cluster) {
	t.Helper()
	pgdata := filepath.Join(pgtest.ServerDir(t), "data")
	var last restore.Progress
	var replayed []pglogrepl.LSN
	rep, err := restore.Run(context.Background(), restore.Options{
		Repo: s.r, Prefetch: 4, Target: target, PGData: pgdata,
		Executable: pgtest.SynbakBinary(t), BinDir: s.c.BinDir, Log: pgtest.Logger(t),
		Progress: func(p restore.Progress) {
			if p.Phase == "recovery" {
				replayed = append(replayed, p.ReplayLSN)
			}
			last = p
		},
	})
	if err != nil {
		t.Fatalf("restore to %s: %v", target, err)
	}
	// Progress: extraction counted every byte of the backup, then replay
	// positions (if recovery lasted long enough to be sampled) only grew.
	archives := s.b.Size() - s.b.Manifest.Size
	if len(replayed) == 0 && (last.Phase != "extract" || last.Done != archives || last.Total != archives) {
		t.Errorf("last progress %+v, want extraction done at %d bytes", last, archives)
	}
	for i := 1; i < len(replayed); i++ {
		if replayed[i] < replayed[i-1] {
			t.Errorf("replay progress went back: %v", replayed)
		}
	}
	rc := pgtest.StartDataDir(t, pgdata, pgtest.Options{})
	got := rc.Text(t, "synapse", "select coalesce(string_agg(n::text, ',' order by n), '') from markers")
	return got, rep, rc
}

func wantMarkers(n int) string {
	var s []string
	for i := 1; i <= n; i++ {
		s = append(s, fmt.Sprint(i))
	}
	return strings.Join(s, ",")
}

// TestRestoreSeveralTargets restores one backup and its WAL to three
// different times between commits: each restore holds exactly the
// transactions committed at or before its target.
func TestRestoreSeveralTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	s := newPITRSite(t, c)
	timeAfter(t, c, s.b.EndTime)
	after := markers(t, c, 1, 4)
	s.switchAndWait(t, c, s.b.EndTimeline)
	s.stop()

	for i := range 3 { // targets between markers i+1 and i+2
		t.Run(fmt.Sprintf("after marker %d", i+1), func(t *testing.T) {
			got, rep, _ := s.restoreTo(t, restore.Point{Time: after[i]})
			if want := wantMarkers(i + 1); got != want {
				t.Errorf("restored to %s: markers %q, want %q", after[i], got, want)
			}
			if rep.EndOfArchive || rep.RecoveryTime == nil || rep.RecoveryTime.After(after[i]) {
				t.Errorf("report %s", rep.String())
			}
		})
	}
}

// TestRestoreTargetInsideNewestPartial restores to a time whose WAL is
// only in the partial object of the segment still open on the server.
func TestRestoreTargetInsideNewestPartial(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	s := newPITRSite(t, c)
	// A fresh segment for the markers, so that they all are in it.
	s.switchAndWait(t, c, s.b.EndTimeline)
	timeAfter(t, c, s.b.EndTime)
	startLSN, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	after := markers(t, c, 1, 3)
	endLSN, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_current_wal_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	open := wal.SegmentAt(s.b.EndTimeline, endLSN, 1<<20)
	if first := wal.SegmentAt(s.b.EndTimeline, startLSN, 1<<20); first != open {
		t.Fatalf("markers span segments %s..%s; the test needs them in one", first.Name(), open.Name())
	}
	target := after[1] // after marker 2, before marker 3
	ctx := context.Background()
	waitFor(t, time.Minute, "a partial object holding marker 3, known complete past the target", func() bool {
		p, err := restore.NewPlan(ctx, s.r, restore.Point{Latest: true})
		if err != nil {
			return false
		}
		return p.ArchiveEndLSN >= endLSN && p.ArchiveCompleteTo.After(target) && strings.HasSuffix(p.LastSegment, "(partial)")
	})
	s.stop()
	if _, err := s.r.Stat(ctx, open.ObjectName()); err == nil {
		t.Fatalf("segment %s is complete in the repository; the test needs it open", open.Name())
	}
	p, err := restore.NewPlan(ctx, s.r, restore.Point{Time: target})
	if err != nil {
		t.Fatal(err)
	}
	if p.LastSegment != open.Name()+" (partial)" {
		t.Errorf("plan ends at %q, want the partial of %s", p.LastSegment, open.Name())
	}
	got, rep, _ := s.restoreTo(t, restore.Point{Time: target})
	if got != "1,2" {
		t.Errorf("restored to %s: markers %q, want 1,2", target, got)
	}
	if rep.EndOfArchive || rep.RecoveryTime == nil || rep.RecoveryTime.After(target) || !rep.RecoveryTime.After(after[0]) {
		t.Errorf("report %s", rep.String())
	}
}

// TestRestoreAfterPromotion streams from a standby and backs it up while
// the primary is quiet (a standby cannot switch WAL: the backup's end
// segment is only in a partial object), promotes the standby (timeline 2)
// and restores to a time on the new timeline: the plan follows the
// timeline history from the backup's timeline 1 to the target's timeline 2.
func TestRestoreAfterPromotion(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	conf := pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}}
	primary := pgtest.Start(t, conf)
	primary.CreateDB(t, "synapse")
	primary.CreateSynapseSchema(t, "synapse")
	primary.Exec(t, "synapse", "CREATE TABLE markers (n int primary key)")
	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: conf.Conf})

	repoDir := filepath.Join(pgtest.ServerDir(t), "repo")
	r := repotest.New(t, repoDir, repotest.Zstd)
	stop := startReceiver(t, standby, r) // the receiver follows the standby
	b, err := basebackup.Take(context.Background(), standby.ReplicationConn(t), r, basebackup.Options{
		Label: "standby, before promotion", PartSize: 1 << 20, WALTimeout: 2 * time.Minute,
		Facts: map[string]string{"main_database": "synapse"},
	}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.EndTimeline != 1 {
		t.Fatalf("backup ended on timeline %d, want 1", b.EndTimeline)
	}
	s := &pitrSite{c: primary, r: r, repoDir: repoDir, b: *b, stop: stop}

	timeAfter(t, primary, b.EndTime)
	markers(t, primary, 1, 2)
	lsn := primary.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	waitFor(t, time.Minute, "standby replay of markers 1 and 2", func() bool {
		return standby.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
	})
	standby.Promote(t)
	primary.Stop(t) // the old primary is gone, as in a real failover
	after := markers(t, standby, 3, 4)
	s.switchAndWait(t, standby, 2)
	if _, err := r.Stat(context.Background(), wal.HistoryObjectName(2)); err != nil {
		t.Fatalf("history of timeline 2: %v", err)
	}
	stop()
	s.c = standby

	p, err := restore.NewPlan(context.Background(), r, restore.Point{Time: after[0]})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: %+v", p)
	got, rep, rc := s.restoreTo(t, restore.Point{Time: after[0]})
	if got != "1,2,3" {
		t.Errorf("restored to %s (after marker 3, on timeline 2): markers %q, want 1,2,3", after[0], got)
	}
	if rep.EndOfArchive || rep.RecoveryTime == nil || rep.RecoveryTime.After(after[0]) {
		t.Errorf("report %s", rep.String())
	}
	// The restored server was promoted onto a timeline after 2.
	if tli := rc.IdentifySystem(t).Timeline; tli <= 2 { // promoted: a new timeline
		t.Errorf("restored server on timeline %d, want > 2", tli)
	}
	if rc.Bool(t, "postgres", "select pg_is_in_recovery()") {
		t.Error("restored server still in recovery")
	}
	rc.Stop(t)

	got, rep, _ = s.restoreTo(t, restore.Point{Latest: true})
	if got != "1,2,3,4" {
		t.Errorf("restored --latest after the promotion: markers %q, want 1,2,3,4 (report %s)", got, rep.String())
	}
}
