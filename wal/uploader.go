package wal

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
)

type objectInfo = storage.ObjectInfo

func storeSettings(ctx context.Context, rp *repo.Repo, sysid string, segSize uint64) error {
	b, _ := json.Marshal(Settings{SystemID: sysid, SegmentSize: segSize})
	if _, err := rp.Put(ctx, settingsObject, bytes.NewReader(b), nil); err != nil {
		if repo.IsConflict(err) {
			return fmt.Errorf("%w: the repository's WAL settings differ from this server's (wal_segment_size %d): %w", ErrPermanent, segSize, err)
		}
		return fmt.Errorf("store %s: %w", settingsObject, err)
	}
	return nil
}

// uploadParallelism is how many finished segments are stored at once, and
// compressParallelism how many of them compress at once (one per core: the
// rest wait in repo.Put for their turn). The others' backend writes and
// fsyncs (tens of ms per segment) overlap with compression; with two
// workers that each waited for their own fsyncs, zstd catch-up kept about
// 1.5 of 2 cores busy (bench/walstream).
const (
	uploadParallelism   = 4
	compressParallelism = 2
)

// uploader moves finished spool files (and snapshots of the open segment)
// into the repository.
type uploader struct {
	repo  *repo.Repo
	sp    *spool
	sysid string
	log   *slog.Logger
	obs   uploadObserver

	kickCh  chan struct{}
	drainCh chan struct{}
	once    sync.Once
	// encoders keeps the workers' compressors: with the repository's
	// sync.Pool, catch-up allocated new multi-MB encoders all the time and
	// peak RSS went past 32 MB.
	encoders *repo.EncoderCache

	mu      sync.Mutex
	partial map[Segment]*partialReq // the newest request per open segment
}

// uploadObserver hears of the uploader's progress (the Receiver).
type uploadObserver interface {
	// archived: a complete segment ending at end is stored.
	archived(end pglogrepl.LSN)
	// stored: all WAL before lsn is in the repository.
	stored(lsn pglogrepl.LSN)
	// uploadResult: the outcome of the last upload (nil: success).
	uploadResult(err error)
	// spooled: how many finished files wait in the spool.
	spooled(n int)
}

type partialReq struct {
	seg   Segment
	valid uint64
	times segTimes
}

func newUploader(rp *repo.Repo, sp *spool, sysid string, log *slog.Logger, obs uploadObserver) *uploader {
	return &uploader{repo: rp, sp: sp, sysid: sysid, log: log, obs: obs, partial: map[Segment]*partialReq{},
		kickCh: make(chan struct{}, 1), drainCh: make(chan struct{}),
		encoders: repo.NewEncoderCache(compressParallelism)}
}

func (u *uploader) kick() {
	select {
	case u.kickCh <- struct{}{}:
	default:
	}
}

// drain asks run to store what is pending and return.
func (u *uploader) drain() { u.once.Do(func() { close(u.drainCh) }) }

// storePartial asks for a snapshot of the open segment's first valid bytes.
func (u *uploader) storePartial(seg Segment, valid uint64, t segTimes) {
	u.mu.Lock()
	if old := u.partial[seg]; old == nil || old.valid < valid {
		u.partial[seg] = &partialReq{seg: seg, valid: valid, times: t}
	}
	u.mu.Unlock()
	u.kick()
}

// run stores finished spool files as they appear, uploadParallelism at a
// time, oldest first, then the latest snapshot of the open segment. A
// worker starts as soon as another ends, not when a whole batch is done. It
// returns after drain once everything is stored, or with the first error
// while draining.
func (u *uploader) run(ctx context.Context) error {
	s := &uploadScheduler{u: u, ctx: ctx, results: make(chan uploadResult, uploadParallelism), inflight: map[string]bool{}, retry: time.Second}
	drainCh := u.drainCh
	for {
		idle := true
		if s.retryTimer == nil && s.drainErr == nil && ctx.Err() == nil {
			idle = s.start()
		}
		if s.busy == 0 {
			if ctx.Err() != nil {
				return nil
			}
			if s.draining && (idle || s.drainErr != nil) && (s.drainErr != nil || !u.partialPending()) {
				return s.drainErr
			}
		}
		done := ctx.Done()
		if ctx.Err() != nil {
			done = nil // only the workers' results are awaited now
		}
		select {
		case <-done:
		case <-u.kickCh:
		case <-drainCh:
			s.draining = true
			drainCh = nil
			s.retryTimer = nil // one more attempt at once
		case <-s.retryTimer:
			s.retryTimer = nil
		case r := <-s.results:
			s.finished(r)
		}
	}
}

// uploadResult is one worker's outcome: a finished spool file (e) or a
// snapshot of the open segment (partial) stored, or err.
type uploadResult struct {
	e       spoolEntry
	partial *partialReq
	err     error
}

// uploadScheduler is the state of one run: the workers in flight, the
// retry after a failure, the drain, and the highest end of WAL stored.
type uploadScheduler struct {
	u           *uploader
	ctx         context.Context
	results     chan uploadResult
	inflight    map[string]bool // spool file names being stored
	busy        int
	partialBusy bool
	draining    bool
	drainErr    error
	retry       time.Duration
	retryTimer  <-chan time.Time // set while waiting to retry after a failure
	highest     pglogrepl.LSN    // the highest end of WAL stored by this run
}

// partialPending reports whether a snapshot of an open segment waits.
func (u *uploader) partialPending() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.partial) > 0
}

// start starts workers for the finished files not yet in flight, oldest
// first, and, when none waits, for the oldest open segment's snapshot. It
// reports whether no finished file waits (idle).
func (s *uploadScheduler) start() (idle bool) {
	u := s.u
	idle = true
	entries, err := u.sp.pending()
	if err == nil {
		u.obs.spooled(len(entries))
	}
	if err != nil {
		if s.draining {
			s.drainErr = err
		} else {
			u.log.Error("listing the WAL spool failed; retrying", "err", err, "retry_in", s.retry)
			s.retryTimer = time.After(s.retry)
		}
	}
	for _, e := range entries {
		if s.inflight[e.file] {
			continue
		}
		idle = false
		if s.busy == uploadParallelism {
			break
		}
		s.inflight[e.file] = true
		s.busy++
		go func() { s.results <- uploadResult{e: e, err: u.storeFinished(s.ctx, e)} }()
	}
	if idle && s.busy < uploadParallelism && !s.partialBusy {
		if req := u.takePartial(); req != nil {
			s.partialBusy = true
			s.busy++
			go func() { s.results <- uploadResult{partial: req, err: u.storeOpen(s.ctx, *req)} }()
		}
	}
	return idle
}

// takePartial removes and returns the oldest open segment's newest
// snapshot request (nil: none).
func (u *uploader) takePartial() *partialReq {
	u.mu.Lock()
	defer u.mu.Unlock()
	var req *partialReq
	for _, p := range u.partial {
		if req == nil || p.seg.TLI < req.seg.TLI || (p.seg.TLI == req.seg.TLI && p.seg.No < req.seg.No) {
			req = p
		}
	}
	if req != nil {
		delete(u.partial, req.seg)
	}
	return req
}

// finished takes a worker's result: a failure is retried (or, while
// draining, ends the drain); a success moves the archived and stored
// positions.
func (s *uploadScheduler) finished(r uploadResult) {
	u := s.u
	s.busy--
	if r.partial != nil {
		s.partialBusy = false
	} else {
		delete(s.inflight, r.e.file)
	}
	if r.err != nil {
		s.failed(r)
		return
	}
	u.obs.uploadResult(nil)
	s.retry = time.Second
	var end pglogrepl.LSN
	if r.partial == nil {
		if r.e.valid == u.sp.segSize {
			u.obs.archived(r.e.seg.EndLSN())
		}
		end = r.e.seg.StartLSN() + pglogrepl.LSN(r.e.valid)
	} else {
		end = r.partial.seg.StartLSN() + pglogrepl.LSN(r.partial.valid)
	}
	// Everything before the highest end stored so far is in the
	// repository, except finished files that still wait (uploads
	// complete out of order; a segment is finished, in order, before any
	// later byte is acknowledged or stored).
	s.highest = max(s.highest, end)
	if entries, err := u.sp.pending(); err == nil {
		u.obs.spooled(len(entries))
		stored := s.highest
		if len(entries) > 0 && entries[0].seg.StartLSN() < stored {
			stored = entries[0].seg.StartLSN()
		}
		u.obs.stored(stored)
	}
}

// failed handles a worker's error: the snapshot request goes back (unless
// a newer one came), and the upload is retried after a growing delay, or,
// while draining or stopping, the drain ends with the first error.
func (s *uploadScheduler) failed(r uploadResult) {
	u := s.u
	u.obs.uploadResult(r.err)
	if r.partial != nil {
		u.mu.Lock()
		if _, ok := u.partial[r.partial.seg]; !ok {
			u.partial[r.partial.seg] = r.partial
		}
		u.mu.Unlock()
	}
	if s.draining || s.ctx.Err() != nil {
		if s.drainErr == nil && s.ctx.Err() == nil {
			s.drainErr = r.err
		}
		return
	}
	u.log.Error("storing WAL in the repository failed; retrying (the spool keeps it)", "err", r.err, "retry_in", s.retry)
	if s.retryTimer == nil {
		s.retryTimer = time.After(s.retry)
		s.retry = min(s.retry*2, 30*time.Second)
	}
}

func (u *uploader) attrs(seg Segment, valid uint64, t segTimes) map[string]string {
	a := map[string]string{
		AttrSystemID: u.sysid,
		AttrTimeline: strconv.FormatUint(uint64(seg.TLI), 10),
		AttrStartLSN: seg.StartLSN().String(),
		AttrEndLSN:   (seg.StartLSN() + pglogrepl.LSN(valid)).String(),
		AttrSegSize:  strconv.FormatUint(seg.Size, 10),
	}
	if t.First != "" {
		a[AttrFirstTime] = t.First
	}
	if t.Last != "" {
		a[AttrLastTime] = t.Last
	}
	return a
}

func (u *uploader) storeFinished(ctx context.Context, e spoolEntry) error {
	f, err := os.Open(u.sp.path(e.file))
	if err != nil {
		return err
	}
	defer f.Close()
	name := e.seg.ObjectName()
	complete := e.valid == u.sp.segSize
	if !complete {
		name = e.seg.PartialObjectName(e.valid)
	}
	_, err = u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(e.valid)), u.attrs(e.seg, e.valid, u.sp.readTimes(e.file)), repo.WithEncoderCache(u.encoders), repo.FastChecksum())
	if repo.IsConflict(err) {
		f.Close()
		aside, aerr := u.sp.setAside(e.file, time.Now().UTC().Format("20060102T150405Z"))
		u.log.Error("WAL SEGMENT DIFFERS FROM THE REPOSITORY'S COPY: the repository's copy is kept and never overwritten; the received copy is set aside for inspection. Check that this repository belongs to this server and timeline.",
			"segment", e.seg.Name(), "object", name, "set_aside", aside, "err", err)
		if aerr != nil {
			return fmt.Errorf("set aside %s: %w", e.file, aerr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	if err := u.deleteOlderPartials(ctx, e.seg, e.valid, complete); err != nil {
		return err
	}
	if err := u.sp.remove(e.file); err != nil {
		return err
	}
	if complete {
		u.log.Debug("segment stored", "segment", e.seg.Name())
	} else {
		u.log.Info("stored the last, partial segment of an ended timeline", "segment", e.seg.Name(), "timeline", e.seg.TLI)
	}
	return nil
}

// storeOpen stores a snapshot of the open segment as a partial object.
func (u *uploader) storeOpen(ctx context.Context, req partialReq) error {
	f, err := os.Open(u.sp.path(req.seg.Name() + ".partial"))
	if os.IsNotExist(err) {
		return nil // completed meanwhile: the complete segment supersedes it
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := u.repo.Stat(ctx, req.seg.ObjectName()); err == nil {
		return nil
	}
	name := req.seg.PartialObjectName(req.valid)
	if _, err := u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(req.valid)), u.attrs(req.seg, req.valid, req.times), repo.WithEncoderCache(u.encoders), repo.FastChecksum()); err != nil {
		if repo.IsConflict(err) {
			u.log.Error("partial segment differs from the repository's copy; kept the repository's", "object", name, "err", err)
			return nil
		}
		return fmt.Errorf("store %s: %w", name, err)
	}
	// The segment may have been completed and stored while this snapshot
	// was being stored, its superseded partials deleted before this one
	// existed: then this one goes too (the complete one's deletion ran
	// either after it was stored, or before this check).
	if _, err := u.repo.Stat(ctx, req.seg.ObjectName()); err == nil {
		return u.deleteOlderPartials(ctx, req.seg, 0, true)
	}
	return u.deleteOlderPartials(ctx, req.seg, req.valid, false)
}

// deleteOlderPartials removes partial objects of seg superseded by one with
// valid bytes (or by the complete segment).
func (u *uploader) deleteOlderPartials(ctx context.Context, seg Segment, valid uint64, all bool) error {
	var old []string
	err := u.repo.List(ctx, seg.ObjectName()+partialMarker, func(oi objectInfo) error {
		_, kind, v := parseObjectName(oi.Name, u.sp.segSize)
		if kind == KindPartial && (all || v < valid) {
			old = append(old, oi.Name)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range old {
		if err := u.repo.Delete(ctx, n); err != nil {
			return err
		}
	}
	return nil
}
