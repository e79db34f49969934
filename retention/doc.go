// Package retention applies the retention policy to a repository: NewPlan
// computes what may go and the recovery window before and after; Apply
// deletes it in a crash-safe order. `synbak prune` is the command.
//
// # Policy (Options)
//
//   - The window starts at Now-Window. The anchor is the newest complete
//     backup (with backup.json) whose EndTime is at or before the window
//     start (ties: the later id); without one, the oldest complete backup.
//   - Kept complete backups: the anchor, every backup after it in id order
//     or with a later EndTime, and the newest Backups ones (Backups >= 1,
//     so the newest backup is always kept), and every backup in the Chain
//     of a kept incremental backup (its full backup and the incrementals
//     between: a restore from it needs them all, so the WAL from their
//     starts is kept too). The others go.
//   - WAL (wal/<TLI>/<SEG> and wal/<TLI>/<SEG>.partial.<VALID>): an object
//     is kept when some kept backup B has B.Timeline < TLI, or
//     B.Timeline == TLI and SEG >= B.StartLSN's segment. Everything else on
//     wal/<TLI>/ goes. History files (wal/history/), wal/settings.json, the
//     repository metadata (meta/) and anything prune does not recognize
//     are never deleted.
//   - Dumps (dumps/<ID>/, see package dump): the newest Dumps complete
//     dumps (with dump.json) are kept and the older ones go. Dumps 0 keeps
//     every complete dump: retention.dumps: 0 never deletes a restorable
//     dump (the safe reading of "0 to keep"; set dump.interval to 0 and
//     delete dumps by hand to have none). Incomplete dumps (no dump.json)
//     go when their newest object is older than AbandonedAfter, or when
//     they hold the marker an interrupted prune left; the others (perhaps
//     running) are left alone. Dumps do not change which backups or WAL
//     are kept.
//   - The horizon is the oldest kept backup's StartTime, or the StartTime
//     of the oldest kept dump (or id time of an incomplete dump left
//     alone) when that is older: every restore the kept backups serve is
//     to a time after it, and restore --from-dump restores media and
//     config as of the dump's StartTime.
//   - Media objects (media/objects/<aa>/<sha256>): kept when referenced by
//     the set present at the horizon (Set's rule: per path, the last index
//     event dated at or before it, when that is an addition) or by an
//     addition dated after it. Config objects (config/objects/<sha256>):
//     kept when referenced by each file's last record in the snapshots
//     dated at or before the horizon, by any record of a later snapshot, or
//     as the newest content of any file (even one deleted since). An
//     object no index entry references at all goes only when it is older
//     than AbandonedAfter (an upload whose index entry is not written yet
//     is younger). The indexes themselves are never deleted.
//   - Incomplete backups (objects but no backup.json) are left alone unless
//     they started (by id) before the oldest kept backup's StartTime and their newest object is
//     older than AbandonedAfter, or they hold the marker an interrupted
//     prune left (see below).
//
// # Order and crash safety (Apply)
//
//  1. Backups, oldest first, except that an incremental backup goes before
//     the members of its chain (grouped by the chain's full backup, newest
//     first within it), so an interrupted prune never leaves a complete
//     incremental without its parent. A complete one: store the marker
//     backups/<ID>/pruning, delete backup.json (from then on neither restore
//     nor list offers it), then its other objects, the marker last. A
//     backup without backup.json but with the marker is the leftover of an
//     interrupted prune and goes whatever its age.
//  2. Dumps, oldest first, likewise: store the marker dumps/<ID>/pruning,
//     delete dump.json (from then on neither restore nor list offers the
//     dump), then its parts, the marker last. A dump without dump.json but
//     with the marker goes whatever its age.
//  3. WAL, in ascending name order, so an interrupted prune leaves a
//     contiguous tail on every timeline.
//  4. Media and config objects, after reading the indexes again: an object
//     that an index entry stored since the plan needs is kept (Skipped).
//
// Each step deletes only objects that no restore to a time inside the
// window (or from a kept dump) reads, and the kept backups and dumps are
// never touched, so an interrupted
// prune leaves a repository that restores every time it promised. The
// policy's result does not change when the deleted backups are gone, so
// running prune again completes an interrupted one.
package retention
