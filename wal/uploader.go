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
	type result struct {
		e       spoolEntry
		partial *partialReq
		err     error
	}
	results := make(chan result, uploadParallelism)
	inflight := map[string]bool{} // spool file names being stored
	busy := 0
	partialBusy := false
	drainCh := u.drainCh
	draining := false
	var drainErr error
	retry := time.Second
	var highest pglogrepl.LSN       // the highest end of WAL stored by this run
	var retryTimer <-chan time.Time // set while waiting to retry after a failure
	for {
		idle := true
		if retryTimer == nil && drainErr == nil && ctx.Err() == nil {
			entries, err := u.sp.pending()
			if err == nil {
				u.obs.spooled(len(entries))
			}
			if err != nil {
				if draining {
					drainErr = err
				} else {
					u.log.Error("listing the WAL spool failed; retrying", "err", err, "retry_in", retry)
					retryTimer = time.After(retry)
				}
			}
			for _, e := range entries {
				if inflight[e.file] {
					continue
				}
				idle = false
				if busy == uploadParallelism {
					break
				}
				inflight[e.file] = true
				busy++
				go func() { results <- result{e: e, err: u.storeFinished(ctx, e)} }()
			}
			if idle && busy < uploadParallelism && !partialBusy {
				u.mu.Lock()
				var req *partialReq
				for _, p := range u.partial {
					if req == nil || p.seg.TLI < req.seg.TLI || (p.seg.TLI == req.seg.TLI && p.seg.No < req.seg.No) {
						req = p
					}
				}
				if req != nil {
					delete(u.partial, req.seg)
				}
				u.mu.Unlock()
				if req != nil {
					partialBusy = true
					busy++
					go func() { results <- result{partial: req, err: u.storeOpen(ctx, *req)} }()
				}
			}
		}
		if busy == 0 {
			if ctx.Err() != nil {
				return nil
			}
			if draining && (idle || drainErr != nil) {
				u.mu.Lock()
				more := len(u.partial) > 0
				u.mu.Unlock()
				if !more || drainErr != nil {
					return drainErr
				}
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
			draining = true
			drainCh = nil
			retryTimer = nil // one more attempt at once
		case <-retryTimer:
			retryTimer = nil
		case r := <-results:
			busy--
			if r.partial != nil {
				partialBusy = false
			} else {
				delete(inflight, r.e.file)
			}
			if r.err != nil {
				u.obs.uploadResult(r.err)
				if r.partial != nil {
					u.mu.Lock()
					if _, ok := u.partial[r.partial.seg]; !ok {
						u.partial[r.partial.seg] = r.partial
					}
					u.mu.Unlock()
				}
				if draining || ctx.Err() != nil {
					if drainErr == nil && ctx.Err() == nil {
						drainErr = r.err
					}
					continue
				}
				u.log.Error("storing WAL in the repository failed; retrying (the spool keeps it)", "err", r.err, "retry_in", retry)
				if retryTimer == nil {
					retryTimer = time.After(retry)
					retry = min(retry*2, 30*time.Second)
				}
				continue
			}
			u.obs.uploadResult(nil)
			retry = time.Second
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
			// complete out of order; a segment is finished, in order,
			// before any later byte is acknowledged or stored).
			highest = max(highest, end)
			if entries, err := u.sp.pending(); err == nil {
				u.obs.spooled(len(entries))
				stored := highest
				if len(entries) > 0 && entries[0].seg.StartLSN() < stored {
					stored = entries[0].seg.StartLSN()
				}
				u.obs.stored(stored)
			}
		}
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
	_, err = u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(e.valid)), u.attrs(e.seg, e.valid, u.sp.readTimes(e.file)), repo.WithEncoderCache(u.encoders))
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
	if _, err := u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(req.valid)), u.attrs(req.seg, req.valid, req.times), repo.WithEncoderCache(u.encoders)); err != nil {
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
