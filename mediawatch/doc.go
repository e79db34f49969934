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
//	media/index/snapshot-<gen 8>-<last 12>.jsonl
//	                                        a compacted index: every event of the batches it
//	                                        holds, each batch behind a header line
//	                                        {"batch":seq,"batch_sha256":…,"events":n}
//
// path is relative to the media store ("local_content/ab/cd/efgh...");
// event is "added" (the object named by sha256 is durable) or "deleted" (the
// file is gone from the store; its object stays). Batches are immutable and
// their names increase; a batch is stored only after every object it names
// is durable. A writer that finds its next name taken (another synbak
// writing to the same repository) takes the next one.
//
// # Copying
//
// A file is hashed to name its object, the name is looked up (Stat: stored
// already is a deduplication, no upload), and the object is stored. Files
// up to 1 MiB (most media), and up to 4 MiB while the copy buffers' budget
// (Options.CopyMemory, 16 MiB) has room, are read into memory once and
// hashed once (buffers in power-of-two classes from 16 KiB, so a thumbnail
// does not hold a megabyte, and at most the budget of them in use or kept
// free, whatever the number of workers): repo.Content carries the
// checksum into the object's trailer, so the repository does not hash the
// same bytes again. Larger files are hashed, then streamed with
// repo.WantSHA256, which checks the bytes the repository actually reads
// and stores nothing when the file changed in between. Images, video,
// audio and archives are stored without compression (by their first 512
// bytes), so most objects go to the backend without a copy or a pipe; the
// others are compressed at most one per CPU at a time, with compressors
// kept in a repo.EncoderCache of that size (not the repository's sync.Pool,
// which 32 workers filled with one zstd encoder each).
//
// Durability is grouped: objects are stored through a repo.SyncGroup, so
// that on a local repository each object's file is fsynced before it is
// linked under its name (never a partial object under a final name), but
// the fsync of the directory it is linked into is left to the group's
// Sync. The batcher calls Sync before it stores an index batch, so every
// object the batch names is durable first (one fsync per directory for
// all of the batch's objects, instead of one per object). An object found
// by Stat is added to the group too (Include): another worker or another
// synbak may have linked it and not yet made it durable. A crash therefore
// never leaves an index naming a missing object; it may leave objects no
// index names yet, which the next pass finds by Stat.
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
// start by reading the index (its newest snapshot and the batches it does
// not hold; see Index compaction). A file whose size and mtime match the
// state is not copied again; a full scan at start finds whatever changed
// while synbak was not running. A crash between a copy and its index batch
// costs at most a re-read of those files (the object exists already: Stat
// by checksum, no second upload; or, if the crash came before the group's
// Sync, it is stored again).
//
// # Memory
//
// A long-running agent shares a small server with Synapse and PostgreSQL.
// Once the engine is idle after bulk work (a full scan, or 1,000 files
// copied since the last time), it gives memory back: the free copy
// buffers, the compressors, the pending set's table (a Go map never
// shrinks), then debug.FreeOSMemory. The per-path state is carved from
// large blocks (stateArena): a path costs its bytes and a 56-byte entry,
// about 150 bytes with the map, and the scan's garbage does not pin heap
// spans. bench/mediaagent measures the agent's resident set during and
// after the initial copy of 100,000 and 300,000 files.
//
// # Index compaction
//
// Batches are small and many (up to one a second while media arrives), so
// Compact (run by Sync and after the Watcher's full scans once
// Options.CompactAfter batches, default 1000, are outside the newest
// snapshot) writes a snapshot holding the newest snapshot's batches and
// every later batch, verbatim and in sequence order, and then removes what
// it holds. A snapshot keeps the whole history, not only the current state
// — files are never rewritten, so the history is hardly larger than the
// state — and Set/Restore as of any time read exactly the events they read
// before. Loading reads the snapshot with the highest generation, then the
// batches it does not hold (merged by sequence number).
//
// Crash safety: a snapshot is published atomically under a new name (the
// generation grows by one; an existing name is never overwritten: a
// different content there is a conflict and the compaction gives up), and
// objects are removed only after the snapshot holding them is durable,
// batches first. A loader skips a batch object the snapshot holds (same
// sequence number and same sha256: a removal interrupted by a crash) and
// snapshots the newest one subsumes (listed with their sha256 in its
// "subsumes" attribute); the next compaction removes them. A batch stored
// by a writer that loaded the index before a compaction, under a sequence
// number the compaction had removed, has another sha256 and is read; the
// snapshot of a concurrent compaction that the newest does not subsume is
// read too (its batches the newest does not hold).
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
// (default 1 s: Synapse writes an upload in one go, from a request body
// it has already received) and, when Options.Lengths is set (the database is
// reachable), for local_content files modified within Options.DBGrace, only
// when its size equals local_media_repository.media_length (the row is
// inserted after the file is complete). A matching row makes a
// local_content file complete at once, without the quiet period; a file
// whose row never comes is copied after DBGrace. When the row has a
// sha256 (the column exists since Synapse 1.128 and is NULL for older
// media), the file's content must have it too; otherwise it waits like a
// file whose size does not match, until DBGrace. Thumbnails are checked
// the same way against local_media_repository_thumbnails.thumbnail_length
// (Synapse inserts that row after writing the thumbnail) when the checker
// is a ThumbnailChecker (*DBLengths is). A file that changes while it is
// copied is not stored under a wrong name: the copy fails its checksum and
// is retried.
//
// # Verification against the database
//
// VerifyDatabase compares local_media_repository (media_length, and
// sha256 when present) and local_media_repository_thumbnails
// (thumbnail_length; not with dynamic_thumbnails) with the newest state of
// the index, and lists the media and thumbnails the backup lacks (never
// copied, or recorded as deleted from the store while the row stays) and
// those whose backed-up size or sha256 differs. URL-preview rows (url_cache
// set: their files are under url_cache/, which is not backed up) and
// unfinished uploads (media_length NULL) are skipped; rows created within
// VerifyOptions.Grace (2 min) that are not backed up yet are counted, not
// reported. It reads the index, not the objects (repo.Verify checks those).
package mediawatch
