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
//     so the newest backup is always kept). The others go.
//   - WAL (wal/<TLI>/<SEG> and wal/<TLI>/<SEG>.partial.<VALID>): an object
//     is kept when some kept backup B has B.Timeline < TLI, or
//     B.Timeline == TLI and SEG >= B.StartLSN's segment. Everything else on
//     wal/<TLI>/ goes. History files (wal/history/), wal/settings.json, the
//     repository metadata (meta/) and anything prune does not recognize
//     are never deleted.
//   - The horizon is the oldest kept backup's StartTime: every restore the
//     kept backups serve is to a time after it.
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
//     they started (by id) before the horizon and their newest object is
//     older than AbandonedAfter, or they hold the marker an interrupted
//     prune left (see below).
//
// # Order and crash safety (Apply)
//
//  1. Backups, oldest first. A complete one: store the marker
//     backups/<ID>/pruning, delete backup.json (from then on neither restore
//     nor list offers it), then its other objects, the marker last. A
//     backup without backup.json but with the marker is the leftover of an
//     interrupted prune and goes whatever its age.
//  2. WAL, in ascending name order, so an interrupted prune leaves a
//     contiguous tail on every timeline.
//  3. Media and config objects, after reading the indexes again: an object
//     that an index entry stored since the plan needs is kept (Skipped).
//
// Each step deletes only objects that no restore to a time inside the
// window reads, and the kept backups are never touched, so an interrupted
// prune leaves a repository that restores every time it promised. The
// policy's result does not change when the deleted backups are gone, so
// running prune again completes an interrupted one.
package retention
