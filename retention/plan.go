package retention

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/wal"
)

// AbandonedAfter is how long an incomplete backup or dump (and a media or
// config object no index entry names) must have been left unchanged before prune
// deletes it: a backup still running or an upload whose index entry is not
// written yet is never older.
const AbandonedAfter = 24 * time.Hour

// markerFile is the object prune writes into a backup's prefix before it
// deletes its backup.json: a backup without metadata but with this marker
// is the leftover of an interrupted prune, deleted by the next one whatever
// its age.
const markerFile = "pruning"

// MarkerName is the object name of the marker prune writes before it
// deletes backup id.
func MarkerName(id string) string { return basebackup.ObjectPrefix(id) + markerFile }

// DumpMarkerName is the object name of the marker prune writes before it
// deletes dump id's dump.json.
func DumpMarkerName(id string) string { return dump.ObjectPrefix(id) + markerFile }

const (
	backupsPrefix = "backups/"
	mediaPrefix   = "media/objects/"
	configPrefix  = "config/objects/"
)

// Options are the retention policy.
type Options struct {
	// Backups is the number of newest complete base backups always kept
	// (at least 1).
	Backups int
	// Window: everything needed to restore to any moment of the last
	// Window is kept (0: only the newest Backups backups and what they
	// need).
	Window time.Duration
	// Dumps is the number of newest complete logical dumps kept; 0 keeps
	// every complete dump (retention.dumps: 0 never deletes a dump that
	// can be restored).
	Dumps int
	// Now is the time the window is measured from; zero means time.Now().
	Now time.Time
}

// Window is a span of restorable times.
type Window struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// Backup is a base backup the plan deletes.
type Backup struct {
	ID string `json:"id"`
	// Complete is true for a backup with metadata (backup.json).
	Complete bool `json:"complete"`
	// StartTime and EndTime are from the metadata (complete backups only).
	StartTime time.Time `json:"start_time,omitzero"`
	EndTime   time.Time `json:"end_time,omitzero"`
	// LastModified is the newest object's modification time.
	LastModified time.Time `json:"last_modified"`
	// Objects and Bytes count its stored objects.
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Reason says why it may go.
	Reason string `json:"reason"`

	objs []storage.ObjectInfo // in name order
}

// Dump is a logical dump the plan deletes: the same fields as Backup
// (Complete: it has its dump.json).
type Dump = Backup

// WALRange is the WAL of one timeline the plan deletes.
type WALRange struct {
	Timeline uint32 `json:"timeline"`
	// First and Last are the lowest and highest segment deleted (complete
	// or partial objects).
	First   string `json:"first_segment"`
	Last    string `json:"last_segment"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`
}

// Objects counts content-addressed objects the plan deletes.
type Objects struct {
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`

	objs []storage.ObjectInfo
}

// Plan is what a prune deletes and what it keeps.
type Plan struct {
	// Backups and Window are the policy (Options); WindowSeconds is
	// Window for JSON.
	Backups       int           `json:"keep_backups"`
	Window        time.Duration `json:"-"`
	WindowSeconds float64       `json:"window_seconds"`
	Now           time.Time     `json:"now"`
	// WindowStart is Now-Window.
	WindowStart time.Time `json:"window_start"`
	// Anchor is the newest complete backup that ended at or before
	// WindowStart (or the oldest complete backup when none did).
	Anchor string `json:"anchor,omitempty"`
	// Kept are the complete backups kept, oldest first.
	Kept []string `json:"kept_backups"`
	// Horizon is the older of the oldest kept backup's start and the
	// oldest kept (or running) dump's start: media and config as of any
	// time from it on stay restorable.
	Horizon time.Time `json:"horizon,omitzero"`
	// Delete are the backups deleted, oldest first.
	Delete []Backup `json:"delete_backups"`
	// Untouched are incomplete backups left alone (running, or not yet
	// abandoned long enough).
	Untouched []string `json:"untouched_incomplete_backups"`
	// Dumps is the policy's retention.dumps (0: every complete dump is
	// kept); KeptDumps the complete dumps kept, oldest first.
	Dumps     int      `json:"keep_dumps"`
	KeptDumps []string `json:"kept_dumps"`
	// DeleteDumps are the dumps deleted, oldest first.
	DeleteDumps []Dump `json:"delete_dumps"`
	// UntouchedDumps are incomplete dumps left alone (running, or not yet
	// abandoned long enough).
	UntouchedDumps []string `json:"untouched_incomplete_dumps"`
	// WAL is deleted per timeline.
	WAL []WALRange `json:"wal"`
	// Media and Config are the unreferenced objects deleted.
	Media  Objects `json:"media"`
	Config Objects `json:"config"`
	// Before and After are the recovery windows before and after the
	// prune (nil when no restore is possible).
	Before *Window `json:"recovery_window_before"`
	After  *Window `json:"recovery_window_after"`

	walObjs []storage.ObjectInfo // ascending names
}

// Objects returns the number of objects the plan deletes (markers not
// counted).
func (p Plan) Objects() int {
	n := len(p.walObjs) + p.Media.Objects + p.Config.Objects
	for _, b := range p.Delete {
		n += b.Objects
	}
	for _, d := range p.DeleteDumps {
		n += d.Objects
	}
	return n
}

// Bytes returns the stored bytes the plan frees.
func (p Plan) Bytes() int64 {
	n := p.Media.Bytes + p.Config.Bytes
	for _, b := range p.Delete {
		n += b.Bytes
	}
	for _, w := range p.WAL {
		n += w.Bytes
	}
	for _, d := range p.DeleteDumps {
		n += d.Bytes
	}
	return n
}

// Empty reports whether the plan deletes nothing (not even the marker an
// interrupted prune left alone in a backup's or dump's prefix).
func (p Plan) Empty() bool { return p.Objects() == 0 && len(p.Delete) == 0 && len(p.DeleteDumps) == 0 }

// objectsByID lists every object under prefix (backups/, dumps/), by the
// id that follows it.
func objectsByID(ctx context.Context, r *repo.Repo, prefix string) (map[string][]storage.ObjectInfo, error) {
	out := map[string][]storage.ObjectInfo{}
	err := r.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		id, _, ok := strings.Cut(strings.TrimPrefix(oi.Name, prefix), "/")
		if ok {
			out[id] = append(out[id], oi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	return out, nil
}

// idTime parses the start time a backup id begins with.
func idTime(id string) (time.Time, bool) {
	const layout = "20060102T150405Z"
	if len(id) < len(layout) {
		return time.Time{}, false
	}
	t, err := time.Parse(layout, id[:len(layout)])
	return t, err == nil
}

// NewPlan reads the repository and computes what the policy (see the
// package doc) lets go, and the recovery window before and after. It
// deletes nothing.
func NewPlan(ctx context.Context, r *repo.Repo, opts Options) (Plan, error) {
	if opts.Backups < 1 {
		return Plan{}, fmt.Errorf("retention: keep at least 1 backup (retention.backups is %d)", opts.Backups)
	}
	if opts.Dumps < 0 {
		return Plan{}, fmt.Errorf("retention: negative number of dumps to keep (retention.dumps is %d)", opts.Dumps)
	}
	if opts.Window < 0 {
		return Plan{}, fmt.Errorf("retention: negative window %s", opts.Window)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	p := Plan{
		Backups: opts.Backups, Window: opts.Window, WindowSeconds: opts.Window.Seconds(), Now: now.UTC(), WindowStart: now.Add(-opts.Window).UTC(),
		Kept: []string{}, Delete: []Backup{}, Untouched: []string{}, WAL: []WALRange{},
		Dumps: opts.Dumps, KeptDumps: []string{}, DeleteDumps: []Dump{}, UntouchedDumps: []string{},
	}
	complete, err := basebackup.List(ctx, r)
	if err != nil {
		return Plan{}, err
	}
	incomplete, err := basebackup.ListIncomplete(ctx, r)
	if err != nil {
		return Plan{}, err
	}
	objs, err := objectsByID(ctx, r, backupsPrefix)
	if err != nil {
		return Plan{}, err
	}

	// Which complete backups stay.
	var kept []basebackup.Backup
	if len(complete) > 0 {
		anchor := 0
		found := false
		for i, b := range complete {
			if b.EndTime.After(p.WindowStart) {
				continue
			}
			if !found || !b.EndTime.Before(complete[anchor].EndTime) {
				anchor, found = i, true
			}
		}
		a := complete[anchor]
		p.Anchor = a.ID
		keepIDs := map[string]bool{}
		for i, b := range complete {
			if i >= anchor || b.EndTime.After(a.EndTime) || i >= len(complete)-opts.Backups {
				keepIDs[b.ID] = true
			}
		}
		// An incremental backup needs its whole chain (Chain names every
		// ancestor, so one pass suffices).
		for _, b := range complete {
			if keepIDs[b.ID] {
				for _, id := range b.Chain {
					keepIDs[id] = true
				}
			}
		}
		for _, b := range complete {
			if keepIDs[b.ID] {
				kept = append(kept, b)
				p.Kept = append(p.Kept, b.ID)
				if p.Horizon.IsZero() || b.StartTime.Before(p.Horizon) {
					p.Horizon = b.StartTime.UTC()
				}
				continue
			}
			p.Delete = append(p.Delete, deletion(b.ID, true, objs[b.ID], MarkerName(b.ID), fmt.Sprintf("complete, ended %s, before the anchor %s", b.EndTime.UTC().Format(time.RFC3339), a.ID)))
			p.Delete[len(p.Delete)-1].StartTime = b.StartTime.UTC()
			p.Delete[len(p.Delete)-1].EndTime = b.EndTime.UTC()
		}
		if kept[len(kept)-1].ID != complete[len(complete)-1].ID {
			return Plan{}, errors.New("retention: internal error: the newest backup is not kept")
		}
	}

	// Incomplete backups: leftovers of an interrupted prune, and abandoned
	// ones older than every kept backup.
	for _, inc := range incomplete {
		marked := false
		for _, oi := range objs[inc.ID] {
			marked = marked || oi.Name == MarkerName(inc.ID)
		}
		started, ok := idTime(inc.ID)
		if !ok {
			started = inc.LastModified
		}
		switch {
		case marked:
			p.Delete = append(p.Delete, deletion(inc.ID, false, objs[inc.ID], MarkerName(inc.ID), "left by an interrupted prune"))
		case len(kept) > 0 && started.Before(p.Horizon) && inc.LastModified.Before(now.Add(-AbandonedAfter)):
			p.Delete = append(p.Delete, deletion(inc.ID, false, objs[inc.ID], MarkerName(inc.ID),
				fmt.Sprintf("incomplete, abandoned: started before the oldest kept backup, last written %s", inc.LastModified.UTC().Format(time.RFC3339))))
		default:
			p.Untouched = append(p.Untouched, inc.ID)
		}
	}
	sortDeletions(p.Delete, complete)

	// Dumps; a kept dump moves the horizon back to its start.
	if err := p.planDumps(ctx, r, opts.Dumps, now); err != nil {
		return Plan{}, err
	}

	if err := p.planWAL(ctx, r, kept, complete); err != nil {
		return Plan{}, err
	}
	if len(kept) == 0 {
		return p, nil
	}
	if p.Media, err = planObjects(ctx, r, mediaPrefix, mediaName, func(ctx context.Context) (map[string]bool, map[string]bool, error) {
		return mediaNeeded(ctx, r, p.Horizon)
	}, now); err != nil {
		return Plan{}, err
	}
	if p.Config, err = planObjects(ctx, r, configPrefix, configName, func(ctx context.Context) (map[string]bool, map[string]bool, error) {
		return configNeeded(ctx, r, p.Horizon)
	}, now); err != nil {
		return Plan{}, err
	}
	return p, nil
}

// sortDeletions orders the backups to delete oldest first, except that an
// incremental backup goes before the backups of its chain: an interrupted
// prune never leaves a complete backup whose parent is gone. Backups are
// grouped by the full backup their chain starts with (oldest group first),
// and within a group the newest goes first.
func sortDeletions(del []Backup, complete []basebackup.Backup) {
	root := map[string]string{}
	for _, b := range complete {
		if len(b.Chain) > 0 {
			root[b.ID] = b.Chain[0]
		}
	}
	rootOf := func(id string) string {
		if r, ok := root[id]; ok {
			return r
		}
		return id
	}
	sort.SliceStable(del, func(i, j int) bool {
		ri, rj := rootOf(del[i].ID), rootOf(del[j].ID)
		if ri != rj {
			return ri < rj
		}
		return del[i].ID > del[j].ID
	})
}

func deletion(id string, complete bool, objs []storage.ObjectInfo, marker, reason string) Backup {
	b := Backup{ID: id, Complete: complete, Reason: reason}
	for _, oi := range objs {
		if oi.Name == marker {
			continue // deleted last, not counted
		}
		b.Objects++
		b.Bytes += oi.Size
		b.objs = append(b.objs, oi)
		if oi.ModTime.After(b.LastModified) {
			b.LastModified = oi.ModTime.UTC()
		}
	}
	sort.Slice(b.objs, func(i, j int) bool { return b.objs[i].Name < b.objs[j].Name })
	return b
}

// planDumps picks the dumps that go: complete ones beyond the newest keep
// (none when keep is 0), incomplete ones a prune left (with the marker)
// or nothing wrote to for AbandonedAfter. It moves the horizon back to the
// start of the oldest dump kept or left alone, whose restore reads media
// and config as of its start.
func (p *Plan) planDumps(ctx context.Context, r *repo.Repo, keep int, now time.Time) error {
	complete, incomplete, err := dump.Scan(ctx, r)
	if err != nil {
		return err
	}
	objs, err := objectsByID(ctx, r, dump.Prefix)
	if err != nil {
		return err
	}
	older := func(t time.Time) {
		if p.Horizon.IsZero() || t.Before(p.Horizon) {
			p.Horizon = t.UTC()
		}
	}
	for i, d := range complete {
		if keep == 0 || i >= len(complete)-keep {
			p.KeptDumps = append(p.KeptDumps, d.ID)
			older(d.StartTime)
			continue
		}
		b := deletion(d.ID, true, objs[d.ID], DumpMarkerName(d.ID), fmt.Sprintf("complete, not among the newest %d", keep))
		p.DeleteDumps = append(p.DeleteDumps, Dump{ID: d.ID, Complete: true, StartTime: d.StartTime.UTC(), EndTime: d.EndTime.UTC(),
			LastModified: b.LastModified, Objects: b.Objects, Bytes: b.Bytes, Reason: b.Reason, objs: b.objs})
	}
	for _, inc := range incomplete {
		marked := false
		for _, oi := range inc.Objs {
			marked = marked || oi.Name == DumpMarkerName(inc.ID)
		}
		reason := ""
		switch {
		case marked:
			reason = "left by an interrupted prune"
		case inc.LastModified.Before(now.Add(-AbandonedAfter)):
			reason = "incomplete, abandoned: last written " + inc.LastModified.UTC().Format(time.RFC3339)
		default:
			// Perhaps running: once complete its restore reads media
			// and config as of its start.
			p.UntouchedDumps = append(p.UntouchedDumps, inc.ID)
			if started, ok := idTime(inc.ID); ok {
				older(started)
			}
			continue
		}
		b := deletion(inc.ID, false, inc.Objs, DumpMarkerName(inc.ID), reason)
		p.DeleteDumps = append(p.DeleteDumps, Dump{ID: inc.ID, LastModified: b.LastModified, Objects: b.Objects, Bytes: b.Bytes, Reason: reason, objs: b.objs})
	}
	sort.SliceStable(p.DeleteDumps, func(i, j int) bool { return p.DeleteDumps[i].ID < p.DeleteDumps[j].ID })
	return nil
}

// keepWAL says whether a restore from one of the kept backups may read
// segment no of timeline tli: from a backup's start segment on its
// timeline, and anything on a later timeline.
func keepWAL(kept []basebackup.Backup, tli uint32, no, segSize uint64) bool {
	for _, b := range kept {
		if tli > b.Timeline || (tli == b.Timeline && no >= uint64(b.StartLSN)/segSize) {
			return true
		}
	}
	return false
}

// planWAL lists the WAL archive, picks the objects no kept backup needs
// and computes the recovery windows.
func (p *Plan) planWAL(ctx context.Context, r *repo.Repo, kept, complete []basebackup.Backup) error {
	a, err := wal.ReadArchive(ctx, r)
	if err != nil {
		if repo.IsNotExist(err) {
			return nil // no WAL archived yet
		}
		return err
	}
	segSize := a.Settings.SegmentSize
	ranges := map[uint32]*WALRange{}
	var tlis []uint32
	for _, o := range a.Objects {
		if o.Kind == wal.KindHistory {
			continue // history files are kept
		}
		seg := o.Segment
		if keepWAL(kept, seg.TLI, seg.No, segSize) || len(kept) == 0 {
			continue
		}
		p.walObjs = append(p.walObjs, storage.ObjectInfo{Name: o.Name, Size: o.Size})
		rg := ranges[seg.TLI]
		if rg == nil {
			rg = &WALRange{Timeline: seg.TLI, First: seg.Name(), Last: seg.Name()}
			ranges[seg.TLI] = rg
			tlis = append(tlis, seg.TLI)
		}
		rg.Last = seg.Name()
		rg.Objects++
		rg.Bytes += o.Size
	}
	sort.Slice(tlis, func(i, j int) bool { return tlis[i] < tlis[j] })
	for _, tli := range tlis {
		p.WAL = append(p.WAL, *ranges[tli])
	}

	// The recovery window: from the end of the oldest complete backup to
	// the server time of the newest WAL object (on the newest timeline).
	segTLIs := a.SegmentTLIs()
	if len(complete) == 0 || len(segTLIs) == 0 {
		return nil
	}
	newest, _ := a.Timeline(segTLIs[len(segTLIs)-1]).Newest()
	// Times follows the WAL uploader when it replaced the open segment's
	// partial object since the listing.
	_, tr, err := a.Times(ctx, newest)
	if err != nil {
		return fmt.Errorf("read the newest WAL object: %w", err)
	}
	to := tr.Last
	if to.IsZero() {
		return nil // no time recorded: no window (as synbak list)
	}
	mk := func(from time.Time) *Window {
		from = from.UTC()
		t := to.UTC()
		if t.Before(from) {
			t = from
		}
		return &Window{From: from, To: t}
	}
	p.Before = mk(complete[0].EndTime)
	p.After = mk(kept[0].EndTime)
	return nil
}

// mediaName maps a media object's sha256 to its name.
func mediaName(sha string) string {
	if len(sha) < 2 {
		return ""
	}
	return mediawatch.ObjectName(sha)
}

// shaOf returns the sha256 an object name under prefix stands for, or ""
// when the name is not one that nameOf produces.
func shaOf(name, prefix string, nameOf func(string) string) string {
	sha := name[strings.LastIndexByte(name, '/')+1:]
	if len(sha) != 64 || strings.ToLower(sha) != sha || !strings.HasPrefix(name, prefix) || nameOf(sha) != name {
		return ""
	}
	for _, c := range sha {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return ""
		}
	}
	return sha
}

// planObjects lists the content-addressed objects under prefix and picks
// those that needed does not name: objects some index entry refers to, and
// objects no index entry refers to that are older than AbandonedAfter (an
// upload whose index entry is not written yet is never that old).
func planObjects(ctx context.Context, r *repo.Repo, prefix string, nameOf func(string) string,
	needed func(context.Context) (need, referenced map[string]bool, err error), now time.Time) (Objects, error) {
	var all []storage.ObjectInfo
	err := r.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		if shaOf(oi.Name, prefix, nameOf) != "" {
			all = append(all, oi)
		}
		return nil
	})
	if err != nil {
		return Objects{}, fmt.Errorf("list %s: %w", prefix, err)
	}
	o := Objects{}
	if len(all) == 0 {
		return o, nil
	}
	need, referenced, err := needed(ctx)
	if err != nil {
		return Objects{}, err
	}
	for _, oi := range all {
		sha := shaOf(oi.Name, prefix, nameOf)
		if need[sha] || (!referenced[sha] && !oi.ModTime.Before(now.Add(-AbandonedAfter))) {
			continue
		}
		o.Objects++
		o.Bytes += oi.Size
		o.objs = append(o.objs, oi)
	}
	return o, nil
}

// mediaNeeded returns the media objects a restore to any time at or after
// horizon reads (the set present at horizon, and every file added after
// it), and every object the index refers to at all. The set at horizon is
// computed from the same read of the index as the rest (by Set's rule: per
// path, the last event in index order dated at or before horizon), and
// Set's own answer is added, so that a batch a concurrent writer stores
// between two reads cannot fall between them.
func mediaNeeded(ctx context.Context, r *repo.Repo, horizon time.Time) (need, referenced map[string]bool, err error) {
	need, referenced = map[string]bool{}, map[string]bool{}
	atHorizon := map[string]mediawatch.Event{}
	_, err = mediawatch.ReadIndex(ctx, r, func(ev mediawatch.Event) error {
		referenced[ev.SHA256] = true
		if ev.Date().After(horizon) {
			if ev.Event == mediawatch.Added {
				need[ev.SHA256] = true
			}
		} else {
			atHorizon[ev.Path] = ev
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read the media index: %w", err)
	}
	for _, ev := range atHorizon {
		if ev.Event == mediawatch.Added {
			need[ev.SHA256] = true
		}
	}
	present, _, err := mediawatch.Set(ctx, r, horizon)
	if err != nil {
		return nil, nil, fmt.Errorf("read the media index: %w", err)
	}
	for _, ev := range present {
		need[ev.SHA256] = true
		referenced[ev.SHA256] = true
	}
	return need, referenced, nil
}

// configNeeded returns the config objects a restore to any time at or
// after horizon reads (each file's last record at horizon, every record
// after it) plus the newest content of every file, and every object the
// index refers to at all.
func configNeeded(ctx context.Context, r *repo.Repo, horizon time.Time) (need, referenced map[string]bool, err error) {
	need, referenced = map[string]bool{}, map[string]bool{}
	atHorizon := map[string]confsnap.Record{}
	newest := map[string]string{}
	_, err = confsnap.ReadIndex(ctx, r, func(b confsnap.Batch) error {
		for _, rec := range b.Records {
			if rec.SHA256 != "" {
				referenced[rec.SHA256] = true
				newest[rec.Path] = rec.SHA256
			}
			if b.Time.After(horizon) {
				if !rec.Deleted && rec.SHA256 != "" {
					need[rec.SHA256] = true
				}
			} else {
				atHorizon[rec.Path] = rec
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read the config index: %w", err)
	}
	for _, rec := range atHorizon {
		if !rec.Deleted && rec.SHA256 != "" {
			need[rec.SHA256] = true
		}
	}
	for _, sha := range newest {
		need[sha] = true
	}
	return need, referenced, nil
}

// configName maps a config object's sha256 to its name.
func configName(sha string) string { return confsnap.ObjectName(sha) }
