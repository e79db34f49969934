// Package mediawatch backs up Synapse's media store continuously: every
// complete file under local_content (and local_thumbnails unless
// dynamic_thumbnails is on) is copied into the repository within seconds,
// recorded in an append-only index, and kept after Synapse deletes it, so
// that the media set can be restored as of any time (Restore).
//
// # Repository layout
//
//	media/objects/<sha256[0:2]>/<sha256>   a file's content, content-addressed: stored once
//	                                        however many paths or restarts name it; immutable;
//	                                        stored without compression for images, video,
//	                                        audio and archives, zstd otherwise
//	media/index/<seq 12 digits>.jsonl       a batch of index events, one JSON object a line:
//	                                        {path, sha256, size, mtime, first_seen, event, at}
//
// path is relative to the media store ("local_content/ab/cd/efgh...");
// event is "added" (the object named by sha256 is durable) or "deleted" (the
// file is gone from the store; its object stays). Batches are immutable and
// their names increase; a batch is stored only after every object it names
// is durable. A writer that finds its next name taken (another synbak
// writing to the same repository) takes the next one.
//
// # Dating
//
// A file is dated by its modification time, not by when it was noticed: a
// file found by a scan (at start, after an inotify overflow, hourly) was
// complete at its mtime. Restore includes a path as of time T when the last
// event for it (in index order) whose date is at or before T is "added",
// where an "added" event is dated by mtime and a "deleted" one by at (when
// the deletion was noticed).
//
// # State and restarts
//
// The in-memory state (path → sha256, size, mtime, deleted) is rebuilt on
// start by reading every index batch. A file whose size and mtime match the
// state is not copied again; a full scan at start finds whatever changed
// while synbak was not running. A crash between a copy and its index batch
// costs at most a re-read of those files (the object exists already: Stat
// by checksum, no second upload). Compaction of the index into snapshot
// objects is not done yet: loading costs one object per batch (at most one
// a second while media arrives).
//
// # Watching within inotify's limits
//
// fsnotify is not recursive, and a store has about one leaf directory per
// media file (local_content/ab/cd) and one per media id in local_thumbnails
// (ab/cd/<rest>). Watching every directory runs out of the default
// fs.inotify.max_user_watches at about 60k media. The Watcher therefore
// watches the store root, the tree roots and the first level (ab/: at most
// 2,704 per tree) permanently, and leaf directories (ab/cd/ and, for
// thumbnails, ab/cd/<rest>/) only in a bounded LRU set (Options.MaxLeafWatches,
// default 10,000) of recently created or active ones. A new directory is
// watched and scanned at once (files created before the watch is in place
// are found by the scan) and scanned again after the quiet period. Files
// written later into a leaf directory that has left the LRU set (at a
// million media, about one upload in seven lands in an existing ab/cd) are
// found through the database when it is reachable: every second the
// Watcher asks local_media_repository for rows created since the last poll
// and looks at their files and thumbnail directories (RecentMedia).
// Without the database, they wait for the periodic reconciling scan
// (Options.ScanInterval, default 1 h). So
// a million media cost about 15k watches and a state of roughly 150 bytes a
// file. If inotify's limit is reached anyway, that is logged once with the
// sysctl to raise, and scans protect the unwatched directories. A kernel
// queue overflow (fsnotify.ErrEventOverflow) triggers a full reconciling
// scan.
//
// # Completeness
//
// Synapse writes files in place (create, many writes, close; no rename), so
// a file is copied only after its mtime is older than Options.QuietPeriod
// (default 2 s) and, when Options.Lengths is set (the database is
// reachable), for local_content files modified within Options.DBGrace, only
// when its size equals local_media_repository.media_length (the row is
// inserted after the file is complete). A matching row makes a
// local_content file complete at once, without the quiet period; a file
// whose row never comes is copied after DBGrace. A file that changes while it is
// copied is not stored under a wrong name: the copy fails its checksum and
// is retried.
package mediawatch
