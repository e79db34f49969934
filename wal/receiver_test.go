package wal_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/wait"
	"github.com/synbak/synbak/wal"
)

type storageInfo = storage.ObjectInfo

// Small segments make many segment boundaries in little WAL.
var segOpts = []string{"--wal-segsize=1"}

const segSize = 1 << 20

var clusterConf = []string{"wal_keep_size = '1GB'", "max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}

func startCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	return pgtest.Start(t, pgtest.Options{InitdbArgs: segOpts, Conf: clusterConf})
}

func newRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	return repotest.New(t, dir, repotest.Zstd)
}

type running struct {
	rcv    *wal.Receiver
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatalf("receiver: %v", r.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("receiver did not stop within a minute")
	}
}

func startReceiver(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, spool string, opts wal.Options) *running {
	t.Helper()
	if opts.Slot == "" {
		opts.Slot = "synbak"
	}
	opts.SpoolDir = spool
	if opts.StatusInterval == 0 {
		opts.StatusInterval = 200 * time.Millisecond
	}
	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}
	rcv := wal.NewReceiver(src, rp, opts, pgtest.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{rcv: rcv, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = rcv.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

var waitFor = wait.For

// switchWAL closes the current segment and returns the end of the segment
// that held the WAL written so far.
func switchWAL(t *testing.T, c *pgtest.Cluster) pglogrepl.LSN {
	t.Helper()
	lsn, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	return pglogrepl.LSN((uint64(lsn) + segSize - 1) / segSize * segSize)
}

// archived lists the complete segments of tli in the repository.
func archived(t *testing.T, rp *repo.Repo, tli uint32) []string {
	t.Helper()
	var names []string
	err := rp.List(context.Background(), fmt.Sprintf("wal/%08X/", tli), func(oi storageInfo) error {
		base := filepath.Base(oi.Name)
		if len(base) == 24 {
			names = append(names, base)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

// checkArchive fetches every archived segment of tli through the Fetcher,
// requires them to be contiguous from the first one and byte-identical to the
// server's pg_wal copies, and has pg_waldump read the whole range.
func checkArchive(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, tli uint32, minSegments int) {
	t.Helper()
	ctx := context.Background()
	names := archived(t, rp, tli)
	if len(names) < minSegments {
		t.Fatalf("only %d segments archived on timeline %d, want at least %d", len(names), tli, minSegments)
	}
	f, err := wal.NewFetcher(ctx, rp, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var prev *wal.Segment
	for _, n := range names {
		seg, err := wal.ParseSegmentName(n, segSize)
		if err != nil {
			t.Fatal(err)
		}
		if prev != nil && seg.No != prev.No+1 {
			t.Fatalf("gap in the archive: %s follows %s", n, prev.Name())
		}
		prev = &seg
		dest := filepath.Join(dir, n)
		if err := f.Fetch(ctx, n, dest); err != nil {
			t.Fatalf("fetch %s: %v", n, err)
		}
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(c.PgWalDir(), n))
		if err != nil {
			t.Fatalf("server copy of %s: %v", n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("segment %s differs from the server's pg_wal copy", n)
		}
	}
	bin := filepath.Join(c.BinDir, "pg_waldump")
	out, err := exec.Command(bin, "--path", dir, "--quiet", names[0], names[len(names)-1]).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_waldump %s..%s: %v\n%s", names[0], names[len(names)-1], err, out)
	}
}

func TestStreamIsByteIdenticalToPgWal(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := startCluster(t)
	rp := newRepo(t, t.TempDir())
	r := startReceiver(t, c, rp, t.TempDir(), wal.Options{PartialInterval: time.Second})
	waitFor(t, time.Minute, "streaming", func() bool { return r.rcv.Status().Streaming })

	c.Pgbench(t, "postgres", "-i", "-s", "3", "-q")
	c.Pgbench(t, "postgres", "-t", "300", "-c", "2")
	end := switchWAL(t, c)
	waitFor(t, 2*time.Minute, "archive of "+end.String(), func() bool { return r.rcv.Status().Archived >= end })

	// Nothing acknowledged beyond what is durable. The slot is read first:
	// the durable position only grows, so it must not be behind the slot.
	restart, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select restart_lsn::text from pg_replication_slots where slot_name = 'synbak'"))
	if err != nil {
		t.Fatal(err)
	}
	st := r.rcv.Status()
	if st.Flushed > st.Received {
		t.Fatalf("flushed %s beyond received %s", st.Flushed, st.Received)
	}
	if durable := max(st.Flushed, st.Archived); restart > durable {
		t.Fatalf("slot restart_lsn %s is ahead of the durable position %s", restart, durable)
	}
	r.stop(t)
	checkArchive(t, c, rp, 1, 20)

	// The segments in the repository are compressed.
	var stored, raw int64
	for _, n := range archived(t, rp, 1) {
		info, err := rp.Stat(context.Background(), "wal/00000001/"+n)
		if err != nil {
			t.Fatal(err)
		}
		stored += info.StoredSize
		raw += info.Size
	}
	if stored >= raw {
		t.Fatalf("stored %d bytes for %d bytes of WAL: not compressed", stored, raw)
	}
}

func TestQuietServerCommitReachesRepositoryAsPartial(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := startCluster(t)
	rp := newRepo(t, t.TempDir())
	const interval = time.Second
	r := startReceiver(t, c, rp, t.TempDir(), wal.Options{PartialInterval: interval, StatusInterval: 10 * time.Second})
	waitFor(t, time.Minute, "streaming", func() bool { return r.rcv.Status().Streaming })
	c.Exec(t, "postgres", "create table marker(v text)")
	c.Exec(t, "postgres", "insert into marker values ('the only message this hour')")
	lsn, err := pglogrepl.ParseLSN(c.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text"))
	if err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	seg := wal.SegmentAt(1, lsn, segSize)
	var found string
	var foundEnd pglogrepl.LSN
	waitFor(t, 20*interval, "a partial object holding "+lsn.String(), func() bool {
		_ = rp.List(context.Background(), seg.ObjectName()+".partial.", func(oi storageInfo) error {
			info, err := rp.Stat(context.Background(), oi.Name)
			if err == nil {
				end, _ := pglogrepl.ParseLSN(info.Attrs[wal.AttrEndLSN])
				if end >= lsn {
					found, foundEnd = oi.Name, end
				}
			}
			return nil
		})
		return found != ""
	})
	if took := time.Since(committed); took > 5*interval {
		t.Fatalf("the commit reached the repository after %s, more than 5 partial intervals", took)
	}
	// The partial object is the segment as far as it is written, zero-padded.
	rd, err := rp.Get(context.Background(), found)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rd); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.Len(), int(foundEnd-seg.StartLSN()); got != want {
		t.Fatalf("partial object holds %d bytes, want %d (the durable part of the segment)", got, want)
	}
	if !bytes.Contains(buf.Bytes(), []byte("the only message this hour")) {
		t.Fatal("the committed row is not in the partial object")
	}
	// wal-fetch serves it under the plain segment name.
	f, err := wal.NewFetcher(context.Background(), rp, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "seg")
	if err := f.Fetch(context.Background(), seg.Name(), dest); err != nil {
		t.Fatalf("fetch of the open segment: %v", err)
	}
	got, _ := os.ReadFile(dest)
	if len(got) != segSize || !bytes.Equal(got[:buf.Len()], buf.Bytes()) || len(bytes.Trim(got[buf.Len():], "\x00")) != 0 {
		t.Fatal("wal-fetch did not serve the newest partial, zero-padded to the segment size")
	}
	// A segment that does not exist is "not found", not another error.
	err = f.Fetch(context.Background(), seg.Next().Next().Name(), dest+"2")
	if !wal.IsNotFound(err) {
		t.Fatalf("fetch of a missing segment: %v, want not found", err)
	}
}

func TestFollowsPromotionToNewTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	primary := startCluster(t)
	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: clusterConf})
	rp := newRepo(t, t.TempDir())
	r := startReceiver(t, standby, rp, t.TempDir(), wal.Options{PartialInterval: time.Second})
	waitFor(t, time.Minute, "streaming", func() bool { return r.rcv.Status().Streaming })

	primary.Exec(t, "postgres", "create table before_promotion as select generate_series(1, 20000) as i")
	end := switchWAL(t, primary)
	waitFor(t, time.Minute, "timeline 1 archive", func() bool { return r.rcv.Status().Archived >= end })

	// Promote in the middle of a segment, so that timeline 1 ends with a
	// partial segment.
	primary.Exec(t, "postgres", "create table last_on_timeline_1 as select generate_series(1, 1000) as i")
	lsn := primary.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	waitFor(t, time.Minute, "standby replay", func() bool {
		return standby.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
	})
	standby.Promote(t)
	standby.Exec(t, "postgres", "create table after_promotion as select generate_series(1, 20000) as i")
	end2 := switchWAL(t, standby)
	waitFor(t, 2*time.Minute, "timeline 2 archive", func() bool {
		st := r.rcv.Status()
		return st.Timeline == 2 && st.Archived >= end2
	})
	r.stop(t)

	if _, err := rp.Stat(context.Background(), wal.HistoryObjectName(2)); err != nil {
		t.Fatalf("history file of timeline 2: %v", err)
	}
	f, err := wal.NewFetcher(context.Background(), rp, "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "00000002.history")
	if err := f.Fetch(context.Background(), "00000002.history", dest); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dest)
	want, err := os.ReadFile(filepath.Join(standby.PgWalDir(), "00000002.history"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("history file differs:\n%s\nwant\n%s", got, want)
	}
	tl2 := archived(t, rp, 2)
	if len(tl2) == 0 {
		t.Fatal("no segment of timeline 2 archived")
	}
	for _, n := range tl2 {
		if !strings.HasPrefix(n, "00000002") {
			t.Fatalf("segment %s under timeline 2", n)
		}
	}
	checkArchive(t, standby, rp, 2, 1)
	// The old timeline's last segment is kept as a partial object.
	var partials int
	_ = rp.List(context.Background(), "wal/00000001/", func(oi storageInfo) error {
		if strings.Contains(oi.Name, ".partial.") {
			partials++
		}
		return nil
	})
	if partials == 0 {
		t.Fatal("the last segment of timeline 1 was not kept as a partial object")
	}
}

// runUntilError runs a receiver that must stop on its own with a permanent
// error, and returns it.
func runUntilError(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, spool string) error {
	t.Helper()
	src := pgsource.Source{ConnString: c.DSN("postgres"), Origin: "test"}
	rcv := wal.NewReceiver(src, rp, wal.Options{Slot: "synbak", SpoolDir: spool, StatusInterval: 200 * time.Millisecond}, pgtest.Logger(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := rcv.Run(ctx)
	if ctx.Err() != nil {
		t.Fatal("the receiver kept retrying a permanent error for a minute")
	}
	return err
}

func TestGapIsAPermanentErrorAskingForABaseBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: segOpts, Conf: []string{"min_wal_size = '2MB'", "max_wal_size = '32MB'"}})
	rp := newRepo(t, t.TempDir())
	spool := t.TempDir()
	r := startReceiver(t, c, rp, spool, wal.Options{})
	waitFor(t, time.Minute, "streaming", func() bool { return r.rcv.Status().Streaming })
	c.Exec(t, "postgres", "create table t as select generate_series(1, 10000) as i")
	end := switchWAL(t, c)
	waitFor(t, time.Minute, "archive", func() bool { return r.rcv.Status().Archived >= end })
	r.stop(t)

	// The slot is dropped and WAL moves on: a new slot starts after a gap.
	c.Exec(t, "postgres", "select pg_drop_replication_slot('synbak')")
	c.Exec(t, "postgres", "create table u as select generate_series(1, 100000) as i")
	for i := 0; i < 4; i++ {
		c.Exec(t, "postgres", "insert into u select generate_series(1, 50000)")
		switchWAL(t, c)
		c.Exec(t, "postgres", "checkpoint")
	}
	err := runUntilError(t, c, rp, spool)
	if !wal.IsPermanent(err) || !strings.Contains(err.Error(), "take a new base backup") {
		t.Fatalf("after a gap: %v, want a permanent error asking for a base backup", err)
	}
}

func TestInvalidatedSlotIsAPermanentError(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: segOpts, Conf: []string{"max_slot_wal_keep_size = '2MB'", "max_wal_size = '32MB'", "min_wal_size = '2MB'"}})
	c.Exec(t, "postgres", "select pg_create_physical_replication_slot('synbak', true)")
	for i := 0; i < 8; i++ {
		c.Exec(t, "postgres", "create table if not exists filler(v text); insert into filler select repeat('x', 1000) from generate_series(1, 2000)")
		switchWAL(t, c)
	}
	c.Exec(t, "postgres", "checkpoint")
	if st := c.Text(t, "postgres", "select coalesce(wal_status, '') from pg_replication_slots where slot_name = 'synbak'"); st != "lost" {
		t.Fatalf("slot wal_status %q, want lost (test setup)", st)
	}
	err := runUntilError(t, c, newRepo(t, t.TempDir()), t.TempDir())
	if !wal.IsPermanent(err) || !strings.Contains(err.Error(), "base backup") {
		t.Fatalf("invalidated slot: %v, want a permanent error asking for a base backup", err)
	}
}

func TestRepositoryOfAnotherClusterIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	a, b := startCluster(t), startCluster(t)
	rp := newRepo(t, t.TempDir())
	if err := rp.BindSystemID(context.Background(), a.IdentifySystem(t).SystemID); err != nil {
		t.Fatal(err)
	}
	err := runUntilError(t, b, rp, t.TempDir())
	if !wal.IsPermanent(err) || !repo.IsWrongCluster(err) {
		t.Fatalf("streaming cluster B into cluster A's repository: %v, want a permanent wrong-cluster error", err)
	}
	if n := b.Int64(t, "postgres", "select count(*) from pg_replication_slots"); n != 0 {
		t.Fatalf("a slot was created on the wrong cluster (%d)", n)
	}
}
