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

// settingsObject records what reading the archive needs to know.
const settingsObject = "wal/settings.json"

// Settings are the archive-wide facts stored in wal/settings.json.
type Settings struct {
	SystemID    string `json:"system_id"`
	SegmentSize uint64 `json:"segment_size"`
}

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

// LoadSettings reads wal/settings.json.
func LoadSettings(ctx context.Context, rp *repo.Repo) (Settings, error) {
	rd, err := rp.Get(ctx, settingsObject)
	if err != nil {
		return Settings{}, err
	}
	defer rd.Close()
	var s Settings
	b, err := io.ReadAll(rd)
	if err != nil {
		return Settings{}, err
	}
	if err := json.Unmarshal(b, &s); err != nil || s.SegmentSize == 0 {
		return Settings{}, fmt.Errorf("%s: invalid content", settingsObject)
	}
	return s, nil
}

// lastArchivedSegment returns the newest complete segment in the repository
// (highest timeline, then highest number), or nil.
func lastArchivedSegment(ctx context.Context, rp *repo.Repo, segSize uint64) (*Segment, error) {
	var best *Segment
	err := rp.List(ctx, prefix, func(oi objectInfo) error {
		seg, kind, _ := parseObjectName(oi.Name, segSize)
		if kind != kindSegment {
			return nil
		}
		if best == nil || seg.TLI > best.TLI || (seg.TLI == best.TLI && seg.No > best.No) {
			s := seg
			best = &s
		}
		return nil
	})
	return best, err
}

// uploadParallelism is how many finished segments are stored at once.
const uploadParallelism = 2

// uploader moves finished spool files (and snapshots of the open segment)
// into the repository.
type uploader struct {
	repo       *repo.Repo
	sp         *spool
	sysid      string
	log        *slog.Logger
	onArchived func(pglogrepl.LSN)

	kickCh  chan struct{}
	drainCh chan struct{}
	once    sync.Once

	mu      sync.Mutex
	partial *partialReq
}

type partialReq struct {
	seg   Segment
	valid uint64
	times segTimes
}

func newUploader(rp *repo.Repo, sp *spool, sysid string, log *slog.Logger, onArchived func(pglogrepl.LSN)) *uploader {
	return &uploader{repo: rp, sp: sp, sysid: sysid, log: log, onArchived: onArchived,
		kickCh: make(chan struct{}, 1), drainCh: make(chan struct{})}
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
	u.partial = &partialReq{seg: seg, valid: valid, times: t}
	u.mu.Unlock()
	u.kick()
}

func (u *uploader) run(ctx context.Context) error {
	retry := time.Second
	for {
		draining := false
		select {
		case <-ctx.Done():
			return nil
		case <-u.kickCh:
		case <-u.drainCh:
			draining = true
		}
		err := u.pass(ctx)
		if err != nil {
			if draining || ctx.Err() != nil {
				return err
			}
			u.log.Error("storing WAL in the repository failed; retrying (the spool keeps it)", "err", err, "retry_in", retry)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(retry):
			}
			retry = min(retry*2, 30*time.Second)
			u.kick()
			continue
		}
		retry = time.Second
		if draining {
			return nil
		}
	}
}

// pass stores every finished spool file, oldest first, then the latest
// partial snapshot.
func (u *uploader) pass(ctx context.Context) error {
	entries, err := u.sp.pending()
	if err != nil {
		return err
	}
	// Two at a time: during catch-up this uses both cores (compression is
	// single-threaded per object). Progress is reported in order.
	for i := 0; i < len(entries); i += uploadParallelism {
		batch := entries[i:min(i+uploadParallelism, len(entries))]
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		for j, e := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j] = u.storeFinished(ctx, e)
			}()
		}
		wg.Wait()
		for j, e := range batch {
			if errs[j] != nil {
				return errs[j]
			}
			if e.valid == u.sp.segSize {
				u.onArchived(e.seg.EndLSN())
			}
		}
	}
	u.mu.Lock()
	req := u.partial
	u.partial = nil
	u.mu.Unlock()
	if req != nil {
		if err := u.storeOpen(ctx, *req); err != nil {
			u.mu.Lock()
			if u.partial == nil {
				u.partial = req
			}
			u.mu.Unlock()
			return err
		}
	}
	return nil
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
	_, err = u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(e.valid)), u.attrs(e.seg, e.valid, u.sp.readTimes(e.file)))
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
	if _, err := u.repo.Put(ctx, name, io.NewSectionReader(f, 0, int64(req.valid)), u.attrs(req.seg, req.valid, req.times)); err != nil {
		if repo.IsConflict(err) {
			u.log.Error("partial segment differs from the repository's copy; kept the repository's", "object", name, "err", err)
			return nil
		}
		return fmt.Errorf("store %s: %w", name, err)
	}
	return u.deleteOlderPartials(ctx, req.seg, req.valid, false)
}

// deleteOlderPartials removes partial objects of seg superseded by one with
// valid bytes (or by the complete segment).
func (u *uploader) deleteOlderPartials(ctx context.Context, seg Segment, valid uint64, all bool) error {
	var old []string
	err := u.repo.List(ctx, seg.ObjectName()+partialMarker, func(oi objectInfo) error {
		_, kind, v := parseObjectName(oi.Name, u.sp.segSize)
		if kind == kindPartial && (all || v < valid) {
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
