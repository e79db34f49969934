// Package confsnap backs up a Synapse homeserver's configuration files and
// signing key continuously (Watcher, Snapshot), restores them as of any
// time (Restore), and can replace a restored signing key by a new one while
// keeping the old public key in old_signing_keys (NewSigningKey).
//
// The files to hold are the ones synapse.Homeserver.BackupFiles lists: the
// config files (homeserver.yaml, conf.d/*.yaml), log_config, app service
// files, the signing key and the file-valued secrets. Most of them hold
// credentials: their contents are never logged (not even their checksums),
// only paths, roles and sizes.
//
// # Repository layout
//
//	config/objects/<sha256>            a file's content, content-addressed: stored once
//	                                   however many paths, snapshots or restarts name it;
//	                                   never deleted (a vanished file's content is kept)
//	config/index/<seq 12 digits>.json  one snapshot batch, immutable, stored only when
//	                                   something changed, after every object it names
//
// A batch is one JSON object (see Batch):
//
//	{"time": T, "files": [{"path", "role", "secret"}, ...],
//	 "records": [{"time", "path", "role", "secret", "sha256", "size", "mode",
//	              "mtime", "uid", "gid", "deleted"}, ...]}
//
// files is the whole list of tracked files at T, in the order
// BackupFiles gives (Synapse's read order for config files); records are
// only the files that changed since the previous batch: new content, mode or
// owner ("deleted": false, sha256 names the object), or a file found missing
// ("deleted": true, no sha256; its earlier content stays in the
// repository). A batch is also stored when only the list changed (a file
// added to or dropped from the configuration). Records are dated by the
// snapshot's clock, i.e. when synbak saw the change: a change made while
// synbak was not running is dated by the first snapshot after it (mtime is
// recorded too, but copies with preserved times make it unreliable as a
// date). A writer that finds its next batch name taken (another synbak on
// the same repository) takes the next one.
//
// # Snapshots and restarts
//
// A snapshot reads every tracked file once (the bytes hashed are the bytes
// stored), compares it with the last record of its path, stores the objects
// it does not know and then the batch. The state (path → last record, list)
// is rebuilt from the index on start, so a restart stores nothing twice and
// finds whatever changed while synbak was down. A file that cannot be read
// (permissions, not a regular file, changing while read) is not recorded as
// missing: the error is logged once and reported by Status and Snapshot,
// and the previous record stays in effect.
//
// # Watching
//
// Editors and config managers replace files by renaming a temporary file
// over them, which a watch on the file itself would lose; the Watcher
// therefore watches the files' directories (and, for symlinks, the
// directory of the target; names starting with ".." count too, for
// Kubernetes' atomic writer), checks after Options.Debounce of quiet (1 s;
// at most 10 debounce periods after the first event), and also every
// Options.RecheckInterval (5 min) in case an event was lost. A directory
// that does not exist is logged once and tried again at every check. With
// Options.Refresh set, the file list is re-read at every check (e.g. by
// synapse.Load, so that a new app service file or conf.d file is picked up).
//
// # Restore
//
// Restore(ctx, r, at, dir) takes the newest batch dated at or before at: its
// file list is the set, and each file's content is the last record of its
// path up to that batch. It writes
//
//	dir/synbak-manifest.json    the Manifest: for every file its original absolute
//	                            path, role, sha256, size, original mode and owner,
//	                            and the time the content was first seen
//	dir/<original absolute path>
//
// so /etc/matrix-synapse/conf.d/x.yaml becomes dir/etc/matrix-synapse/conf.d/x.yaml
// and copying dir/ back to / puts everything in place. Files get their
// recorded mode and, when the restore runs as root, their recorded owner;
// otherwise they belong to whoever restored them, secret files without
// group and other bits. Directories are 0700. dir must be missing or empty; the files are
// written into a temporary directory inside dir first and moved into place
// at the end, so a failed restore leaves dir as it was. Files missing at
// the time are listed in Manifest.Missing and not written. A time before
// the first snapshot is an error for which IsNoSnapshot is true.
//
// # A new signing key
//
// NewSigningKey(dir, opts) works on a restored directory: it writes a new
// ed25519 key (Synapse's format: "ed25519 a_XXXX <unpadded base64 seed>") in
// place of the restored signing key, and adds the old key(s) to
// old_signing_keys ({key: <public key>, expired_ts: <ms>}) in the restored
// config file that holds old_signing_keys (the last one in read order that
// has the key, else the first config file). The edit is textual and
// minimal: a block mapping gets new lines after its last entry; an absent
// key gets a block (with a one-line comment) appended at the end of the
// file; an empty or flow-style
// value is rewritten as a block. The result is parsed back and checked
// (every other setting unchanged, every earlier entry kept) before anything
// is written. The manifest records the change; running it twice is refused.
//
// # Use
//
// In the agent (one goroutine of its group):
//
//	pg := confsnap.NewPostgresFiles(settings, r, log, 0) // PostgreSQL's own files (see below)
//	load := func(ctx context.Context) ([]synapse.File, error) {
//		hs, err := synapse.Load(paths, workdir)
//		if err != nil {
//			return nil, err
//		}
//		return confsnap.WithPostgresFiles(hs.BackupFiles(), pg.Files(ctx)), nil
//	}
//	files, err := load(ctx)
//	w := confsnap.NewWatcher(r, confsnap.Options{Files: files, Refresh: load, Logger: log})
//	err = w.Run(ctx) // nil after ctx ends; w.Status() for status and metrics
//
// For `synbak restore --config-dir dir` (with the database's target time, so
// that the signing key matches the restored database):
//
//	m, err := confsnap.Restore(ctx, r, target, dir) // confsnap.IsNoSnapshot(err): none that early
//	ch, err := confsnap.NewSigningKey(dir, confsnap.KeyOptions{}) // only if a new key is wanted
//
// A one-shot snapshot (e.g. in `synbak dump`) is confsnap.Snapshot(ctx, r,
// files, log, nil).
//
// # PostgreSQL's own settings files
//
// Where postgresql.conf, pg_hba.conf and pg_ident.conf live outside the data
// directory (Debian: /etc/postgresql/<version>/<cluster>/), no base backup
// holds them, so snapshots do: PostgresFileList lists config_file,
// hba_file, ident_file (roles RolePGConfig, RolePGHba, RolePGIdent), the
// files postgresql.conf includes, recursively (include, include_if_exists,
// include_dir; RolePGInclude) and Debian's start.conf, pg_ctl.conf and
// environment beside it (RolePGCluster), each only when outside the data
// directory. PostgresFiles asks the server (ServerSettings: SHOW
// config_file, hba_file, ident_file, data_directory, which needs superuser
// or pg_read_all_settings) at most every 5 minutes and follows the
// includes at every call; it keeps the last known list when the server
// cannot be asked (at start, the newest snapshot's), and lists nothing for
// a server on another machine. They are restored like every other file;
// ServerFiles(manifest) names the restored config_file and hba_file.
package confsnap
