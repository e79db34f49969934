package mediawatch

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/synbak/synbak/internal/repo"
)

// VerifyOptions configure VerifyDatabase. Zero values mean the defaults.
type VerifyOptions struct {
	// DynamicThumbnails is Synapse's dynamic_thumbnails: thumbnails are
	// not backed up, so local_media_repository_thumbnails is not checked.
	DynamicThumbnails bool
	// SkipQuarantined leaves quarantined media (quarantined_by set) and
	// their thumbnails out. By default they are checked: quarantine keeps
	// the files, the watcher backs them up, and lifting the quarantine
	// needs them.
	SkipQuarantined bool
	// Grace: rows created less than Grace before the check (by created_ts)
	// are not reported missing — the watcher may not have copied them yet
	// (default 2 min; negative: report everything).
	Grace time.Duration
	// Now is the time the check is made as of (default time.Now()); tests.
	Now time.Time
}

// ProblemKind says what is wrong with one backed-up file.
type ProblemKind string

// Problems VerifyDatabase reports.
const (
	// Missing: the database has the media, the backup has never had the file.
	Missing ProblemKind = "missing"
	// MissingDeleted: the backup recorded the file as deleted from the
	// store while the database still has the row (the object is kept:
	// restores as of earlier times have it).
	MissingDeleted ProblemKind = "deleted"
	// SizeDiffers: the backed-up size is not media_length (or
	// thumbnail_length).
	SizeDiffers ProblemKind = "size-differs"
	// SHA256Differs: same size, but the backed-up content's sha256 is not
	// local_media_repository.sha256.
	SHA256Differs ProblemKind = "sha256-differs"
)

// Problem is one file the database knows and the backup does not hold as
// the database describes it.
type Problem struct {
	Kind ProblemKind
	// Path is relative to the media store ("local_content/ab/cd/…" or
	// "local_thumbnails/ab/cd/…/32-32-image-png-crop").
	Path    string
	MediaID string
	// Thumbnail is set for thumbnails.
	Thumbnail *Thumbnail
	// Quarantined is true for quarantined media.
	Quarantined bool
	// DBLength and DBSHA256 are what the database says (DBSHA256 "" when
	// it has none).
	DBLength int64
	DBSHA256 string
	// BackupSize and BackupSHA256 are what the backup holds (for Missing:
	// nothing; for MissingDeleted: the last copy before the deletion).
	BackupSize   int64
	BackupSHA256 string
	// DeletedAt is when the backup recorded the deletion (MissingDeleted).
	DeletedAt time.Time
}

// String is one line describing p.
func (p Problem) String() string {
	what := "media " + p.MediaID
	if p.Thumbnail != nil {
		what = "thumbnail of media " + p.MediaID
	}
	if p.Quarantined {
		what += ", quarantined"
	}
	switch p.Kind {
	case Missing:
		return fmt.Sprintf("missing %s (%s, %d bytes): not in the backup", p.Path, what, p.DBLength)
	case MissingDeleted:
		return fmt.Sprintf("missing %s (%s, %d bytes): the backup recorded it deleted from the media store at %s (its last copy, %d bytes, is kept)",
			p.Path, what, p.DBLength, p.DeletedAt.UTC().Format(time.RFC3339), p.BackupSize)
	case SizeDiffers:
		return fmt.Sprintf("differs %s (%s): the backup has %d bytes, the database says %d", p.Path, what, p.BackupSize, p.DBLength)
	case SHA256Differs:
		return fmt.Sprintf("differs %s (%s): the backup has sha256 %s, the database says %s", p.Path, what, p.BackupSHA256, p.DBSHA256)
	}
	return fmt.Sprintf("%s %s (%s)", p.Kind, p.Path, what)
}

// VerifyReport is what VerifyDatabase found.
type VerifyReport struct {
	// SHA256Column says whether local_media_repository has the sha256
	// column (Synapse 1.128+); SHA256Checked counts rows whose sha256 was
	// compared.
	SHA256Column  bool
	SHA256Checked int
	// ThumbnailsChecked is false when thumbnails were not checked
	// (dynamic_thumbnails).
	ThumbnailsChecked bool

	// Media and Thumbnails count the rows checked; MediaOK and
	// ThumbnailsOK those the backup holds as described.
	Media, MediaOK           int
	Thumbnails, ThumbnailsOK int
	// Recent counts rows created within the grace period that the backup
	// does not hold (yet): not problems.
	Recent int
	// Skipped counts rows not checked: URL-preview cache entries
	// (url_cache set: stored under url_cache/, not backed up), uploads
	// not finished (media_length NULL), quarantined media with
	// SkipQuarantined, and ids or types that name no path.
	SkippedURLCache, SkippedPending, SkippedQuarantined, SkippedInvalid int

	// Missing lists media and thumbnails the database has and the backup
	// lacks (Missing, MissingDeleted); Different those whose backed-up
	// size or sha256 differs. Both sorted by path.
	Missing, Different []Problem
}

// OK says whether no problem was found.
func (r VerifyReport) OK() bool { return len(r.Missing) == 0 && len(r.Different) == 0 }

// Problems returns Missing and Different, in one list sorted by path.
func (r VerifyReport) Problems() []Problem {
	all := append(append([]Problem(nil), r.Missing...), r.Different...)
	sort.Slice(all, func(i, j int) bool { return all[i].Path < all[j].Path })
	return all
}

// Summary is one line of counts.
func (r VerifyReport) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "media: %d rows checked, %d ok", r.Media, r.MediaOK)
	if r.ThumbnailsChecked {
		fmt.Fprintf(&b, "; thumbnails: %d rows checked, %d ok", r.Thumbnails, r.ThumbnailsOK)
	} else {
		b.WriteString("; thumbnails not checked (dynamic_thumbnails)")
	}
	fmt.Fprintf(&b, "; %d missing, %d different", len(r.Missing), len(r.Different))
	if r.SHA256Column {
		fmt.Fprintf(&b, "; sha256 compared for %d", r.SHA256Checked)
	} else {
		b.WriteString("; no sha256 column (Synapse before 1.128): sizes only")
	}
	if r.Recent > 0 {
		fmt.Fprintf(&b, "; %d recent uploads not in the backup yet", r.Recent)
	}
	if n := r.SkippedURLCache + r.SkippedPending + r.SkippedQuarantined + r.SkippedInvalid; n > 0 {
		fmt.Fprintf(&b, "; skipped %d (URL cache %d, unfinished uploads %d, quarantined %d, invalid %d)",
			n, r.SkippedURLCache, r.SkippedPending, r.SkippedQuarantined, r.SkippedInvalid)
	}
	return b.String()
}

// String is the summary line and then one line per problem.
func (r VerifyReport) String() string {
	var b strings.Builder
	r.WriteTo(&b)
	return b.String()
}

// WriteTo writes String's text to w.
func (r VerifyReport) WriteTo(w io.Writer) (int64, error) {
	var n int64
	k, err := fmt.Fprintln(w, r.Summary())
	n += int64(k)
	for _, p := range r.Problems() {
		if err != nil {
			break
		}
		k, err = fmt.Fprintln(w, p.String())
		n += int64(k)
	}
	return n, err
}

// VerifyDatabase compares Synapse's live database with the newest state of
// the media backup in r: every local_media_repository row (media_id,
// media_length, and sha256 when the column exists and is not NULL) and,
// unless opts.DynamicThumbnails, every local_media_repository_thumbnails
// row (thumbnail_length) must have its file in the backup, with that size
// and sha256. Rows of the URL-preview cache (url_cache set: their files
// live under url_cache/, which is not backed up) and unfinished uploads
// (media_length NULL) are skipped. The backup's files the database does
// not know (deleted media, kept on purpose) are not problems.
//
// db is a connection to Synapse's main database (a *pgx.Conn, pool or
// transaction; *DBLengths has Verify for its own). Memory is about that of
// the Watcher's state (one entry per backed-up path); the rows are
// streamed.
func VerifyDatabase(ctx context.Context, r *repo.Repo, db Querier, opts VerifyOptions) (VerifyReport, error) {
	if opts.Grace == 0 {
		opts.Grace = 2 * time.Minute
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	recentMS := opts.Now.Add(-max(opts.Grace, 0)).UnixMilli()
	rep := VerifyReport{ThumbnailsChecked: !opts.DynamicThumbnails}

	// The backup as of now; deletions remembered with their time.
	state := map[string]*entry{}
	deletedAt := map[string]time.Time{}
	err := loadIndex(ctx, r, func() error {
		clear(state)
		clear(deletedAt)
		return nil
	}, func(ev Event) error {
		applyEvent(state, nil, ev)
		if ev.Event == Deleted {
			deletedAt[ev.Path] = ev.At
		}
		return nil
	}, nil)
	if err != nil {
		return rep, fmt.Errorf("verify media: %w", err)
	}

	hasSHA, err := hasSHA256Column(ctx, db)
	if err != nil {
		return rep, fmt.Errorf("verify media: %w", err)
	}
	rep.SHA256Column = hasSHA
	shaCol := "NULL::text"
	if hasSHA {
		shaCol = "sha256"
	}

	// check compares one row with the backup; it returns whether the
	// backup holds it as described.
	check := func(p Problem, createdMS *int64) bool {
		st := state[p.Path]
		switch {
		case st == nil || st.deleted:
			if createdMS != nil && *createdMS >= recentMS {
				rep.Recent++
				return false
			}
			p.Kind = Missing
			if st != nil {
				p.Kind = MissingDeleted
				p.BackupSize, p.BackupSHA256, p.DeletedAt = st.size, hex.EncodeToString(st.sha[:]), deletedAt[p.Path]
			}
			rep.Missing = append(rep.Missing, p)
			return false
		}
		p.BackupSize, p.BackupSHA256 = st.size, hex.EncodeToString(st.sha[:])
		if st.size != p.DBLength {
			p.Kind = SizeDiffers
			rep.Different = append(rep.Different, p)
			return false
		}
		if p.DBSHA256 != "" {
			rep.SHA256Checked++
			if p.DBSHA256 != p.BackupSHA256 {
				p.Kind = SHA256Differs
				rep.Different = append(rep.Different, p)
				return false
			}
		}
		return true
	}

	rows, err := db.Query(ctx, "SELECT media_id, media_length, created_ts, url_cache IS NOT NULL, quarantined_by IS NOT NULL, "+shaCol+
		" FROM local_media_repository")
	if err != nil {
		return rep, fmt.Errorf("verify media: query local_media_repository: %w", err)
	}
	for rows.Next() {
		var id string
		var length, created *int64
		var urlCache, quarantined bool
		var sha *string
		if err := rows.Scan(&id, &length, &created, &urlCache, &quarantined, &sha); err != nil {
			rows.Close()
			return rep, fmt.Errorf("verify media: read local_media_repository: %w", err)
		}
		path, ok := mediaContentPath(id)
		switch {
		case urlCache:
			rep.SkippedURLCache++
			continue
		case length == nil:
			rep.SkippedPending++
			continue
		case quarantined && opts.SkipQuarantined:
			rep.SkippedQuarantined++
			continue
		case !ok:
			rep.SkippedInvalid++
			continue
		}
		p := Problem{Path: path, MediaID: id, Quarantined: quarantined, DBLength: *length}
		if sha != nil && len(*sha) == 64 {
			p.DBSHA256 = strings.ToLower(*sha)
		}
		rep.Media++
		if check(p, created) {
			rep.MediaOK++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("verify media: read local_media_repository: %w", err)
	}

	if !opts.DynamicThumbnails {
		// A thumbnail belongs to the URL cache when its media does; one
		// whose media row is gone is checked as local.
		rows, err := db.Query(ctx, `SELECT t.media_id, t.thumbnail_width, t.thumbnail_height, t.thumbnail_type, t.thumbnail_method,
			t.thumbnail_length, m.created_ts, COALESCE(m.url_cache IS NOT NULL, false), COALESCE(m.quarantined_by IS NOT NULL, false)
			FROM local_media_repository_thumbnails t LEFT JOIN local_media_repository m ON m.media_id = t.media_id`)
		if err != nil {
			return rep, fmt.Errorf("verify media: query local_media_repository_thumbnails: %w", err)
		}
		for rows.Next() {
			var id string
			var w, h *int64
			var typ, method *string
			var length, created *int64
			var urlCache, quarantined bool
			if err := rows.Scan(&id, &w, &h, &typ, &method, &length, &created, &urlCache, &quarantined); err != nil {
				rows.Close()
				return rep, fmt.Errorf("verify media: read local_media_repository_thumbnails: %w", err)
			}
			if urlCache {
				rep.SkippedURLCache++
				continue
			}
			if quarantined && opts.SkipQuarantined {
				rep.SkippedQuarantined++
				continue
			}
			if w == nil || h == nil || typ == nil || method == nil || length == nil {
				rep.SkippedInvalid++
				continue
			}
			th := Thumbnail{Width: int(*w), Height: int(*h), Type: *typ, Method: *method}
			path, ok := mediaThumbnailPath(id, th)
			if !ok {
				rep.SkippedInvalid++
				continue
			}
			rep.Thumbnails++
			if check(Problem{Path: path, MediaID: id, Thumbnail: &th, Quarantined: quarantined, DBLength: *length}, created) {
				rep.ThumbnailsOK++
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return rep, fmt.Errorf("verify media: read local_media_repository_thumbnails: %w", err)
		}
	}
	byPath := func(ps []Problem) {
		sort.Slice(ps, func(i, j int) bool { return ps[i].Path < ps[j].Path })
	}
	byPath(rep.Missing)
	byPath(rep.Different)
	return rep, nil
}

// Verify is VerifyDatabase on d's connection (held for the whole check).
func (d *DBLengths) Verify(ctx context.Context, r *repo.Repo, opts VerifyOptions) (VerifyReport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.ensure(ctx); err != nil {
		return VerifyReport{}, err
	}
	return VerifyDatabase(ctx, r, d.conn, opts)
}
