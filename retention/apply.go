package retention

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/mediawatch"
)

// Result is what Apply deleted.
type Result struct {
	// Backups and Dumps count backups and dumps deleted completely.
	Backups int `json:"backups"`
	Dumps   int `json:"dumps"`
	// WAL, Media and Config count objects deleted.
	WAL    int `json:"wal_objects"`
	Media  int `json:"media_objects"`
	Config int `json:"config_objects"`
	// Objects counts every object deleted (markers not counted), Bytes
	// their stored size.
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Skipped counts media and config objects the plan named that an
	// index entry stored since then needs: kept.
	Skipped int `json:"skipped"`
}

// Apply deletes what p names, in the crash-safe order of the package doc:
// backups (oldest first, an incremental before the members of its chain;
// each marked, then its backup.json, then the rest),
// then dumps (likewise with dump.json), then WAL (ascending names), then
// media and config objects that the
// indexes, read again now, still do not need. It stops at the first error;
// running NewPlan and Apply again completes an interrupted prune. log may
// be nil.
func Apply(ctx context.Context, r *repo.Repo, p Plan, log *slog.Logger) (Result, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var res Result
	if p.Empty() {
		return res, nil
	}
	for _, d := range p.DeleteDumps {
		if d.Complete && len(p.KeptDumps) == 0 {
			return res, errors.New("retention: plan deletes a complete dump but keeps none (not made by NewPlan?)")
		}
	}
	if len(p.Kept) == 0 {
		// Without a kept backup only leftovers of an interrupted prune
		// may go (see NewPlan).
		for _, b := range p.Delete {
			if b.Complete {
				return res, errors.New("retention: plan deletes a complete backup but keeps none (not made by NewPlan?)")
			}
		}
		if len(p.walObjs) > 0 || p.Media.Objects > 0 || p.Config.Objects > 0 {
			return res, errors.New("retention: plan deletes objects but keeps no backup (not made by NewPlan?)")
		}
	}

	if err := checkDependents(ctx, r, p); err != nil {
		return res, err
	}

	// (1) Backups, then (2) dumps, oldest first: a backup without
	// backup.json (a dump without dump.json) is offered by nothing.
	for _, b := range p.Delete {
		if err := deleteSet(ctx, r, b, "backup", basebackup.MetaName(b.ID), MarkerName(b.ID), &res); err != nil {
			return res, interrupted(err)
		}
		res.Backups++
		log.Info("deleted base backup", "backup", b.ID, "complete", b.Complete, "objects", b.Objects, "bytes", b.Bytes, "reason", b.Reason)
	}
	for _, d := range p.DeleteDumps {
		if err := deleteSet(ctx, r, d, "dump", dump.MetaName(d.ID), DumpMarkerName(d.ID), &res); err != nil {
			return res, interrupted(err)
		}
		res.Dumps++
		log.Info("deleted dump", "dump", d.ID, "complete", d.Complete, "objects", d.Objects, "bytes", d.Bytes, "reason", d.Reason)
	}

	// (3) WAL, ascending.
	for _, oi := range p.walObjs {
		if err := r.Delete(ctx, oi.Name); err != nil {
			return res, interrupted(fmt.Errorf("delete WAL: %w", err))
		}
		res.WAL++
		res.Objects++
		res.Bytes += oi.Size
	}
	for _, w := range p.WAL {
		log.Info("deleted WAL", "timeline", w.Timeline, "first", w.First, "last", w.Last, "objects", w.Objects, "bytes", w.Bytes)
	}

	// (4) Media and config objects no index entry needs, checked again.
	var lostErr error
	if p.Media.Objects > 0 {
		need, _, err := mediaNeeded(ctx, r, p.Horizon)
		if err != nil {
			return res, interrupted(err)
		}
		gone, err := deleteUnneeded(ctx, r, p.Media.objs, mediaPrefix, mediaName, need, &res)
		res.Media += len(gone)
		if err != nil {
			return res, interrupted(err)
		}
		log.Info("deleted media objects no restore inside the window needs", "objects", len(gone))
		// Reported after the config objects are done.
		lostErr = checkMedia(ctx, r, p.Horizon, gone)
	}
	if p.Config.Objects > 0 {
		need, _, err := configNeeded(ctx, r, p.Horizon)
		if err != nil {
			return res, interrupted(err)
		}
		gone, err := deleteUnneeded(ctx, r, p.Config.objs, configPrefix, configName, need, &res)
		res.Config += len(gone)
		if err != nil {
			return res, interrupted(err)
		}
		log.Info("deleted config objects no restore inside the window needs", "objects", len(gone))
	}
	if lostErr != nil {
		return res, interrupted(lostErr)
	}
	return res, nil
}

// interrupted explains an error that stopped Apply: what is deleted so far
// keeps the window restorable, and prune again finishes the job.
func interrupted(err error) error {
	if errors.Is(err, errLost) {
		return err
	}
	return fmt.Errorf("%w (prune stopped: the repository still restores the whole window; run prune again to finish)", err)
}

// errLost marks checkMedia's report.
var errLost = errors.New("media files recorded while prune ran reference deleted objects")

// del deletes name, counting it in res with its size from objs.
func del(ctx context.Context, r *repo.Repo, name string, res *Result, objs []storage.ObjectInfo) error {
	if err := r.Delete(ctx, name); err != nil {
		return err
	}
	for _, oi := range objs {
		if oi.Name == name {
			res.Objects++
			res.Bytes += oi.Size
		}
	}
	return nil
}

// mark stores the marker (name) that makes a backup without backup.json,
// or a dump without dump.json, a leftover of prune. Its content is fixed,
// so storing it again succeeds.
func mark(ctx context.Context, r *repo.Repo, name, kind, id string) error {
	data, _ := json.Marshal(map[string]string{"id": id, "note": "synbak prune is deleting this " + kind})
	if _, err := r.Put(ctx, name, bytes.NewReader(data), map[string]string{"kind": "prune-marker"}); err != nil {
		return fmt.Errorf("mark %s %s for deletion: %w", kind, id, err)
	}
	return nil
}

// deleteUnneeded deletes the objects need does not name and returns the
// sha256s deleted.
func deleteUnneeded(ctx context.Context, r *repo.Repo, objs []storage.ObjectInfo, prefix string, nameOf func(string) string, need map[string]bool, res *Result) (map[string]bool, error) {
	gone := map[string]bool{}
	for _, oi := range objs {
		sha := shaOf(oi.Name, prefix, nameOf)
		if need[sha] {
			res.Skipped++
			continue
		}
		if err := r.Delete(ctx, oi.Name); err != nil {
			return gone, fmt.Errorf("delete %s: %w", oi.Name, err)
		}
		gone[sha] = true
		res.Objects++
		res.Bytes += oi.Size
	}
	return gone, nil
}

// checkMedia reads the media index once more after the deletions: a file
// the media watcher recorded meanwhile with the content of a deleted
// object (it stores no object it finds already stored) has no copy, and
// the watcher will not copy it again while its size and modification time
// are unchanged. That is reported with the paths to touch.
func checkMedia(ctx context.Context, r *repo.Repo, horizon time.Time, gone map[string]bool) error {
	if len(gone) == 0 {
		return nil
	}
	need, _, err := mediaNeeded(ctx, r, horizon)
	if err != nil {
		return err
	}
	lost := map[string]bool{}
	for sha := range gone {
		if need[sha] {
			lost[sha] = true
		}
	}
	if len(lost) == 0 {
		return nil
	}
	last := map[string]mediawatch.Event{}
	if _, err := mediawatch.ReadIndex(ctx, r, func(ev mediawatch.Event) error {
		last[ev.Path] = ev
		return nil
	}); err != nil {
		return err
	}
	var paths []string
	for p, ev := range last {
		if ev.Event == mediawatch.Added && lost[ev.SHA256] {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	if len(paths) == 0 {
		return fmt.Errorf("%w (%d objects), by files deleted since", errLost, len(lost))
	}
	return fmt.Errorf("%w (%d objects): touch %s in the media store so that they are copied again",
		errLost, len(lost), strings.Join(paths, ", "))
}

// deleteSet deletes a backup's or a dump's objects: the marker first and
// the metadata next for a complete one (from then on nothing offers it),
// then the rest, the marker last.
func deleteSet(ctx context.Context, r *repo.Repo, b Backup, kind, metaName, markerName string, res *Result) error {
	if b.Complete {
		if err := mark(ctx, r, markerName, kind, b.ID); err != nil {
			return err
		}
		if err := del(ctx, r, metaName, res, b.objs); err != nil {
			return fmt.Errorf("delete %s %s: %w", kind, b.ID, err)
		}
	}
	for _, oi := range b.objs {
		if oi.Name == metaName || oi.Name == markerName {
			continue
		}
		if err := del(ctx, r, oi.Name, res, b.objs); err != nil {
			return fmt.Errorf("delete %s %s: %w", kind, b.ID, err)
		}
	}
	if err := r.Delete(ctx, markerName); err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, b.ID, err)
	}
	return nil
}

// errNeeded marks a plan that would delete a backup that a backup it keeps
// (perhaps one taken since the plan) depends on.
var errNeeded = errors.New("retention: a backup the plan deletes is needed by an incremental backup it keeps")

// IsNeeded reports whether Apply refused a plan because an incremental
// backup it does not delete depends on one it does (run prune again: a new
// plan keeps the chain).
func IsNeeded(err error) bool { return errors.Is(err, errNeeded) }

// checkDependents reads the complete backups again and refuses the plan when
// one it does not delete has a chain naming one it does: an incremental
// backup taken on top of a backup after the plan was made.
func checkDependents(ctx context.Context, r *repo.Repo, p Plan) error {
	if len(p.Delete) == 0 {
		return nil
	}
	del := map[string]bool{}
	for _, b := range p.Delete {
		del[b.ID] = true
	}
	all, err := basebackup.List(ctx, r)
	if err != nil {
		return err
	}
	for _, b := range all {
		if del[b.ID] {
			continue
		}
		for _, id := range b.Chain {
			if del[id] {
				return fmt.Errorf("%w: %s needs %s", errNeeded, b.ID, id)
			}
		}
	}
	return nil
}
