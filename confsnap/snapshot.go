package confsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/synapse"
)

// MaxFileSize bounds the size of a file a snapshot holds: config files,
// keys and certificates are small, and a bigger one is a misconfigured path.
const MaxFileSize = 16 << 20

// errChanging says that a file changed while it was read.
var errChanging = errors.New("file changed while it was read; it is read again shortly")

// Result says what one snapshot did.
type Result struct {
	// Time is the snapshot's time (from its clock, UTC).
	Time time.Time
	// Files is the number of files tracked, Missing how many of them do
	// not exist.
	Files, Missing int
	// Changed is the number of records stored (new content, mode or
	// owner, newly missing).
	Changed int
	// Stored says that a batch was stored (something changed), as Seq.
	Stored bool
	Seq    uint64
}

// Snapshot makes one snapshot of files into r: it reads the index (the
// state of the last snapshot), reads every file, stores the content of
// those that changed and a batch recording them, and returns what it did.
// log may be nil (discard); now may be nil (time.Now). Files that cannot be
// read are not recorded; the error (errors.Join of one per file) is
// returned with the Result of the rest.
func Snapshot(ctx context.Context, r *repo.Repo, files []synapse.File, log *slog.Logger, now func() time.Time) (Result, error) {
	s := newSnapshotter(r, log, now)
	if err := s.load(ctx); err != nil {
		return Result{}, err
	}
	res, ferrs, err := s.snapshot(ctx, files)
	if err != nil {
		return res, err
	}
	return res, errors.Join(ferrs...)
}

// snapshotter holds the state of the last snapshot (rebuilt from the index
// by load). It is used from one goroutine at a time.
type snapshotter struct {
	r   *repo.Repo
	log *slog.Logger
	now func() time.Time

	seq      uint64
	lastTime time.Time
	list     []Tracked
	state    map[string]Record // path → last record
	known    map[string]bool   // sha256 of stored objects
	fileErr  map[string]string // path → last logged read error
}

func newSnapshotter(r *repo.Repo, log *slog.Logger, now func() time.Time) *snapshotter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &snapshotter{r: r, log: log, now: now, fileErr: map[string]string{}}
}

func (s *snapshotter) load(ctx context.Context) error {
	state := map[string]Record{}
	known := map[string]bool{}
	var list []Tracked
	var lastTime time.Time
	seq, err := ReadIndex(ctx, s.r, func(b Batch) error {
		list = b.Files
		lastTime = b.Time
		for _, rec := range b.Records {
			state[rec.Path] = rec
			if !rec.Deleted {
				known[rec.SHA256] = true
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.seq, s.list, s.state, s.known, s.lastTime = seq, list, state, known, lastTime
	return nil
}

// observation is what reading a file found.
type observation struct {
	missing  bool
	data     []byte
	sha      string
	mode     string
	mtime    time.Time
	uid, gid int
}

func observe(path string) (observation, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return observation{missing: true}, nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return observation{}, fmt.Errorf("%w (synbak must be able to read it: run the agent as root, or give its user read access, e.g. as a member of Synapse's group for Synapse's files or of the postgres group for PostgreSQL's)", err)
	}
	if err != nil {
		return observation{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return observation{}, err
	}
	if !fi.Mode().IsRegular() {
		return observation{}, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return observation{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return observation{}, fmt.Errorf("%s is larger than %d bytes: not a config file", path, MaxFileSize)
	}
	after, err := f.Stat()
	if err != nil {
		return observation{}, err
	}
	if int64(len(data)) != after.Size() || !after.ModTime().Equal(fi.ModTime()) {
		return observation{}, fmt.Errorf("%s: %w", path, errChanging)
	}
	sum := sha256.Sum256(data)
	o := observation{
		data:  data,
		sha:   hex.EncodeToString(sum[:]),
		mode:  fmt.Sprintf("%04o", uint32(after.Mode().Perm())|specialBits(after.Mode())),
		mtime: after.ModTime().UTC(),
	}
	if st, ok := after.Sys().(*syscall.Stat_t); ok {
		o.uid, o.gid = int(st.Uid), int(st.Gid)
	}
	return o, nil
}

// specialBits maps Go's setuid, setgid and sticky flags to their octal bits.
func specialBits(m fs.FileMode) uint32 {
	var b uint32
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// snapshot compares files with the state and stores what changed. It
// returns the per-file read errors separately from err, a repository
// error (nothing recorded then).
func (s *snapshotter) snapshot(ctx context.Context, files []synapse.File) (Result, []error, error) {
	list, err := trackedList(files)
	if err != nil {
		return Result{}, nil, err
	}
	now := s.now().UTC()
	res := Result{Time: now, Files: len(list)}
	var recs []Record
	var ferrs []error
	for _, t := range list {
		if err := ctx.Err(); err != nil {
			return res, nil, err
		}
		prev, seen := s.state[t.Path]
		o, err := observe(t.Path)
		if err != nil {
			ferrs = append(ferrs, err)
			if msg := err.Error(); s.fileErr[t.Path] != msg {
				s.fileErr[t.Path] = msg
				level := slog.LevelWarn
				if errors.Is(err, errChanging) {
					level = slog.LevelDebug
				}
				s.log.Log(ctx, level, "cannot read config file; its previous snapshot stays in effect", "path", t.Path, "role", t.Role, "err", err)
			}
			if seen && prev.Deleted {
				res.Missing++
			}
			continue
		}
		if _, had := s.fileErr[t.Path]; had {
			delete(s.fileErr, t.Path)
			s.log.Info("config file readable again", "path", t.Path, "role", t.Role)
		}
		if o.missing {
			res.Missing++
			if seen && prev.Deleted {
				continue
			}
			recs = append(recs, Record{Time: now, Path: t.Path, Role: t.Role, Secret: t.Secret, Deleted: true})
			continue
		}
		if seen && !prev.Deleted && prev.SHA256 == o.sha && prev.Mode == o.mode && prev.UID == o.uid && prev.GID == o.gid {
			continue
		}
		if !s.known[o.sha] {
			if err := s.storeObject(ctx, o); err != nil {
				return res, nil, fmt.Errorf("store config file %s: %w", t.Path, err)
			}
			s.known[o.sha] = true
		}
		recs = append(recs, Record{
			Time: now, Path: t.Path, Role: t.Role, Secret: t.Secret,
			SHA256: o.sha, Size: int64(len(o.data)), Mode: o.mode, MTime: o.mtime, UID: o.uid, GID: o.gid,
		})
	}
	if len(recs) == 0 && sameList(list, s.list) {
		return res, ferrs, nil
	}
	seq, err := storeBatch(ctx, s.r, s.seq+1, Batch{Time: now, Files: list, Records: recs})
	if err != nil {
		return res, nil, err
	}
	s.seq, s.list, s.lastTime = seq, list, now
	for _, rec := range recs {
		s.state[rec.Path] = rec
		attrs := []any{"path", rec.Path, "role", rec.Role}
		switch {
		case rec.Deleted:
			s.log.Warn("config file missing; its last content stays in the repository", attrs...)
		default:
			s.log.Info("config file stored", append(attrs, "size", rec.Size, "mode", rec.Mode)...)
		}
	}
	res.Changed, res.Stored, res.Seq = len(recs), true, seq
	s.log.Info("config snapshot stored", "seq", seq, "files", len(list), "changed", len(recs), "missing", res.Missing)
	return res, ferrs, nil
}

// storeObject stores o's content unless an object with its checksum exists
// already (a crash between object and batch, or a restart).
func (s *snapshotter) storeObject(ctx context.Context, o observation) error {
	name := ObjectName(o.sha)
	info, err := s.r.Stat(ctx, name)
	if err == nil && info.SHA256 == o.sha && info.Size == int64(len(o.data)) {
		return nil
	}
	if err != nil && !repo.IsNotExist(err) {
		return err
	}
	_, err = s.r.Put(ctx, name, bytes.NewReader(o.data), nil)
	return err
}
