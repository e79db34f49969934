package restore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/wal"
)

// Point is the point in time a restore recovers to: exactly one of Time,
// LSN and Latest.
type Point struct {
	// Time: every transaction committed at or before it (server clock).
	Time time.Time `json:"time,omitzero"`
	// LSN: every transaction committed at or before this WAL position.
	LSN basebackup.LSN `json:"lsn,omitempty"`
	// Latest: the end of the archive.
	Latest bool `json:"latest,omitempty"`
}

func (p Point) validate() error {
	n := 0
	if !p.Time.IsZero() {
		n++
	}
	if p.LSN != 0 {
		n++
	}
	if p.Latest {
		n++
	}
	if n != 1 {
		return fmt.Errorf("restore target: give exactly one of a time, an LSN and latest")
	}
	return nil
}

// String describes the point for humans.
func (p Point) String() string {
	switch {
	case p.Latest:
		return "latest (the end of the archive)"
	case p.LSN != 0:
		return "LSN " + p.LSN.String()
	default:
		return p.Time.UTC().Format(time.RFC3339Nano)
	}
}

// recoveryTarget renders the point as PostgreSQL's recovery target.
func (p Point) recoveryTarget() Target {
	switch {
	case p.Latest:
		return Target{}
	case p.LSN != 0:
		return Target{LSN: p.LSN.String()}
	default:
		// PostgreSQL keeps microseconds; truncating keeps "at or before".
		return Target{Time: p.Time.UTC().Truncate(time.Microsecond).Format("2006-01-02 15:04:05.999999") + "+00"}
	}
}

// Window is the span of times a restore can reach.
type Window struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

func (w *Window) String() string {
	if w == nil {
		return "no restore is possible yet (the repository needs a complete base backup and the WAL after it)"
	}
	// Whole seconds, rounded inwards, so that every time named is possible.
	from := w.From.UTC().Truncate(time.Second)
	if from.Before(w.From) {
		from = from.Add(time.Second)
	}
	to := w.To.UTC().Truncate(time.Second)
	if to.Before(from) {
		return fmt.Sprintf("restores are possible from %s to %s", w.From.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano))
	}
	return fmt.Sprintf("restores are possible from %s to %s", from.Format(time.RFC3339), to.Format(time.RFC3339))
}

// ErrRefused marks a restore that the repository cannot serve (target
// outside the recovery window, WAL missing, no backup).
var ErrRefused = errors.New("restore refused")

// IsRefused reports whether err says that the repository cannot serve the
// requested restore.
func IsRefused(err error) bool { return errors.Is(err, ErrRefused) }

// Plan is what a restore will do: which backup, which WAL.
type Plan struct {
	Target Point `json:"target"`
	// Backup is the base backup restored.
	BackupID       string    `json:"backup_id"`
	BackupStartLSN string    `json:"backup_start_lsn"`
	BackupEndLSN   string    `json:"backup_end_lsn"`
	BackupEndTime  time.Time `json:"backup_end_time"`
	PGVersion      int       `json:"pg_version_num"`
	// Chain is what the restore extracts, oldest first: the backup alone
	// when it is a full backup; for an incremental, the full backup it
	// builds on, the incrementals between, the backup last.
	Chain []ChainMember `json:"chain"`
	// Timeline is the timeline recovery follows to the target.
	Timeline uint32 `json:"timeline"`
	// FirstSegment..LastSegment are the WAL objects replay needs (proved
	// present); LastSegment may be a partial object.
	FirstSegment string `json:"first_segment"`
	LastSegment  string `json:"last_segment"`
	Segments     int    `json:"segments"`
	// ArchiveEndLSN is the end of the contiguous WAL in the repository and
	// ArchiveCompleteTo the server time up to which it is known complete.
	ArchiveEndLSN     string    `json:"archive_end_lsn"`
	ArchiveCompleteTo time.Time `json:"archive_complete_to"`
	Window            *Window   `json:"recovery_window"`

	backup basebackup.Backup
	chain  []basebackup.Backup
	// segments are the names PostgreSQL asks restore_command for, in
	// replay order, FirstSegment..LastSegment (the restore prefetches
	// them); lastPartial says the last is served from a partial object.
	segments    []string
	lastPartial bool
	segSize     uint64
}

// Backup returns the backup the plan restores.
func (p Plan) Backup() basebackup.Backup { return p.backup }

// BackupChain returns the backups the restore extracts, oldest first,
// ending with Backup() (Backup() alone for a full backup).
func (p Plan) BackupChain() []basebackup.Backup { return p.chain }

// ChainNote is "" for a full backup, else " (incremental, rebuilt from a
// chain of N backups from full backup ID)" for reports.
func (p Plan) ChainNote() string {
	if len(p.Chain) < 2 {
		return ""
	}
	return fmt.Sprintf(" (incremental, rebuilt from a chain of %d backups from full backup %s)", len(p.Chain), p.Chain[0].ID)
}

// ChainMember is one backup a restore extracts.
type ChainMember struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	EndTime time.Time `json:"end_time"`
	// Size is the plaintext size of its archives.
	Size int64 `json:"size"`
}

func chainMembers(chain []basebackup.Backup) []ChainMember {
	out := make([]ChainMember, len(chain))
	for i, b := range chain {
		out[i] = ChainMember{ID: b.ID, Kind: b.KindName(), EndTime: b.EndTime.UTC(), Size: b.Size() - b.Manifest.Size}
	}
	return out
}

// String renders the plan for --dry-run.
func (p Plan) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Restore plan\n")
	fmt.Fprintf(&sb, "  target:          %s\n", p.Target)
	fmt.Fprintf(&sb, "  base backup:     %s (ended %s, WAL %s to %s, PostgreSQL %s)\n",
		p.BackupID, p.BackupEndTime.UTC().Format(time.RFC3339), p.BackupStartLSN, p.BackupEndLSN, PGVersionString(p.PGVersion))
	if len(p.Chain) > 1 {
		var ids []string
		for _, m := range p.Chain {
			ids = append(ids, fmt.Sprintf("%s (%s, ended %s)", m.ID, m.Kind, m.EndTime.Format(time.RFC3339)))
		}
		fmt.Fprintf(&sb, "  backup chain:    %s, rebuilt oldest first:\n                   %s\n", countOf(len(p.Chain), "backup", "backups"), strings.Join(ids, "\n                   "))
	}
	fmt.Fprintf(&sb, "  WAL replayed:    %s .. %s (%s, timeline %d, all present)\n", p.FirstSegment, p.LastSegment, countOf(p.Segments, "object", "objects"), p.Timeline)
	fmt.Fprintf(&sb, "  archive:         contiguous to %s, complete to %s\n", p.ArchiveEndLSN, p.ArchiveCompleteTo.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&sb, "  recovery window: %s\n", strings.TrimPrefix(p.Window.String(), "restores are possible "))
	return sb.String()
}

// walObject is one WAL object found in the repository.
type walObject struct {
	name  string
	end   pglogrepl.LSN // end of valid WAL in it
	isPar bool
}

// archive is the WAL part of the repository as planning needs it.
type archive struct {
	segSize  uint64
	complete map[uint32]map[uint64]bool
	partials map[uint32]map[uint64]walObject // newest partial per segment
	newest   uint32                          // the newest timeline seen
}

func loadArchive(ctx context.Context, r *repo.Repo) (*archive, error) {
	s, err := wal.LoadSettings(ctx, r)
	if err != nil {
		if repo.IsNotExist(err) {
			return nil, fmt.Errorf("%w: the repository holds no WAL archive (is the agent or `synbak wal stream` running?)", ErrRefused)
		}
		return nil, fmt.Errorf("read WAL settings: %w", err)
	}
	a := &archive{segSize: s.SegmentSize, complete: map[uint32]map[uint64]bool{}, partials: map[uint32]map[uint64]walObject{}}
	err = r.List(ctx, "wal/", func(oi storage.ObjectInfo) error {
		parts := strings.Split(oi.Name, "/")
		if len(parts) != 3 {
			return nil
		}
		if parts[1] == "history" {
			if tli, ok := wal.ParseHistoryName(parts[2]); ok && tli > a.newest {
				a.newest = tli
			}
			return nil
		}
		base, off, isPartial := strings.Cut(parts[2], ".partial.")
		seg, err := wal.ParseSegmentName(base, s.SegmentSize)
		if err != nil || fmt.Sprintf("%08X", seg.TLI) != parts[1] {
			return nil
		}
		if seg.TLI > a.newest {
			a.newest = seg.TLI
		}
		if !isPartial {
			if a.complete[seg.TLI] == nil {
				a.complete[seg.TLI] = map[uint64]bool{}
			}
			a.complete[seg.TLI][seg.No] = true
			return nil
		}
		valid, err := strconv.ParseUint(off, 16, 64)
		if err != nil || len(off) != 8 || valid > s.SegmentSize {
			return nil
		}
		if a.partials[seg.TLI] == nil {
			a.partials[seg.TLI] = map[uint64]walObject{}
		}
		if p, ok := a.partials[seg.TLI][seg.No]; !ok || seg.StartLSN()+pglogrepl.LSN(valid) > p.end {
			a.partials[seg.TLI][seg.No] = walObject{name: oi.Name, end: seg.StartLSN() + pglogrepl.LSN(valid), isPar: true}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	return a, nil
}

// timelineSpan is one timeline of the history leading to the newest one:
// it holds the WAL from begin (inclusive) to end (exclusive; 0 = open).
type timelineSpan struct {
	tli        uint32
	begin, end pglogrepl.LSN
}

// readHistory returns the timelines leading to tli, oldest first
// (wal.ReadHistory); a missing history file refuses the restore.
func readHistory(ctx context.Context, r *repo.Repo, tli uint32) ([]timelineSpan, error) {
	hs, err := wal.ReadHistory(ctx, r, tli)
	if errors.Is(err, wal.ErrNoHistory) {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if err != nil {
		return nil, err
	}
	spans := make([]timelineSpan, len(hs))
	for i, h := range hs {
		spans[i] = timelineSpan{tli: h.TLI, begin: h.Begin, end: h.End}
	}
	return spans, nil
}

// segmentTimeline returns the timeline whose copy of segment no recovery
// reads: as PostgreSQL does, the newest timeline that began at or before
// the segment.
func segmentTimeline(spans []timelineSpan, no, segSize uint64) uint32 {
	for i := len(spans) - 1; i >= 0; i-- {
		if uint64(spans[i].begin)/segSize <= no {
			return spans[i].tli
		}
	}
	return spans[0].tli
}

// lastTime reads an object's last_time attribute.
func lastTime(ctx context.Context, r *repo.Repo, name string) (time.Time, error) {
	info, err := r.Stat(ctx, name)
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, info.Attrs[wal.AttrLastTime])
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: no valid %s attribute (%q)", name, wal.AttrLastTime, info.Attrs[wal.AttrLastTime])
	}
	return t, nil
}

// NewPlan picks the base backup for target and proves from the repository
// that the WAL from the backup's start to the target is present. It reads
// only the repository. A target the repository cannot serve is an error
// for which IsRefused is true, naming the recovery window that is
// available.
func NewPlan(ctx context.Context, r *repo.Repo, target Point) (Plan, error) {
	if err := target.validate(); err != nil {
		return Plan{}, err
	}
	backups, err := basebackup.List(ctx, r)
	if err != nil {
		return Plan{}, err
	}
	if len(backups) == 0 {
		return Plan{}, fmt.Errorf("%w: the repository holds no complete base backup; take one with `synbak backup`", ErrRefused)
	}
	a, err := loadArchive(ctx, r)
	if err != nil {
		return Plan{}, err
	}
	spans, err := readHistory(ctx, r, a.newest)
	if err != nil {
		return Plan{}, err
	}
	// The window: from the end of the oldest backup to the time up to
	// which the archive after the newest backup is known complete.
	var window *Window
	if end, err := a.walk(ctx, r, spans, backups[len(backups)-1]); err == nil {
		window = &Window{From: backups[0].EndTime.UTC(), To: end.completeTo.UTC()}
		if window.To.Before(window.From) {
			window.To = window.From
		}
	}

	var chosen *basebackup.Backup
	for i := len(backups) - 1; i >= 0 && chosen == nil; i-- {
		b := backups[i]
		switch {
		case target.Latest,
			!target.Time.IsZero() && !b.EndTime.After(target.Time),
			target.LSN != 0 && b.EndLSN <= target.LSN:
			chosen = &backups[i]
		}
	}
	if chosen == nil {
		return Plan{}, fmt.Errorf("%w: target %s is before the end of the first base backup (%s, ended %s at %s): %s",
			ErrRefused, target, backups[0].ID, backups[0].EndTime.UTC().Format(time.RFC3339), backups[0].EndLSN, window)
	}
	b := *chosen
	chain, err := basebackup.LoadChain(ctx, r, b)
	if basebackup.IsChainBroken(err) {
		return Plan{}, fmt.Errorf("%w: %w; %s", ErrRefused, err, chainAlternatives(ctx, r, backups, b, window))
	}
	if err != nil {
		return Plan{}, err
	}
	if !onPath(spans, b.Timeline) {
		return Plan{}, fmt.Errorf("%w: backup %s is on timeline %d, which is not an ancestor of the newest timeline %d; restoring to an abandoned timeline is not supported", ErrRefused, b.ID, b.Timeline, a.newest)
	}
	end, err := a.walk(ctx, r, spans, b)
	if err != nil {
		return Plan{}, fmt.Errorf("%w: %v: %s", ErrRefused, err, window)
	}
	if end.gap != "" && !target.Latest {
		// WAL exists beyond a hole: a target past the hole cannot be
		// reached; one before it is fine if the WAL before is complete.
		if (!target.Time.IsZero() && target.Time.After(end.completeTo)) || (target.LSN != 0 && target.LSN > basebackup.LSN(end.endLSN)) {
			return Plan{}, fmt.Errorf("%w: WAL segment %s is missing from the repository, so the archive after it cannot be replayed; %s", ErrRefused, end.gap, window)
		}
	}
	if end.gap != "" && target.Latest {
		return Plan{}, fmt.Errorf("%w: WAL segment %s is missing from the repository, but later WAL exists: the archive has a hole, so its end cannot be reached; restore to a time before it (%s)", ErrRefused, end.gap, window)
	}
	if !target.Time.IsZero() && target.Time.After(end.completeTo) {
		return Plan{}, fmt.Errorf("%w: target %s is after %s, the time up to which the archived WAL is known complete: %s",
			ErrRefused, target, end.completeTo.UTC().Format(time.RFC3339Nano), window)
	}
	if target.LSN != 0 && target.LSN > basebackup.LSN(end.endLSN) {
		return Plan{}, fmt.Errorf("%w: target %s is after the end of the archived WAL (%s): %s", ErrRefused, target, end.endLSN, window)
	}
	return Plan{
		Target:   target,
		BackupID: b.ID, BackupStartLSN: b.StartLSN.String(), BackupEndLSN: b.EndLSN.String(),
		BackupEndTime: b.EndTime.UTC(), PGVersion: b.PGVersion,
		Chain:        chainMembers(chain),
		Timeline:     spans[len(spans)-1].tli,
		FirstSegment: end.first, LastSegment: end.last, Segments: end.count,
		ArchiveEndLSN: end.endLSN.String(), ArchiveCompleteTo: end.completeTo.UTC(),
		Window: window,
		backup: b, chain: chain, segments: end.names, lastPartial: end.lastPartial, segSize: a.segSize,
	}, nil
}

// chainAlternatives says which targets still restore when b's chain is
// broken: before b's end (an older backup with a complete chain) or after
// a later one.
func chainAlternatives(ctx context.Context, r *repo.Repo, backups []basebackup.Backup, b basebackup.Backup, window *Window) string {
	intact := func(c basebackup.Backup) bool {
		_, err := basebackup.LoadChain(ctx, r, c)
		return err == nil
	}
	var alts []string
	for i := len(backups) - 1; i >= 0; i-- {
		c := backups[i]
		if c.EndTime.Before(b.EndTime) && intact(c) {
			alts = append(alts, fmt.Sprintf("a target before %s (the end of backup %s) restores from backup %s (%s, ended %s)",
				b.EndTime.UTC().Format(time.RFC3339), b.ID, c.ID, c.KindName(), c.EndTime.UTC().Format(time.RFC3339)))
			break
		}
	}
	for _, c := range backups {
		if c.EndTime.After(b.EndTime) && intact(c) {
			alts = append(alts, fmt.Sprintf("a target at or after %s restores from backup %s (%s)", c.EndTime.UTC().Format(time.RFC3339), c.ID, c.KindName()))
			break
		}
	}
	if len(alts) == 0 {
		return fmt.Sprintf("no other backup can serve this target; take a full backup (`synbak backup --full`) to restore from then on (%s)", window)
	}
	return "restore to another time: " + strings.Join(alts, "; or ") + fmt.Sprintf(" (%s)", window)
}

func onPath(spans []timelineSpan, tli uint32) bool {
	for _, s := range spans {
		if s.tli == tli {
			return true
		}
	}
	return false
}

// walkEnd is the result of following the archive from a backup's start.
type walkEnd struct {
	first, last string
	count       int
	names       []string
	lastPartial bool
	endLSN      pglogrepl.LSN
	completeTo  time.Time
	// gap names the first missing segment when later WAL exists.
	gap string
}

// walk follows the WAL from b's start segment along spans for as long as
// objects are present, and returns where the contiguous archive ends. It
// fails when the WAL that makes b consistent is incomplete.
func (a *archive) walk(ctx context.Context, r *repo.Repo, spans []timelineSpan, b basebackup.Backup) (walkEnd, error) {
	var e walkEnd
	var lastObj string
	no := uint64(b.StartLSN) / a.segSize
	maxNo := uint64(0)
	for _, s := range spans {
		for n := range a.complete[s.tli] {
			maxNo = max(maxNo, n)
		}
		for n := range a.partials[s.tli] {
			maxNo = max(maxNo, n)
		}
	}
	for ; ; no++ {
		tli := segmentTimeline(spans, no, a.segSize)
		seg := wal.SegmentAt(tli, pglogrepl.LSN(no*a.segSize), a.segSize)
		if a.complete[tli][no] {
			lastObj = seg.ObjectName()
			e.endLSN = seg.EndLSN()
		} else if p, ok := a.partials[tli][no]; ok {
			lastObj = p.name
			e.endLSN = p.end
			e.count++
			if e.first == "" {
				e.first = seg.Name()
			}
			e.last = seg.Name() + " (partial)"
			e.names = append(e.names, seg.Name())
			e.lastPartial = true
			if no < maxNo {
				// Later WAL exists, so this segment was completed: the
				// complete object is missing and the partial is a
				// leftover snapshot of it.
				e.gap = seg.ObjectName()
			}
			break
		} else {
			if no < maxNo {
				e.gap = seg.ObjectName()
			}
			break
		}
		e.count++
		if e.first == "" {
			e.first = seg.Name()
		}
		e.last = seg.Name()
		e.names = append(e.names, seg.Name())
	}
	if lastObj == "" || e.endLSN < pglogrepl.LSN(b.EndLSN) {
		missing := wal.SegmentAt(segmentTimeline(spans, no, a.segSize), pglogrepl.LSN(no*a.segSize), a.segSize)
		return e, fmt.Errorf("backup %s needs the WAL from %s to %s, but %s is missing from the repository", b.ID, b.StartLSN, b.EndLSN, missing.ObjectName())
	}
	t, err := lastTime(ctx, r, lastObj)
	if err != nil {
		return e, err
	}
	e.completeTo = t
	return e, nil
}

// ArchiveProblems checks the WAL archive the way restores use it and
// returns one line per problem, each saying what it makes impossible: a
// timeline without its history file, an unreadable history, a complete
// backup whose own WAL is incomplete, a hole after a backup's start (later
// WAL exists beyond a missing segment). An empty result means every
// complete backup can be restored to the end of the archive.
func ArchiveProblems(ctx context.Context, r *repo.Repo) ([]string, error) {
	backups, err := basebackup.List(ctx, r)
	if err != nil {
		return nil, err
	}
	a, err := loadArchive(ctx, r)
	if err != nil {
		if IsRefused(err) && len(backups) == 0 {
			return nil, nil // an empty repository
		}
		return nil, err
	}
	var problems []string
	var tlis []uint32
	for tli := range a.complete {
		tlis = append(tlis, tli)
	}
	for tli := range a.partials {
		if a.complete[tli] == nil {
			tlis = append(tlis, tli)
		}
	}
	slices.Sort(tlis)
	for _, tli := range tlis {
		if tli <= 1 {
			continue
		}
		if _, err := r.Stat(ctx, wal.HistoryObjectName(tli)); err != nil {
			problems = append(problems, fmt.Sprintf("restores onto timeline %d impossible: its history file %s is missing (%v)", tli, wal.HistoryObjectName(tli), err))
		}
	}
	spans, err := readHistory(ctx, r, a.newest)
	if err != nil {
		if !slices.Contains(tlis, a.newest) || a.newest <= 1 {
			problems = append(problems, err.Error())
		}
		return problems, nil
	}
	gaps := map[string]bool{}
	for _, b := range backups {
		if !onPath(spans, b.Timeline) {
			problems = append(problems, fmt.Sprintf("backup %s is on timeline %d, which is not an ancestor of the newest timeline %d: it cannot be restored", b.ID, b.Timeline, a.newest))
			continue
		}
		end, err := a.walk(ctx, r, spans, b)
		if err != nil {
			problems = append(problems, fmt.Sprintf("backup %s cannot be restored at all: %v", b.ID, err))
			continue
		}
		if end.gap != "" && !gaps[end.gap] {
			gaps[end.gap] = true // reported once, for the oldest backup before it
			problems = append(problems, fmt.Sprintf("restores from backup %s to times after %s impossible: WAL segment %s is missing (later WAL exists)",
				b.ID, end.completeTo.UTC().Format(time.RFC3339), end.gap))
		}
	}
	return problems, nil
}
