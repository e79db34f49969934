package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/wal"
)

// Point is the point in time a restore recovers to: exactly one of Time,
// LSN and Latest.
type Point struct {
	// Time: every transaction committed at or before it (server clock).
	Time time.Time `json:"time,omitzero"`
	// LSN: every transaction committed at or before this WAL position.
	LSN pglogrepl.LSN `json:"lsn,omitempty"`
	// Latest: the end of the archive.
	Latest bool `json:"latest,omitempty"`
}

// MarshalJSON writes the point with its LSN as X/X.
func (p Point) MarshalJSON() ([]byte, error) {
	type plain Point
	v := struct {
		plain
		LSN string `json:"lsn,omitempty"`
	}{plain: plain(p)}
	if p.LSN != 0 {
		v.LSN = p.LSN.String()
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Point) UnmarshalJSON(data []byte) error {
	type plain Point
	v := struct {
		*plain
		LSN string `json:"lsn,omitempty"`
	}{plain: (*plain)(p)}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	var err error
	p.LSN, err = parseLSN("lsn", v.LSN)
	return err
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
	BackupID       string        `json:"backup_id"`
	BackupStartLSN pglogrepl.LSN `json:"backup_start_lsn"`
	BackupEndLSN   pglogrepl.LSN `json:"backup_end_lsn"`
	BackupEndTime  time.Time     `json:"backup_end_time"`
	PGVersion      int           `json:"pg_version_num"`
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
	ArchiveEndLSN     pglogrepl.LSN `json:"archive_end_lsn"`
	ArchiveCompleteTo time.Time     `json:"archive_complete_to"`
	Window            *Window       `json:"recovery_window"`

	backup basebackup.Backup
	chain  []basebackup.Backup
	// segments are the names PostgreSQL asks restore_command for, in
	// replay order, FirstSegment..LastSegment (the restore prefetches
	// them); lastPartial says the last is served from a partial object.
	segments    []string
	lastPartial bool
	segSize     uint64
}

// MarshalJSON writes the plan with its LSNs as X/X.
func (p Plan) MarshalJSON() ([]byte, error) {
	type plain Plan
	return json.Marshal(struct {
		plain
		BackupStartLSN string `json:"backup_start_lsn"`
		BackupEndLSN   string `json:"backup_end_lsn"`
		ArchiveEndLSN  string `json:"archive_end_lsn"`
	}{plain(p), p.BackupStartLSN.String(), p.BackupEndLSN.String(), p.ArchiveEndLSN.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Plan) UnmarshalJSON(data []byte) error {
	type plain Plan
	v := struct {
		*plain
		BackupStartLSN string `json:"backup_start_lsn"`
		BackupEndLSN   string `json:"backup_end_lsn"`
		ArchiveEndLSN  string `json:"archive_end_lsn"`
	}{plain: (*plain)(p)}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	var err error
	for _, f := range []struct {
		name, text string
		to         *pglogrepl.LSN
	}{{"backup_start_lsn", v.BackupStartLSN, &p.BackupStartLSN}, {"backup_end_lsn", v.BackupEndLSN, &p.BackupEndLSN}, {"archive_end_lsn", v.ArchiveEndLSN, &p.ArchiveEndLSN}} {
		if *f.to, err = parseLSN(f.name, f.text); err != nil {
			return err
		}
	}
	return nil
}

// parseLSN reads an LSN written as X/X ("": none).
func parseLSN(field, text string) (pglogrepl.LSN, error) {
	if text == "" {
		return 0, nil
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	return lsn, nil
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

// archive is the WAL part of the repository as planning needs it.
type archive struct {
	*wal.Archive
	segSize uint64
	newest  uint32 // the newest timeline seen
}

func loadArchive(ctx context.Context, r *repo.Repo) (*archive, error) {
	wa, err := wal.ReadArchive(ctx, r)
	if err != nil {
		if repo.IsNotExist(err) {
			return nil, fmt.Errorf("%w: the repository holds no WAL archive (is the agent or `synbak wal stream` running?)", ErrRefused)
		}
		return nil, err
	}
	return &archive{Archive: wa, segSize: wa.Settings.SegmentSize, newest: wa.Newest()}, nil
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

// lastTime reads the time up to which the WAL object o is known complete
// (last_time); cur is o, or what replaced it.
func (a *archive) lastTime(ctx context.Context, o wal.Object) (cur wal.Object, t time.Time, err error) {
	cur, tr, err := a.Times(ctx, o)
	if err != nil {
		return cur, time.Time{}, err
	}
	if tr.Last.IsZero() {
		return cur, time.Time{}, fmt.Errorf("%s: no valid %s attribute", cur.Name, wal.AttrLastTime)
	}
	return cur, tr.Last, nil
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
	if end, err := a.walk(ctx, spans, backups[len(backups)-1]); err == nil {
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
	end, err := a.walk(ctx, spans, b)
	if err != nil {
		return Plan{}, fmt.Errorf("%w: %v: %s", ErrRefused, err, window)
	}
	if end.gap != "" && !target.Latest {
		// WAL exists beyond a hole: a target past the hole cannot be
		// reached; one before it is fine if the WAL before is complete.
		if (!target.Time.IsZero() && target.Time.After(end.completeTo)) || (target.LSN != 0 && target.LSN > end.endLSN) {
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
	if target.LSN != 0 && target.LSN > end.endLSN {
		return Plan{}, fmt.Errorf("%w: target %s is after the end of the archived WAL (%s): %s", ErrRefused, target, end.endLSN, window)
	}
	return Plan{
		Target:   target,
		BackupID: b.ID, BackupStartLSN: b.StartLSN, BackupEndLSN: b.EndLSN,
		BackupEndTime: b.EndTime.UTC(), PGVersion: b.PGVersion,
		Chain:        chainMembers(chain),
		Timeline:     spans[len(spans)-1].tli,
		FirstSegment: end.first, LastSegment: end.last, Segments: end.count,
		ArchiveEndLSN: end.endLSN, ArchiveCompleteTo: end.completeTo.UTC(),
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
func (a *archive) walk(ctx context.Context, spans []timelineSpan, b basebackup.Backup) (walkEnd, error) {
	var e walkEnd
	var lastObj wal.Object
	found := false
	no := uint64(b.StartLSN) / a.segSize
	maxNo := uint64(0)
	for _, s := range spans {
		if n, ok := a.Timeline(s.tli).MaxNo(); ok {
			maxNo = max(maxNo, n)
		}
	}
	for ; ; no++ {
		tli := segmentTimeline(spans, no, a.segSize)
		seg := wal.SegmentAt(tli, pglogrepl.LSN(no*a.segSize), a.segSize)
		o, ok := a.Timeline(tli).Object(no)
		if !ok {
			if no < maxNo {
				e.gap = seg.ObjectName()
			}
			break
		}
		lastObj, found = o, true
		e.endLSN = o.EndLSN()
		e.count++
		if e.first == "" {
			e.first = seg.Name()
		}
		e.last = seg.Name()
		e.names = append(e.names, seg.Name())
		if o.Kind == wal.KindPartial {
			e.last += " (partial)"
			e.lastPartial = true
			if no < maxNo {
				// Later WAL exists, so this segment was completed: the
				// complete object is missing and the partial is a
				// leftover snapshot of it.
				e.gap = seg.ObjectName()
			}
			break
		}
	}
	if !found || e.endLSN < b.EndLSN {
		missing := wal.SegmentAt(segmentTimeline(spans, no, a.segSize), pglogrepl.LSN(no*a.segSize), a.segSize)
		return e, fmt.Errorf("backup %s needs the WAL from %s to %s, but %s is missing from the repository", b.ID, b.StartLSN, b.EndLSN, missing.ObjectName())
	}
	_, t, err := a.lastTime(ctx, lastObj)
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
	tlis := a.SegmentTLIs()
	for _, tli := range tlis {
		if tli > 1 && a.Timeline(tli).History == nil {
			problems = append(problems, fmt.Sprintf("restores onto timeline %d impossible: its history file %s is missing", tli, wal.HistoryObjectName(tli)))
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
		end, err := a.walk(ctx, spans, b)
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
