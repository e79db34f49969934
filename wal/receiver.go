// Package wal streams PostgreSQL's write-ahead log into the repository over
// the physical replication protocol (the job pg_receivewal does, with a
// replication slot, a durable local spool and an uploader), and fetches it
// back for PostgreSQL's restore_command.
package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/shutdown"
)

// Connector opens physical replication connections (pgsource.Source does).
type Connector interface {
	ConnectReplication(ctx context.Context, appName string) (*pgconn.PgConn, error)
}

// Options configures a Receiver.
type Options struct {
	// Slot is the physical replication slot; also the application_name.
	Slot string
	// SpoolDir is the local directory for the spool (state_dir/wal).
	SpoolDir string
	// StatusInterval is how often status updates are sent and received WAL
	// fsynced when nothing else prompts it.
	StatusInterval time.Duration
	// Synchronous fsyncs and reports flush after every WAL message.
	Synchronous bool
	// PartialInterval is how often the open segment is stored as a partial
	// object when it has changed; 0 turns that off.
	PartialInterval time.Duration
	// MaxBackoff caps the reconnection delay (default 30s).
	MaxBackoff time.Duration
	// YieldSpool makes Run return an error satisfying IsSpoolLocked at
	// once when another synbak process holds the spool (synbak backup
	// then relies on that process); without it Run waits for the lock.
	YieldSpool bool
}

// DefaultDrain bounds how long Run's uploader goes on storing the spool
// after ctx is cancelled, when ctx carries no shutdown budget
// (shutdown.WithBudget; the agent and `wal stream` give theirs).
const DefaultDrain = 2 * time.Minute

// finalReportTimeout bounds the last status update to the server at
// shutdown (within the shutdown budget).
const finalReportTimeout = 10 * time.Second

// ErrPermanent marks errors that reconnecting cannot fix; Run returns them.
var ErrPermanent = errors.New("permanent error")

// IsPermanent reports whether err needs an admin, not a retry.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// Status is a snapshot of the receiver's progress.
type Status struct {
	SystemID   string
	Timeline   uint32
	Received   pglogrepl.LSN // end of WAL written to the spool
	Flushed    pglogrepl.LSN // end of WAL fsynced and reported as flushed
	Archived   pglogrepl.LSN // end of the newest complete segment stored in the repository
	ServerTime time.Time     // server time of the last message received
	Streaming  bool
	LastError  string
	// Stored: all WAL acknowledged before it is in the repository
	// (complete segments and partial objects).
	Stored pglogrepl.LSN
	// UnstoredSince is when the oldest acknowledged byte not yet in the
	// repository was acknowledged (zero: everything acknowledged is
	// stored). Its age is bounded by wal.partial_interval plus the
	// upload's duration while the repository works.
	UnstoredSince time.Time
	// Spooled is how many finished files wait in the spool for upload.
	Spooled int
	// UploadError is the last failed upload's error, cleared by the next
	// success.
	UploadError string
}

// UnstoredBytes is how much acknowledged WAL is not in the repository yet.
func (s Status) UnstoredBytes() uint64 {
	if s.Flushed > s.Stored && !s.UnstoredSince.IsZero() {
		return uint64(s.Flushed - s.Stored)
	}
	return 0
}

// Receiver streams WAL from one PostgreSQL cluster into the repository.
type Receiver struct {
	src  Connector
	repo *repo.Repo
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	status Status
	acks   []ackMark // acknowledged positions not yet stored, oldest first

	sysid   string
	segSize uint64
	// The newest partial object requested for the open segment (across
	// sessions: a new session rewrites the segment from its start).
	partialSeg    Segment
	partialStored uint64
	streamed      bool // the current session reached START_REPLICATION
}

// ackMark says that WAL up to lsn was acknowledged at (or before) t.
type ackMark struct {
	lsn pglogrepl.LSN
	t   time.Time
}

// noteFlushed records WAL acknowledged to the server as flushed.
func (r *Receiver) noteFlushed(lsn pglogrepl.LSN) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Flushed = lsn
	r.noteAckLocked(lsn, now)
}

func (r *Receiver) noteAckLocked(lsn pglogrepl.LSN, now time.Time) {
	if lsn <= r.status.Stored {
		return
	}
	if n := len(r.acks); n > 0 {
		last := &r.acks[n-1]
		if lsn <= last.lsn {
			return
		}
		// Coalesce (keeping the older time: the age is never understated).
		if now.Sub(last.t) < 100*time.Millisecond || n >= 4096 {
			last.lsn = lsn
			return
		}
	}
	r.acks = append(r.acks, ackMark{lsn: lsn, t: now})
	if r.status.UnstoredSince.IsZero() {
		r.status.UnstoredSince = r.acks[0].t
	}
}

// The uploader reports to the receiver (uploadObserver).
func (r *Receiver) archived(end pglogrepl.LSN) {
	r.update(func(s *Status) {
		if end > s.Archived {
			s.Archived = end
		}
	})
}

func (r *Receiver) spooled(n int) { r.update(func(s *Status) { s.Spooled = n }) }

func (r *Receiver) uploadResult(err error) {
	r.update(func(s *Status) {
		if err != nil {
			s.UploadError = err.Error()
		} else {
			s.UploadError = ""
		}
	})
}

// stored records that all WAL before lsn is in the repository.
func (r *Receiver) stored(lsn pglogrepl.LSN) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if lsn > r.status.Stored {
		r.status.Stored = lsn
	}
	i := 0
	for i < len(r.acks) && r.acks[i].lsn <= r.status.Stored {
		i++
	}
	r.acks = r.acks[i:]
	if len(r.acks) == 0 {
		r.status.UnstoredSince = time.Time{}
	} else {
		r.status.UnstoredSince = r.acks[0].t
	}
}

// NewReceiver returns a receiver; Run starts it.
func NewReceiver(src Connector, r *repo.Repo, opts Options, log *slog.Logger) *Receiver {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Receiver{src: src, repo: r, opts: opts, log: log.With("slot", opts.Slot)}
}

// Status returns the receiver's progress.
func (r *Receiver) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

func (r *Receiver) update(f func(*Status)) {
	r.mu.Lock()
	f(&r.status)
	r.mu.Unlock()
}

// Run streams until ctx is cancelled (then returns nil after making the open
// segment durable and stored) or a permanent error occurs. Transient errors
// (connection lost, server restart, server unreachable at start) reconnect
// with backoff. The spool, its lock and the uploader belong to Run for its
// whole life: whatever the connection's state, acknowledged WAL reaches the
// repository (the open segment as a partial object when the connection
// drops, at start, and when Run ends).
func (r *Receiver) Run(ctx context.Context) (err error) {
	sp, err := r.acquireSpool(ctx)
	if sp == nil {
		return err
	}
	defer sp.close()

	up, stopUploader := r.startUploader(ctx, sp)
	defer stopUploader()
	if err := r.recoverSpool(sp, up); err != nil {
		r.log.Error("recovering the spool's open segment failed; it is stored when streaming resumes", "err", err)
	}
	up.kick()

	backoff := time.Second
	slotBusySince := time.Time{}
	for {
		started := time.Now()
		r.streamed = false
		err := r.session(ctx, sp, up)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			continue
		}
		if isSlotActive(err) {
			if slotBusySince.IsZero() {
				slotBusySince = time.Now()
			} else if time.Since(slotBusySince) > 2*time.Minute {
				return fmt.Errorf("%w: %w", ErrPermanent, err)
			}
		} else {
			slotBusySince = time.Time{}
		}
		if IsPermanent(err) {
			r.update(func(s *Status) { s.LastError = err.Error(); s.Streaming = false })
			return err
		}
		if r.streamed || time.Since(started) > time.Minute {
			// A connection that streamed and then dropped is a new
			// failure, not a repeated one.
			backoff = time.Second
		}
		r.update(func(s *Status) { s.LastError = err.Error(); s.Streaming = false })
		wait := backoff/2 + rand.N(backoff/2+1)
		r.log.Warn("WAL streaming interrupted; reconnecting (the spool is being stored in the repository meanwhile)", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, r.opts.MaxBackoff)
	}
}

// startUploader starts the spool's uploader. It outlives ctx by the
// shutdown budget (what the caller's shutdown.WithBudget leaves, else
// DefaultDrain): after ctx ends it stores what is finished and the open
// segment's last partial, and is stopped when the budget is spent. What it
// has not stored by then is fsynced in the spool and stored at the next
// start. stop drains it and returns when it has returned.
func (r *Receiver) startUploader(ctx context.Context, sp *spool) (up *uploader, stop func()) {
	up = newUploader(r.repo, sp, r.sysid, r.log, r)
	upCtx, upCancel := shutdown.Grace(ctx, DefaultDrain)
	upDone := make(chan error, 1)
	go func() { upDone <- up.run(upCtx) }()
	return up, func() {
		if ctx.Err() == nil {
			// Run ends by itself (a permanent error): the drain is
			// bounded all the same.
			t := time.AfterFunc(DefaultDrain, upCancel)
			defer t.Stop()
		}
		up.drain()
		uerr := <-upDone
		budgetSpent := upCtx.Err() != nil
		upCancel()
		switch {
		case uerr != nil:
			r.log.Error("not everything in the spool could be stored in the repository; it stays in the spool and is stored at the next start", "dir", sp.dir, "err", uerr)
		case budgetSpent:
			r.log.Warn("the shutdown budget ended before the spool was stored; what is left is durable in the spool and stored at the next start", "dir", sp.dir, "spooled_files", r.Status().Spooled)
		}
	}
}

// acquireSpool learns the system identifier and segment size (from the
// repository's wal/settings.json, else from the server) and opens and locks
// the spool, retrying until it can. It returns a nil spool when ctx ends
// (with a nil error) or on a permanent error, and, with YieldSpool, an
// error satisfying IsSpoolLocked when another process holds the spool.
func (r *Receiver) acquireSpool(ctx context.Context) (*spool, error) {
	backoff := time.Second
	waitingForLock := false
	for {
		sysid, segSize, err := r.identify(ctx)
		if err == nil {
			sp, serr := openSpool(filepath.Join(r.opts.SpoolDir, sysid), segSize)
			if serr == nil {
				r.sysid, r.segSize = sysid, segSize
				r.update(func(s *Status) { s.SystemID = sysid; s.LastError = "" })
				if waitingForLock {
					r.log.Info("got the WAL spool's lock")
				}
				return sp, nil
			}
			err = serr
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if IsPermanent(err) {
			r.update(func(s *Status) { s.LastError = err.Error() })
			return nil, err
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if IsSpoolLocked(err) {
			if r.opts.YieldSpool {
				return nil, err
			}
			// Another process (a synbak backup) streams meanwhile; poll
			// often so that the acknowledgements move here quickly.
			wait = 500 * time.Millisecond
			if !waitingForLock {
				r.log.Warn("waiting for the WAL spool's lock", "err", err)
				waitingForLock = true
			}
		} else {
			r.log.Warn("WAL receiver cannot start yet; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
			backoff = min(backoff*2, r.opts.MaxBackoff)
		}
		r.update(func(s *Status) { s.LastError = err.Error() })
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(wait):
		}
	}
}

// identify returns the system identifier and segment size the repository
// records, or, in a repository that records none yet, the server's (binding
// the repository to it).
func (r *Receiver) identify(ctx context.Context) (string, uint64, error) {
	set, serr := LoadSettings(ctx, r.repo)
	if serr == nil {
		return set.SystemID, set.SegmentSize, nil
	}
	conn, err := r.src.ConnectReplication(ctx, r.opts.Slot)
	if err != nil {
		if pgsource.IsPrivilege(err) || pgsource.IsUnsupportedVersion(err) {
			return "", 0, fmt.Errorf("%w: %w", ErrPermanent, err)
		}
		if repo.IsNotExist(serr) {
			return "", 0, fmt.Errorf("the repository records no WAL settings yet and the server is unreachable: %w", err)
		}
		return "", 0, fmt.Errorf("the repository's WAL settings are unreadable (%v) and the server is unreachable: %w", serr, err)
	}
	defer conn.Close(context.Background())
	sysid, err := BindRepository(ctx, conn, r.repo)
	if err != nil {
		return "", 0, err
	}
	segSize, err := showSegmentSize(ctx, conn)
	if err != nil {
		return "", 0, err
	}
	if err := storeSettings(ctx, r.repo, sysid, segSize); err != nil {
		return "", 0, err
	}
	return sysid, segSize, nil
}

// recoverSpool makes what an earlier run left in the spool's open segment
// files reach the repository now, without a server: each is stored as a
// partial object of its written bytes (the file was pre-sized with zeros,
// so its written length is where its zeros begin; a trailing zero of WAL
// cut off this way is restored as the zero padding of the partial segment).
// The files stay where they are: streaming resumes at the oldest of them
// and rewrites it from the server, and only a segment finished by a
// session (fsynced, then renamed) is ever stored as complete. (Renaming a
// whole-looking file here would be wrong after an operating system crash,
// whose unsynced pages read as zeros, and would move the resume point past
// older open files.)
func (r *Receiver) recoverSpool(sp *spool, up *uploader) error {
	segs, err := sp.openPartials()
	if err != nil {
		return err
	}
	sort.Slice(segs, func(i, j int) bool {
		if segs[i].TLI != segs[j].TLI {
			return segs[i].TLI < segs[j].TLI
		}
		return segs[i].No < segs[j].No
	})
	if pend, err := sp.pending(); err == nil && len(pend) > 0 {
		r.noteStoredFloor(pend[0].seg.StartLSN())
	}
	now := time.Now()
	for _, seg := range segs {
		f, err := os.OpenFile(sp.path(seg.Name()+".partial"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		valid, err := writtenLength(f, sp.segSize)
		if err == nil && valid > 0 {
			err = f.Sync()
		}
		var fi os.FileInfo
		if err == nil {
			fi, err = f.Stat()
		}
		f.Close()
		if err != nil {
			return err
		}
		if valid == 0 {
			continue
		}
		r.noteStoredFloor(seg.StartLSN())
		r.mu.Lock()
		// Durable, and maybe acknowledged by the earlier run.
		end := seg.StartLSN() + pglogrepl.LSN(valid)
		if end > r.status.Flushed {
			r.status.Flushed = end
		}
		r.noteAckLocked(end, now)
		r.mu.Unlock()
		t := sp.readTimes(seg.Name() + ".partial")
		if t.Last == "" {
			// Killed before it recorded any: the file's last write is
			// the best estimate there is.
			t.Last = fi.ModTime().UTC().Format(time.RFC3339Nano)
			if t.First == "" {
				t.First = t.Last
			}
		}
		r.log.Info("storing an open segment left in the spool as a partial object", "segment", seg.Name(), "bytes", valid, "last_time", t.Last)
		r.requestPartial(up, nil, seg, valid, t)
	}
	return nil
}

// noteStoredFloor sets the stored position when nothing is known yet.
func (r *Receiver) noteStoredFloor(lsn pglogrepl.LSN) {
	r.mu.Lock()
	if r.status.Stored == 0 {
		r.status.Stored = lsn
	}
	r.mu.Unlock()
}

// writtenLength is the length of f without its trailing zeros.
func writtenLength(f *os.File, size uint64) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end := min(uint64(fi.Size()), size)
	buf := make([]byte, 64<<10)
	for end > 0 {
		n := min(end, uint64(len(buf)))
		if _, err := f.ReadAt(buf[:n], int64(end-n)); err != nil {
			return 0, err
		}
		for i := int(n) - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return end - n + uint64(i) + 1, nil
			}
		}
		end -= n
	}
	return 0, nil
}

// requestPartial asks the uploader to store the open segment's first valid
// (durable) bytes, unless a request of as many bytes was made already.
func (r *Receiver) requestPartial(up *uploader, sp *spool, seg Segment, valid uint64, t segTimes) {
	if valid == 0 || (seg == r.partialSeg && valid <= r.partialStored) {
		return
	}
	r.partialSeg, r.partialStored = seg, valid
	if sp != nil && t.Last != "" {
		// For a later run that finds the file without a server
		// (recoverSpool); best effort.
		if err := sp.writeTimes(seg.Name()+".partial", t); err != nil {
			r.log.Warn("recording the open segment's times failed", "segment", seg.Name(), "err", err)
		}
	}
	up.storePartial(seg, valid, t)
}

// BindRepository identifies the server and binds the repository to its
// system identifier, refusing a repository of another cluster.
func BindRepository(ctx context.Context, conn *pgconn.PgConn, rp *repo.Repo) (string, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return "", fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if err := rp.BindSystemID(ctx, sys.SystemID); err != nil {
		if repo.IsWrongCluster(err) {
			return "", fmt.Errorf("%w: %w", ErrPermanent, err)
		}
		return "", err
	}
	return sys.SystemID, nil
}

// session is one connection's worth of streaming.
func (r *Receiver) session(ctx context.Context, sp *spool, up *uploader) (err error) {
	conn, err := r.src.ConnectReplication(ctx, r.opts.Slot)
	if err != nil {
		if pgsource.IsPrivilege(err) || pgsource.IsUnsupportedVersion(err) {
			return fmt.Errorf("%w: %w", ErrPermanent, err)
		}
		return err
	}
	defer conn.Close(context.Background())

	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if err := r.repo.BindSystemID(ctx, sys.SystemID); err != nil {
		if repo.IsWrongCluster(err) {
			return fmt.Errorf("%w: %w", ErrPermanent, err)
		}
		return err
	}
	if sys.SystemID != r.sysid {
		return fmt.Errorf("%w: the server's system identifier %s differs from the repository's WAL settings (%s)", ErrPermanent, sys.SystemID, r.sysid)
	}
	segSize, err := showSegmentSize(ctx, conn)
	if err != nil {
		return err
	}
	if err := storeSettings(ctx, r.repo, sys.SystemID, segSize); err != nil {
		return err
	}
	if segSize != sp.segSize {
		return fmt.Errorf("%w: the server's wal_segment_size %d differs from the repository's (%d)", ErrPermanent, segSize, sp.segSize)
	}

	if err := r.ensureSlot(ctx, conn); err != nil {
		return err
	}
	for t := uint32(2); t <= uint32(sys.Timeline); t++ {
		if err := storeHistory(ctx, conn, r.repo, t); err != nil {
			return err
		}
	}

	tli, start, err := r.startPoint(ctx, conn, sp, uint32(sys.Timeline))
	if err != nil {
		return err
	}
	if pend, err := sp.pending(); err == nil && len(pend) == 0 {
		r.noteStoredFloor(start)
	}
	for {
		next, err := r.stream(ctx, conn, sp, up, tli, start)
		if err != nil || next == nil {
			return err
		}
		if err := storeHistory(ctx, conn, r.repo, next.tli); err != nil {
			return err
		}
		r.log.Info("following timeline switch", "timeline", next.tli, "lsn", next.switchLSN.String())
		tli = next.tli
		start = SegmentAt(tli, next.switchLSN, segSize).StartLSN()
	}
}

type timelineSwitch struct {
	tli       uint32
	switchLSN pglogrepl.LSN
}

// ensureSlot creates the physical slot (reserving WAL) when missing.
func (r *Receiver) ensureSlot(ctx context.Context, conn *pgconn.PgConn) error {
	info, err := readSlot(ctx, conn, r.opts.Slot)
	if err != nil {
		return err
	}
	if info.exists {
		if info.slotType != "physical" {
			return fmt.Errorf("%w: replication slot %q is a %s slot: choose another postgres.slot name", ErrPermanent, r.opts.Slot, info.slotType)
		}
		return nil
	}
	sql := fmt.Sprintf("CREATE_REPLICATION_SLOT %s PHYSICAL (RESERVE_WAL)", r.opts.Slot)
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created concurrently
			return nil
		}
		return fmt.Errorf("create replication slot %q: %w", r.opts.Slot, err)
	}
	keep := ""
	if res, err := conn.Exec(ctx, "SHOW max_slot_wal_keep_size").ReadAll(); err == nil && len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) == 1 {
		keep = string(res[0].Rows[0][0])
	}
	if keep == "-1" {
		r.log.Warn("created physical replication slot; max_slot_wal_keep_size is -1 (unlimited): while synbak is stopped the slot keeps WAL until the server's disk is full. Set it (e.g. '20GB', examples/debian/postgresql-synbak.conf)")
	} else {
		r.log.Info("created physical replication slot", "max_slot_wal_keep_size", keep)
	}
	return nil
}

type slotInfo struct {
	exists     bool
	slotType   string
	restartLSN pglogrepl.LSN
	restartTLI uint32
}

func readSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (slotInfo, error) {
	res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+slot).ReadAll()
	if err != nil {
		return slotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT %s: %w", slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return slotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT %s: unexpected reply", slot)
	}
	row := res[0].Rows[0]
	if row[0] == nil {
		return slotInfo{}, nil
	}
	si := slotInfo{exists: true, slotType: string(row[0])}
	if row[1] != nil {
		lsn, err := pglogrepl.ParseLSN(string(row[1]))
		if err != nil {
			return slotInfo{}, fmt.Errorf("READ_REPLICATION_SLOT %s: restart_lsn: %w", slot, err)
		}
		si.restartLSN = lsn
	}
	if row[2] != nil {
		t, _ := strconv.ParseUint(string(row[2]), 10, 32)
		si.restartTLI = uint32(t)
	}
	return si, nil
}

// resumeSegment returns the segment streaming resumes at, nil when neither
// the spool nor the repository holds WAL (then the slot decides), and the
// newest complete segment in the repository (nil: none).
func resumeSegment(ctx context.Context, rp *repo.Repo, sp *spool) (best, last *Segment, err error) {
	consider := func(s Segment) {
		if best == nil || s.TLI > best.TLI || (s.TLI == best.TLI && s.No > best.No) {
			c := s
			best = &c
		}
	}
	partials, err := sp.openPartials()
	if err != nil {
		return nil, nil, err
	}
	pend, err := sp.pending()
	if err != nil {
		return nil, nil, err
	}
	for _, e := range pend {
		if e.valid == sp.segSize {
			consider(e.seg.Next())
		}
	}
	last, err = lastArchivedSegment(ctx, rp, sp.segSize)
	if err != nil {
		return nil, nil, err
	}
	if last != nil {
		consider(last.Next())
	}
	// An open file is normally the segment after the newest finished one,
	// but up to maxFinishing complete ones may have been waiting for their
	// fsync and rename when the receiver stopped: resume at the oldest open
	// file not older than what is finished (older ones are left over from
	// an ended timeline).
	var open *Segment
	for _, s := range partials {
		if best != nil && (s.TLI < best.TLI || (s.TLI == best.TLI && s.No < best.No)) {
			continue
		}
		if open == nil || s.TLI < open.TLI || (s.TLI == open.TLI && s.No < open.No) {
			c := s
			open = &c
		}
	}
	if open != nil {
		best = open
	}
	return best, last, nil
}

// startPoint decides where streaming resumes: at the open segment in the
// spool, else after the newest segment stored (spool or repository), else at
// the slot's restart_lsn; always at a segment boundary.
func (r *Receiver) startPoint(ctx context.Context, conn *pgconn.PgConn, sp *spool, serverTLI uint32) (uint32, pglogrepl.LSN, error) {
	best, last, err := resumeSegment(ctx, r.repo, sp)
	if err != nil {
		return 0, 0, err
	}
	if last != nil {
		// What is archived already (synbak status says so from the start,
		// not "0/0" until the next segment completes).
		r.archived(last.EndLSN())
	}
	slot, err := readSlot(ctx, conn, r.opts.Slot)
	if err != nil {
		return 0, 0, err
	}
	if !slot.exists {
		return 0, 0, fmt.Errorf("replication slot %q disappeared", r.opts.Slot)
	}
	if slot.restartLSN == 0 {
		return 0, 0, fmt.Errorf("%w: replication slot %q holds no WAL position: either it was created without RESERVE_WAL, or PostgreSQL invalidated it because it exceeded max_slot_wal_keep_size, and the WAL since synbak last ran is gone. Drop it (SELECT pg_drop_replication_slot('%s')), let synbak create it, and take a new base backup (synbak backup) so that restores can start after the gap", ErrPermanent, r.opts.Slot, r.opts.Slot)
	}
	if best == nil {
		tli := slot.restartTLI
		if tli == 0 {
			tli = serverTLI
		}
		s := SegmentAt(tli, slot.restartLSN, sp.segSize)
		r.log.Info("starting at the slot's restart_lsn", "lsn", s.StartLSN().String(), "timeline", tli)
		return tli, s.StartLSN(), nil
	}
	if best.StartLSN() < SegmentAt(best.TLI, slot.restartLSN, sp.segSize).StartLSN() {
		// The slot does not protect this WAL (it was dropped and
		// recreated); the server may still have it. If not, START_REPLICATION
		// says so and startError reports the gap.
		r.log.Warn("the archive ends before the slot's restart_lsn; trying to stream the WAL in between", "lsn", best.StartLSN().String(), "restart_lsn", slot.restartLSN.String())
	}
	r.log.Info("resuming after the archived WAL", "lsn", best.StartLSN().String(), "timeline", best.TLI)
	return best.TLI, best.StartLSN(), nil
}

// stream runs START_REPLICATION from start on tli until the timeline ends
// (it returns the switch), ctx is cancelled, or an error.
func (r *Receiver) stream(ctx context.Context, conn *pgconn.PgConn, sp *spool, up *uploader, tli uint32, start pglogrepl.LSN) (*timelineSwitch, error) {
	err := pglogrepl.StartReplication(ctx, conn, r.opts.Slot, start, pglogrepl.StartReplicationOptions{Timeline: int32(tli), Mode: pglogrepl.PhysicalReplication})
	if err != nil {
		if next, lsn, ok := endOfTimeline(err); ok {
			return &timelineSwitch{tli: next, switchLSN: lsn}, nil
		}
		return nil, startError(err, r.opts.Slot, start)
	}
	r.streamed = true
	r.log.Info("streaming", "lsn", start.String(), "timeline", tli)
	r.update(func(s *Status) { s.Timeline = tli; s.Streaming = true; s.LastError = "" })

	st := &streamState{sp: sp, up: up, tli: tli, pos: start, flushed: start, fin: newFinisher(sp, up)}
	defer func() {
		_ = st.fin.close()
		if st.cur != nil {
			_ = st.cur.sync()
			st.cur.f.Close()
			// Whatever ended the stream (a dropped connection, an error,
			// shutdown), the durable bytes of the open segment go to the
			// repository now, not when a server comes back.
			r.requestPartial(up, sp, st.cur.seg, st.cur.synced, st.cur.times())
		}
	}()
	// Data before start is durable by construction (archived or in the spool).
	nextStatus := time.Now()
	lastPartial := time.Now()
	rd := &receiveDeadline{parent: ctx}
	defer rd.stop()
	for {
		if time.Now().After(nextStatus) {
			if err := r.flushAndReport(ctx, conn, st); err != nil {
				return nil, err
			}
			nextStatus = time.Now().Add(r.opts.StatusInterval)
		}
		if r.opts.PartialInterval > 0 && time.Since(lastPartial) >= r.opts.PartialInterval {
			if st.cur != nil && st.cur.written > 0 && (st.cur.seg != r.partialSeg || st.cur.written > r.partialStored) {
				// Only durable bytes go into a partial object.
				if err := r.flushAndReport(ctx, conn, st); err != nil {
					return nil, err
				}
				r.requestPartial(up, sp, st.cur.seg, st.cur.synced, st.cur.times())
			}
			lastPartial = time.Now()
		}
		deadline := nextStatus
		if r.opts.PartialInterval > 0 {
			if pd := lastPartial.Add(r.opts.PartialInterval); pd.Before(deadline) {
				deadline = pd
			}
		}
		msg, err := conn.ReceiveMessage(rd.at(deadline))
		if err != nil {
			if ctx.Err() != nil {
				return nil, r.shutdown(ctx, conn, st)
			}
			if pgconn.Timeout(err) {
				continue
			}
			return nil, fmt.Errorf("receive WAL: %w", err)
		}
		sw, replied, err := r.handle(ctx, conn, st, msg, start)
		if err != nil || sw != nil {
			return sw, err
		}
		if replied {
			nextStatus = time.Now().Add(r.opts.StatusInterval)
		}
	}
}

// handle takes one message of the stream: WAL, a keepalive, the end of the
// timeline (returned as the switch to the next one) or an error. replied
// says that it sent a status update the server asked for.
func (r *Receiver) handle(ctx context.Context, conn *pgconn.PgConn, st *streamState, msg pgproto3.BackendMessage, start pglogrepl.LSN) (sw *timelineSwitch, replied bool, err error) {
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return nil, false, nil
		}
		replied, err := r.copyData(ctx, conn, st, m.Data)
		return nil, replied, err
	case *pgproto3.CopyDone:
		sw, err := r.endTimeline(ctx, conn, st)
		return sw, false, err
	case *pgproto3.ErrorResponse:
		return nil, false, startError(pgconn.ErrorResponseToPgError(m), r.opts.Slot, start)
	default:
		// NoticeResponse and the like.
		return nil, false, nil
	}
}

// copyData writes XLogData to the spool (fsynced and reported at once when
// synchronous) and notes a keepalive's server time, answering it when the
// server asks.
func (r *Receiver) copyData(ctx context.Context, conn *pgconn.PgConn, st *streamState, data []byte) (replied bool, err error) {
	switch data[0] {
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return false, fmt.Errorf("parse XLogData: %w", err)
		}
		if err := st.write(xld); err != nil {
			return false, err
		}
		r.update(func(s *Status) { s.Received = st.pos; s.ServerTime = xld.ServerTime })
		if r.opts.Synchronous {
			return false, r.flushAndReport(ctx, conn, st)
		}
		return false, nil
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return false, fmt.Errorf("parse keepalive: %w", err)
		}
		if ka.ServerWALEnd <= st.pos && st.cur != nil {
			st.cur.last = ka.ServerTime
		}
		r.update(func(s *Status) { s.ServerTime = ka.ServerTime })
		if !ka.ReplyRequested {
			return false, nil
		}
		return true, r.flushAndReport(ctx, conn, st)
	default:
		return false, fmt.Errorf("unexpected replication message type %q", data[0])
	}
}

// endTimeline ends the stream at the end of its timeline: the last segment
// is kept as a partial, and the server names the next timeline.
func (r *Receiver) endTimeline(ctx context.Context, conn *pgconn.PgConn, st *streamState) (*timelineSwitch, error) {
	if err := r.flushAndReport(ctx, conn, st); err != nil {
		return nil, err
	}
	if err := st.finishTimeline(); err != nil {
		return nil, err
	}
	res, err := pglogrepl.SendStandbyCopyDone(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("end of timeline %d: %w", st.tli, err)
	}
	if res == nil {
		return nil, fmt.Errorf("end of timeline %d: the server sent no next timeline", st.tli)
	}
	return &timelineSwitch{tli: uint32(res.Timeline), switchLSN: res.LSN}, nil
}

// shutdown makes what was received durable, reports it, stores the open
// segment as a partial object and ends the replication.
func (r *Receiver) shutdown(ctx context.Context, conn *pgconn.PgConn, st *streamState) error {
	g, gcancel := shutdown.Grace(ctx, finalReportTimeout)
	defer gcancel()
	ctx, cancel := context.WithTimeout(g, finalReportTimeout)
	defer cancel()
	if err := r.flushAndReport(ctx, conn, st); err != nil {
		r.log.Warn("final status update failed", "err", err)
	}
	if st.cur != nil {
		r.requestPartial(st.up, st.sp, st.cur.seg, st.cur.synced, st.cur.times())
	}
	_, _ = pglogrepl.SendStandbyCopyDone(ctx, conn)
	r.log.Info("WAL streaming stopped", "flushed", st.flushed.String())
	return nil
}

// flushAndReport fsyncs the open segment and tells the server how far WAL is
// written and durable. Apply is reported as 0 (invalid), like pg_receivewal.
func (r *Receiver) flushAndReport(ctx context.Context, conn *pgconn.PgConn, st *streamState) error {
	// Segments handed to the finisher come first: flush is contiguous.
	if err := st.fin.wait(); err != nil {
		return fmt.Errorf("%w (streaming stops acknowledging WAL until this is fixed)", err)
	}
	if st.cur != nil {
		if err := st.cur.sync(); err != nil {
			return fmt.Errorf("%w (streaming stops acknowledging WAL until this is fixed)", err)
		}
		st.flushed = st.cur.seg.StartLSN() + pglogrepl.LSN(st.cur.synced)
	} else {
		st.flushed = st.pos
	}
	r.noteFlushed(st.flushed)
	return sendStatus(ctx, conn, st.pos, st.flushed, false)
}

// sendStatus writes the 34-byte standby status update itself, because
// pglogrepl.SendStandbyStatusUpdate replaces a zero flush or apply position
// with the write position.
func sendStatus(ctx context.Context, conn *pgconn.PgConn, write, flush pglogrepl.LSN, reply bool) error {
	buf := make([]byte, 34)
	buf[0] = pglogrepl.StandbyStatusUpdateByteID
	binary.BigEndian.PutUint64(buf[1:], uint64(write))
	binary.BigEndian.PutUint64(buf[9:], uint64(flush))
	binary.BigEndian.PutUint64(buf[17:], 0)
	const pgEpochMicros = 946684800 * 1000000
	binary.BigEndian.PutUint64(buf[25:], uint64(time.Now().UnixMicro()-pgEpochMicros))
	if reply {
		buf[33] = 1
	}
	conn.Frontend().Send(&pgproto3.CopyData{Data: buf})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// receiveDeadline hands out one deadline context for every receive until
// the deadline moves (not a context and a timer per 128 kB message during
// catch-up).
type receiveDeadline struct {
	parent   context.Context
	ctx      context.Context
	cancel   context.CancelFunc
	deadline time.Time
}

func (d *receiveDeadline) at(deadline time.Time) context.Context {
	if d.ctx == nil || !deadline.Equal(d.deadline) {
		d.stop()
		d.ctx, d.cancel = context.WithDeadline(d.parent, deadline)
		d.deadline = deadline
	}
	return d.ctx
}

func (d *receiveDeadline) stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

// streamState is the receive loop's position and open segment.
type streamState struct {
	sp      *spool
	up      *uploader
	fin     *finisher
	tli     uint32
	pos     pglogrepl.LSN // next byte expected
	flushed pglogrepl.LSN
	cur     *segmentFile
}

// maxFinishing is how many complete segments may wait for their fsync and
// rename while the receive loop goes on writing the next one. Finishing a
// 16 MB segment (fsync, times, rename, directory fsync) took about 40 ms
// and creating the next one (with fsyncs) 10 ms: when the receive loop did
// both inline, 3.4 s of an 8 s catch-up of 1 GiB (bench/walstream) in which
// nobody read from the walsender.
const maxFinishing = 2

// finisher makes complete segments durable and hands them to the uploader,
// in order, in its own goroutine, so that the receive loop keeps reading
// while the disk works. Nothing it holds is reported as flushed before wait
// says it is done.
type finisher struct {
	sp   *spool
	up   *uploader
	jobs chan finishJob
	done chan struct{} // closed when the goroutine has ended

	mu   sync.Mutex
	err  error         // the first failure; later jobs are dropped
	last chan struct{} // closed when the last submitted job is done
}

type finishJob struct {
	sf   *segmentFile
	name string
	done chan struct{}
}

func newFinisher(sp *spool, up *uploader) *finisher {
	f := &finisher{sp: sp, up: up, jobs: make(chan finishJob, maxFinishing-1), done: make(chan struct{})}
	go f.run()
	return f
}

func (f *finisher) run() {
	defer close(f.done)
	for j := range f.jobs {
		f.mu.Lock()
		failed := f.err != nil
		f.mu.Unlock()
		if failed {
			j.sf.f.Close() // left as .partial: streaming resumes there
		} else if err := f.sp.finish(j.sf, j.name); err != nil {
			f.mu.Lock()
			f.err = err
			f.mu.Unlock()
		} else {
			f.up.kick()
		}
		close(j.done)
	}
}

// submit queues a complete segment file (blocking while maxFinishing are
// queued) and returns the first error of an earlier job.
func (f *finisher) submit(sf *segmentFile, name string) error {
	if err := f.failed(); err != nil {
		sf.f.Close()
		return err
	}
	j := finishJob{sf: sf, name: name, done: make(chan struct{})}
	f.mu.Lock()
	f.last = j.done
	f.mu.Unlock()
	f.jobs <- j
	return nil
}

func (f *finisher) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// wait returns when every submitted segment is finished (or failed).
func (f *finisher) wait() error {
	f.mu.Lock()
	last := f.last
	f.mu.Unlock()
	if last != nil {
		<-last
	}
	return f.failed()
}

// close waits for the queued jobs and ends the goroutine.
func (f *finisher) close() error {
	close(f.jobs)
	<-f.done
	return f.failed()
}

// write stores one XLogData message, splitting it at segment boundaries.
func (st *streamState) write(x pglogrepl.XLogData) error {
	if x.WALStart != st.pos {
		return fmt.Errorf("WAL stream jumped from %s to %s", st.pos, x.WALStart)
	}
	when := x.ServerTime
	data := x.WALData
	for len(data) > 0 {
		if st.cur == nil {
			seg := SegmentAt(st.tli, st.pos, st.sp.segSize)
			if st.pos != seg.StartLSN() {
				return fmt.Errorf("WAL stream starts at %s, inside segment %s with no open file", st.pos, seg.Name())
			}
			f, err := st.sp.create(seg)
			if err != nil {
				return err
			}
			st.cur = f
			f.first = when
		}
		room := st.sp.segSize - st.cur.written
		n := min(uint64(len(data)), room)
		if _, err := st.cur.f.WriteAt(data[:n], int64(st.cur.written)); err != nil {
			return fmt.Errorf("write %s: %w", st.cur.f.Name(), diskErr(err))
		}
		st.cur.written += n
		st.cur.last = when
		st.pos += pglogrepl.LSN(n)
		data = data[n:]
		if st.cur.written == st.sp.segSize {
			sf := st.cur
			st.cur = nil
			if err := st.fin.submit(sf, sf.seg.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishTimeline turns the open segment of an ended timeline into a
// finished partial file for upload.
func (st *streamState) finishTimeline() error {
	if err := st.fin.wait(); err != nil {
		return err
	}
	if st.cur == nil {
		return nil
	}
	name := fmt.Sprintf("%s%s%08X", st.cur.seg.Name(), partialMarker, st.cur.written)
	if err := st.sp.finish(st.cur, name); err != nil {
		return err
	}
	st.cur = nil
	st.up.kick()
	return nil
}

func showSegmentSize(ctx context.Context, conn *pgconn.PgConn) (uint64, error) {
	res, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("SHOW wal_segment_size: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return 0, errors.New("SHOW wal_segment_size: unexpected reply")
	}
	return parseSize(string(res[0].Rows[0][0]))
}

// parseSize parses PostgreSQL's "16MB" style.
func parseSize(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(n), 10, 64)
			if err != nil {
				break
			}
			return v * u.mult, nil
		}
	}
	return 0, fmt.Errorf("cannot parse wal_segment_size %q", s)
}

// storeHistory archives timeline tli's history file.
func storeHistory(ctx context.Context, conn *pgconn.PgConn, rp *repo.Repo, tli uint32) error {
	if tli <= 1 {
		return nil
	}
	name := HistoryObjectName(tli)
	if _, err := rp.Stat(ctx, name); err == nil {
		return nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
	}
	if _, err := rp.Put(ctx, name, strings.NewReader(string(h.Content)), map[string]string{AttrTimeline: strconv.FormatUint(uint64(tli), 10)}); err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	return nil
}

func endOfTimeline(err error) (uint32, pglogrepl.LSN, bool) {
	tli, lsn, ok := pglogrepl.IsErrEndTimeline(err)
	return uint32(tli), lsn, ok
}

func isSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}

// startError explains START_REPLICATION failures.
func startError(err error, slot string, start pglogrepl.LSN) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "55006":
			return fmt.Errorf("replication slot %q is in use by another process (%s): stop the other synbak or pg_receivewal using it, or choose another postgres.slot: %w", slot, pgErr.Message, err)
		case pgErr.Code == "58P01" || strings.Contains(pgErr.Message, "has already been removed") ||
			(pgErr.Code == "55000" && strings.Contains(pgErr.Message+pgErr.Detail, "invalidated")):
			return fmt.Errorf("%w: the server no longer has the WAL at %s (%s): the archive has a gap; take a new base backup (synbak backup) so that restores can start after it, and check max_slot_wal_keep_size: %w", ErrPermanent, start, pgErr.Message, err)
		}
	}
	return fmt.Errorf("START_REPLICATION at %s: %w", start, err)
}
