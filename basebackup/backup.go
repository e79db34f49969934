// Package basebackup takes PostgreSQL base backups over the replication
// protocol (BASE_BACKUP, PostgreSQL 15+) and streams them into the
// repository, and lists and loads the backups stored there.
//
// # Repository layout
//
//	backups/<ID>/<archive>.<NNNN>    part NNNN (4 digits, from 0000) of a tar stream
//	                                  as the server sent it: base.tar (the data
//	                                  directory), <OID>.tar (a tablespace), or
//	                                  .tar.zst/.tar.lz4 with server compression;
//	                                  each part holds at most Options.PartSize
//	                                  plaintext bytes
//	backups/<ID>/backup_manifest     the server's backup manifest
//	backups/<ID>/backup.json         the metadata (Backup), written LAST
//
// ID is the start time in UTC (20060102T150405Z) plus "-" and 6 random hex
// digits, so ids sort by time. backup.json is stored only after every part
// and the manifest are stored AND every WAL segment from the start LSN's to
// the end LSN's is in the repository (wal/<TLI>/<SEGMENT>, archived by a WAL
// receiver: the agent, `synbak wal stream`, or the one `synbak backup` runs
// for the duration of the backup). A backup without backup.json is
// incomplete: List never returns it and restore never uses it;
// ListIncomplete shows it so that prune can remove it.
package basebackup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/wal"
)

// Options configure Take.
type Options struct {
	// Label is BASE_BACKUP's label; empty means "synbak <ID>".
	Label string
	// Checkpoint is "fast" (the default when empty) or "spread".
	Checkpoint string
	// ServerCompression is "" or "none" (the default), "lz4" or "zstd":
	// the server compresses, and the archives are stored as received.
	ServerCompression string
	// ZstdLevel, when not 0, overrides the repository's zstd level for the
	// archives (ignored with server compression).
	ZstdLevel int
	// PartSize bounds the plaintext bytes per stored object; 0 means 1 GiB.
	PartSize int64
	// CompressWorkers is how many goroutines compress (and the repository
	// hash and encrypt alongside) the archives: zstd as independent frames
	// (repo.WithWorkers); 0 means one per CPU.
	CompressWorkers int
	// WALTimeout bounds the wait for the WAL the backup needs to appear in
	// the repository; 0 means 10 minutes.
	WALTimeout time.Duration
	// Facts are stored with the backup (Synapse database names ...).
	Facts map[string]string
	// Progress, if not nil, is called from Take's goroutine as the backup
	// advances (at most about every 100 ms, and at every phase change).
	Progress func(Progress)
	// Incremental, if not nil, asks for an incremental backup on top of
	// this complete backup (PostgreSQL 17 or later with summarize_wal on):
	// its stored backup_manifest is uploaded (UPLOAD_MANIFEST) and
	// BASE_BACKUP sends only what changed since. When that is not possible
	// (see IsIncrementalRefused), Take takes a full backup instead, logs
	// why, and records the reason in Backup.IncrementalRefused.
	Incremental *Backup
}

// Progress reports a running backup.
type Progress struct {
	ID    string
	Phase string // "streaming", "waiting for WAL", "done"
	// Done is the bytes sent so far as the server counts them
	// (uncompressed); Total the server's estimate (sum of tablespace sizes).
	Done, Total int64
	// Archive is the archive being received.
	Archive string
}

// DefaultPartSize is the part size when Options.PartSize is 0.
const DefaultPartSize = 1 << 30

const walPollInterval = 100 * time.Millisecond

// Take runs BASE_BACKUP on conn (a replication connection, PostgreSQL 15 or
// later), streams its archives and manifest into r and, once the WAL from
// its start to its end LSN is archived in r, stores its metadata. On error
// the objects it stored are deleted (best effort); whatever a crash leaves
// behind has no backup.json and is never used.
func Take(ctx context.Context, conn *pgconn.PgConn, r *repo.Repo, opts Options, log *slog.Logger) (*Backup, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.PartSize <= 0 {
		opts.PartSize = DefaultPartSize
	}
	if opts.WALTimeout <= 0 {
		opts.WALTimeout = 10 * time.Minute
	}
	switch opts.Checkpoint {
	case "":
		opts.Checkpoint = "fast"
	case "fast", "spread":
	default:
		return nil, fmt.Errorf("checkpoint mode %q: use fast or spread", opts.Checkpoint)
	}
	if opts.ServerCompression == "none" {
		opts.ServerCompression = ""
	}
	switch opts.ServerCompression {
	case "", "lz4", "zstd":
	default:
		return nil, fmt.Errorf("server compression %q: use none, lz4 or zstd", opts.ServerCompression)
	}

	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if m := r.Meta(); m.SystemID != "" && m.SystemID != sys.SystemID {
		return nil, fmt.Errorf("%w: repository %s belongs to system %s, the server is %s", repo.ErrWrongCluster, r, m.SystemID, sys.SystemID)
	}
	version, err := showInt(ctx, conn, "server_version_num")
	if err != nil {
		return nil, err
	}
	if version < 150000 {
		return nil, fmt.Errorf("PostgreSQL %d is not supported: synbak's base backups need PostgreSQL 15 or later", version)
	}
	segText, err := show(ctx, conn, "wal_segment_size")
	if err != nil {
		return nil, err
	}
	segSize, err := parseSize(segText)
	if err != nil {
		return nil, fmt.Errorf("wal_segment_size %q: %w", segText, err)
	}

	start := time.Now().UTC()
	b := &Backup{
		ID:                NewID(start),
		Label:             opts.Label,
		StartTime:         start,
		PGVersion:         version,
		SystemID:          sys.SystemID,
		SegmentSize:       segSize,
		ServerCompression: opts.ServerCompression,
		Facts:             opts.Facts,
		Kind:              KindFull,
	}
	if b.Label == "" {
		b.Label = "synbak " + b.ID
	}
	log = log.With("backup", b.ID)
	t := &taker{ctx: ctx, conn: conn, r: r, opts: opts, log: log, b: b}
	if opts.Incremental != nil {
		err := t.prepareIncremental(*opts.Incremental)
		if err != nil && !IsIncrementalRefused(err) {
			return nil, fmt.Errorf("base backup %s: %w", b.ID, err)
		}
		if err != nil {
			t.refused(err)
		}
	}
	err = t.run()
	if err != nil && IsIncrementalRefused(err) && t.b.Incremental() && !t.started {
		// The server refused before sending anything: take a full
		// backup on the same connection instead.
		t.refused(err)
		err = t.run()
	}
	if err != nil {
		t.cleanup()
		return nil, fmt.Errorf("base backup %s: %w", b.ID, err)
	}
	return b, nil
}

// prepareIncremental checks what synbak can check before asking the server
// for an incremental backup on top of parent, and uploads parent's
// manifest. A reason not to take one is a RefusedError.
func (t *taker) prepareIncremental(parent Backup) error {
	refuse := func(format string, args ...any) error {
		return &RefusedError{Parent: parent.ID, Reason: fmt.Sprintf(format, args...)}
	}
	if t.b.PGVersion < 170000 {
		return refuse("PostgreSQL %d has no incremental backups (they need PostgreSQL 17 or later)", t.b.PGVersion)
	}
	on, err := show(t.ctx, t.conn, "summarize_wal")
	if err != nil {
		return err
	}
	if on != "on" {
		return refuse("summarize_wal is off on the server (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();)")
	}
	if parent.SystemID != t.b.SystemID {
		return refuse("parent %s is of system %s, the server is %s", parent.ID, parent.SystemID, t.b.SystemID)
	}
	if parent.PGVersion/10000 != t.b.PGVersion/10000 {
		return refuse("parent %s was taken from PostgreSQL %d, the server is %d", parent.ID, parent.PGVersion, t.b.PGVersion)
	}
	if parent.SegmentSize != t.b.SegmentSize {
		return refuse("parent %s has WAL segments of %d bytes, the server %d", parent.ID, parent.SegmentSize, t.b.SegmentSize)
	}
	// The parent and everything it needs must still be in the repository.
	cur, err := Load(t.ctx, t.r, parent.ID)
	if err != nil {
		if repo.IsNotExist(err) {
			return refuse("parent %s is no longer in the repository", parent.ID)
		}
		return err
	}
	chain, err := LoadChain(t.ctx, t.r, cur)
	if err != nil {
		if IsChainBroken(err) {
			return &RefusedError{Parent: parent.ID, Reason: "the parent's chain is not usable", Err: err}
		}
		return err
	}
	rd, err := t.r.Get(t.ctx, ManifestName(parent.ID))
	if err != nil {
		if repo.IsNotExist(err) {
			return refuse("parent %s has no backup_manifest in the repository", parent.ID)
		}
		return fmt.Errorf("read the manifest of parent %s: %w", parent.ID, err)
	}
	defer rd.Close()
	// Read whole and checked before the upload: the server parses the
	// manifest as it arrives and may refuse a damaged one before its
	// checksum, at the end, has been read.
	manifest, err := io.ReadAll(rd)
	if err != nil {
		if repo.IsCorrupt(err) {
			return &RefusedError{Parent: parent.ID, Reason: "the parent's stored backup_manifest is damaged", Err: err}
		}
		return fmt.Errorf("read the manifest of parent %s: %w", parent.ID, err)
	}
	if _, err := t.conn.CopyFrom(t.ctx, bytes.NewReader(manifest), "UPLOAD_MANIFEST"); err != nil {
		if refusal(err) {
			return &RefusedError{Parent: parent.ID, Reason: "the server refused the parent's manifest", Err: err}
		}
		return fmt.Errorf("UPLOAD_MANIFEST of parent %s: %w", parent.ID, err)
	}
	t.b.Kind = KindIncremental
	t.b.Parent = parent.ID
	t.b.Chain = ids(chain)
	t.log.Info("incremental backup", "parent", parent.ID, "chain", len(chain))
	return nil
}

// refused turns the backup into a full one after err (a RefusedError).
func (t *taker) refused(err error) {
	t.b.Kind, t.b.Parent, t.b.Chain = KindFull, "", nil
	t.b.IncrementalRefused = err.Error()
	t.log.Info("taking a full backup instead of an incremental one", "err", err)
}

// refusal reports whether err is the server saying that it cannot take an
// incremental backup here (PostgreSQL reports every such reason as
// object_not_in_prerequisite_state: WAL summarization off, a timeline the
// server's history does not hold, summaries missing for the range since
// the parent).
func refusal(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55000"
}

type taker struct {
	ctx  context.Context
	conn *pgconn.PgConn
	r    *repo.Repo
	opts Options
	log  *slog.Logger
	b    *Backup

	progress   Progress
	lastReport time.Time
	// started is set once the server began sending the backup (and
	// objects may have been stored).
	started bool
}

func (t *taker) report(force bool) {
	if t.opts.Progress == nil {
		return
	}
	if !force && time.Since(t.lastReport) < 100*time.Millisecond {
		return
	}
	t.lastReport = time.Now()
	t.opts.Progress(t.progress)
}

func (t *taker) command() string {
	label := strings.ReplaceAll(t.b.Label, "'", "''")
	cmd := fmt.Sprintf("BASE_BACKUP ( LABEL '%s', PROGRESS true, CHECKPOINT '%s', WAIT false, MANIFEST 'yes', TABLESPACE_MAP true, TARGET 'client'", label, t.opts.Checkpoint)
	if t.opts.ServerCompression != "" {
		cmd += fmt.Sprintf(", COMPRESSION '%s'", t.opts.ServerCompression)
	}
	if t.b.Incremental() {
		cmd += ", INCREMENTAL"
	}
	return cmd + " )"
}

func (t *taker) putOpts() []repo.PutOption {
	if t.opts.ServerCompression != "" {
		return []repo.PutOption{repo.Uncompressed(), repo.FastChecksum()}
	}
	workers := t.opts.CompressWorkers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	opts := []repo.PutOption{repo.WithWorkers(workers), repo.FastChecksum()}
	if t.opts.ZstdLevel > 0 {
		opts = append(opts, repo.WithZstdLevel(t.opts.ZstdLevel))
	}
	return opts
}

func (t *taker) run() error {
	t.progress = Progress{ID: t.b.ID, Phase: "streaming"}
	t.log.Info("starting base backup", "kind", t.b.KindName(), "parent", t.b.Parent, "checkpoint", t.opts.Checkpoint, "server_compression", t.opts.ServerCompression)
	if err := t.stream(); err != nil {
		return err
	}
	t.b.EndTime = time.Now().UTC()
	t.log.Info("base backup streamed; waiting for its WAL",
		"start_lsn", t.b.StartLSN.String(), "end_lsn", t.b.EndLSN.String(), "size", t.b.Size(), "stored", t.b.StoredSize())
	t.progress.Phase = "waiting for WAL"
	t.report(true)
	if err := t.waitWAL(); err != nil {
		return err
	}
	if err := storeMeta(t.ctx, t.r, t.b); err != nil {
		return err
	}
	t.progress.Phase = "done"
	t.report(true)
	t.log.Info("base backup complete", "duration", time.Since(t.b.StartTime).Round(time.Millisecond))
	return nil
}

// stream sends BASE_BACKUP and consumes its whole response.
func (t *taker) stream() (err error) {
	t.conn.Frontend().Send(&pgproto3.Query{String: t.command()})
	if err := t.conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("send BASE_BACKUP: %w", err)
	}

	var (
		sets    [][][]*string // result sets before and after the copy
		inCopy  bool
		copied  bool
		cur     *repo.PartWriter // current archive or manifest
		curArc  *Archive
		inManif bool
	)
	defer func() {
		if cur != nil && err != nil {
			cur.Abort()
		}
	}()
	finish := func() error {
		if cur == nil {
			return nil
		}
		parts, err := cur.Close()
		cur = nil
		if err != nil {
			return err
		}
		if inManif {
			if len(parts) != 1 {
				return fmt.Errorf("%w: empty backup manifest", ErrProtocol)
			}
			t.b.Manifest = parts[0]
			return nil
		}
		curArc.Parts = parts
		for _, p := range parts {
			curArc.Size += p.Size
			curArc.StoredSize += p.StoredSize
		}
		t.b.Archives = append(t.b.Archives, *curArc)
		curArc = nil
		return nil
	}

	for {
		msg, err := t.conn.ReceiveMessage(t.ctx)
		if err != nil {
			if t.ctx.Err() != nil {
				return t.ctx.Err()
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			sets = append(sets, nil)
		case *pgproto3.DataRow:
			if len(sets) == 0 {
				return fmt.Errorf("%w: DataRow before RowDescription", ErrProtocol)
			}
			row := make([]*string, len(m.Values))
			for i, v := range m.Values {
				if v != nil {
					s := string(v)
					row[i] = &s
				}
			}
			sets[len(sets)-1] = append(sets[len(sets)-1], row)
		case *pgproto3.CopyOutResponse:
			if copied || inCopy {
				return fmt.Errorf("%w: a second CopyOutResponse (a pre-15 server or an unknown protocol)", ErrProtocol)
			}
			t.started = true
			if err := t.header(sets); err != nil {
				return err
			}
			inCopy = true
		case *pgproto3.CopyData:
			if !inCopy {
				return fmt.Errorf("%w: CopyData outside the copy", ErrProtocol)
			}
			cm, err := DecodeMessage(m.Data)
			if err != nil {
				return err
			}
			switch cm.Kind {
			case KindNewArchive:
				if err := finish(); err != nil {
					return err
				}
				if inManif {
					return fmt.Errorf("%w: new archive %q after the manifest", ErrProtocol, cm.Archive)
				}
				if strings.Contains(cm.Archive, "/") || cm.Archive == "." || cm.Archive == ".." {
					return fmt.Errorf("%w: archive name %q", ErrProtocol, cm.Archive)
				}
				curArc = &Archive{Name: cm.Archive, Path: cm.Path}
				if cm.Path != "" {
					oid, err := t.tablespaceOID(cm.Archive, cm.Path)
					if err != nil {
						return err
					}
					curArc.TablespaceOID = oid
				}
				t.progress.Archive = cm.Archive
				t.log.Debug("receiving archive", "archive", cm.Archive, "path", cm.Path)
				cur = t.r.NewPartWriter(t.ctx, func(n int) string { return PartName(t.b.ID, cm.Archive, n) },
					partAttrs(t.b.ID, cm.Archive), t.opts.PartSize, t.putOpts()...)
				t.report(true)
			case KindManifest:
				if err := finish(); err != nil {
					return err
				}
				inManif = true
				t.progress.Archive = manifestFile
				cur = t.r.NewPartWriter(t.ctx, func(int) string { return ManifestName(t.b.ID) },
					func(int) map[string]string { return map[string]string{"kind": "basebackup", "backup_id": t.b.ID} }, 0)
			case KindData:
				if cur == nil {
					return fmt.Errorf("%w: data before the first archive", ErrProtocol)
				}
				if err := cur.Write(cm.Data); err != nil {
					return err
				}
				if t.opts.ServerCompression == "" && !inManif {
					t.progress.Done += int64(len(cm.Data))
				}
				t.report(false)
			case KindProgress:
				if cm.Progress > t.progress.Done {
					t.progress.Done = cm.Progress
				}
				t.report(false)
			}
		case *pgproto3.CopyDone:
			if !inCopy {
				return fmt.Errorf("%w: CopyDone outside the copy", ErrProtocol)
			}
			if err := finish(); err != nil {
				return err
			}
			if !inManif {
				return fmt.Errorf("%w: the server sent no backup manifest", ErrProtocol)
			}
			inCopy, copied = false, true
			sets = nil
		case *pgproto3.CommandComplete, *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		case *pgproto3.ErrorResponse:
			pe := pgconn.ErrorResponseToPgError(m)
			if t.b.Incremental() && !inCopy && !copied && refusal(pe) {
				// Sent before the backup started: the connection stays
				// usable once its ReadyForQuery is read.
				if err := t.drain(); err != nil {
					return err
				}
				return &RefusedError{Parent: t.b.Parent, Reason: "the server refused", Err: pe}
			}
			return fmt.Errorf("server: %w", pe)
		case *pgproto3.ReadyForQuery:
			if !copied {
				return fmt.Errorf("%w: the server ended BASE_BACKUP without sending the backup", ErrProtocol)
			}
			return t.trailer(sets)
		default:
			return fmt.Errorf("%w: %T", ErrProtocol, msg)
		}
	}
}

// drain reads up to the ReadyForQuery that follows an error.
func (t *taker) drain() error {
	for {
		msg, err := t.conn.ReceiveMessage(t.ctx)
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return nil
		}
	}
}

// header reads the result sets before the copy: start position and the
// tablespaces.
func (t *taker) header(sets [][][]*string) error {
	if len(sets) != 2 || len(sets[0]) != 1 || len(sets[0][0]) < 2 {
		return fmt.Errorf("%w: expected a start-position row and a tablespace list before the data", ErrProtocol)
	}
	lsn, tli, err := position(sets[0][0])
	if err != nil {
		return fmt.Errorf("start position: %w", err)
	}
	t.b.StartLSN, t.b.Timeline = lsn, tli
	for _, row := range sets[1] {
		if len(row) < 3 {
			return fmt.Errorf("%w: tablespace row with %d columns, want 3", ErrProtocol, len(row))
		}
		var ts Tablespace
		if row[0] != nil {
			oid, err := strconv.ParseUint(*row[0], 10, 32)
			if err != nil {
				return fmt.Errorf("%w: tablespace oid %q", ErrProtocol, *row[0])
			}
			ts.OID = uint32(oid)
		}
		if row[1] != nil {
			ts.Location = *row[1]
		}
		if row[2] != nil {
			n, err := strconv.ParseInt(*row[2], 10, 64)
			if err != nil {
				return fmt.Errorf("%w: tablespace size %q", ErrProtocol, *row[2])
			}
			ts.Size = n * 1024 // the server reports kB
		}
		t.b.Tablespaces = append(t.b.Tablespaces, ts)
		t.progress.Total += ts.Size
	}
	t.log.Info("backup started", "start_lsn", t.b.StartLSN.String(), "timeline", t.b.Timeline, "estimated_size", t.progress.Total, "tablespaces", len(t.b.Tablespaces))
	t.report(true)
	return nil
}

// trailer reads the result set after the copy: the end position.
func (t *taker) trailer(sets [][][]*string) error {
	if len(sets) != 1 || len(sets[0]) != 1 || len(sets[0][0]) < 2 {
		return fmt.Errorf("%w: expected an end-position row after the data", ErrProtocol)
	}
	lsn, tli, err := position(sets[0][0])
	if err != nil {
		return fmt.Errorf("end position: %w", err)
	}
	t.b.EndLSN, t.b.EndTimeline = lsn, tli
	return nil
}

func (t *taker) tablespaceOID(archive, path string) (uint32, error) {
	for _, ts := range t.b.Tablespaces {
		if ts.OID != 0 && ts.Location == path {
			return ts.OID, nil
		}
	}
	return 0, fmt.Errorf("%w: archive %q for tablespace %q, which is not in the tablespace list", ErrProtocol, archive, path)
}

func position(row []*string) (pglogrepl.LSN, uint32, error) {
	if row[0] == nil || row[1] == nil {
		return 0, 0, fmt.Errorf("%w: NULL position", ErrProtocol)
	}
	lsn, err := pglogrepl.ParseLSN(*row[0])
	if err != nil {
		return 0, 0, fmt.Errorf("%w: LSN %q", ErrProtocol, *row[0])
	}
	tli, err := strconv.ParseUint(*row[1], 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: timeline %q", ErrProtocol, *row[1])
	}
	return lsn, uint32(tli), nil
}

// Segments returns the WAL segments the backup needs, in order: from the
// one holding StartLSN to the one holding the last byte before EndLSN.
func (b Backup) Segments() []wal.Segment {
	first := wal.SegmentAt(b.Timeline, b.StartLSN, b.SegmentSize)
	end := b.EndLSN
	if end > b.StartLSN {
		end--
	}
	last := wal.SegmentAt(b.EndTimeline, end, b.SegmentSize)
	var out []wal.Segment
	for s := first; s.No <= last.No; s = s.Next() {
		if s.No == last.No {
			s.TLI = last.TLI
		}
		out = append(out, s)
	}
	return out
}

// waitWAL polls the repository until every segment the backup needs is
// stored (on its start or end timeline).
func (t *taker) waitWAL() error {
	deadline := time.Now().Add(t.opts.WALTimeout)
	segs := t.b.Segments()
	for i := 0; i < len(segs); {
		ok, err := t.segmentStored(segs[i])
		if err == nil && !ok && i == len(segs)-1 {
			// The end segment may still be open (always so on a standby,
			// which cannot switch WAL): a partial object holding the end
			// LSN is enough, and the complete segment follows it.
			ok, err = t.partialStored(segs[i])
		}
		if err != nil {
			return err
		}
		if ok {
			i++
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: no WAL receiver archived segment %s (needed from %s to %s) within %s: is the agent or `synbak wal stream` running for this repository? (basebackup.wal_timeout)",
				errNoWAL, segs[i].ObjectName(), t.b.StartLSN, t.b.EndLSN, t.opts.WALTimeout)
		}
		select {
		case <-t.ctx.Done():
			return t.ctx.Err()
		case <-time.After(walPollInterval):
		}
	}
	return nil
}

func (t *taker) segmentStored(s wal.Segment) (bool, error) {
	for _, tli := range []uint32{s.TLI, t.b.EndTimeline, t.b.Timeline} {
		s.TLI = tli
		objs, err := wal.ReadSegment(t.ctx, t.r, s)
		if err != nil {
			return false, err
		}
		if objs.Complete != nil {
			return true, nil
		}
	}
	return false, nil
}

// partialStored reports whether a partial object of s holds every byte up
// to the backup's end LSN.
func (t *taker) partialStored(s wal.Segment) (bool, error) {
	objs, err := wal.ReadSegment(t.ctx, t.r, s)
	if err != nil {
		return false, err
	}
	return objs.Partial != nil && objs.Partial.EndLSN() >= t.b.EndLSN, nil
}

// cleanup deletes what a failed backup stored (best effort; ctx may be
// cancelled already).
func (t *taker) cleanup() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 30*time.Second)
	defer cancel()
	var names []string
	err := t.r.List(ctx, ObjectPrefix(t.b.ID), func(oi storageInfo) error {
		names = append(names, oi.Name)
		return nil
	})
	for _, n := range names {
		if n == MetaName(t.b.ID) {
			continue
		}
		err = errors.Join(err, t.r.Delete(ctx, n))
	}
	if err != nil {
		t.log.Warn("could not remove the failed backup's objects; prune will", "err", err)
	}
}

func show(ctx context.Context, conn *pgconn.PgConn, name string) (string, error) {
	res, err := conn.Exec(ctx, "SHOW "+name).ReadAll()
	if err != nil {
		return "", fmt.Errorf("SHOW %s: %w", name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return "", fmt.Errorf("SHOW %s: unexpected result", name)
	}
	return string(res[0].Rows[0][0]), nil
}

func showInt(ctx context.Context, conn *pgconn.PgConn, name string) (int, error) {
	s, err := show(ctx, conn, name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("SHOW %s: %q is not a number", name, s)
	}
	return n, nil
}

// parseSize parses PostgreSQL's size display ("16MB", "1GB", "8192").
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, err
	}
	return n * mult, nil
}
