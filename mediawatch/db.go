package mediawatch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// LengthChecker tells how long Synapse says a local media file is.
type LengthChecker interface {
	// MediaLength returns local_media_repository.media_length of
	// mediaID; found is false when there is no row (yet).
	MediaLength(ctx context.Context, mediaID string) (length int64, found bool, err error)
}

// DigestChecker is optionally implemented by a LengthChecker: it also
// gives the sha256 Synapse recorded for the media (the
// local_media_repository.sha256 column of Synapse 1.128 and later), so that
// a file whose size matches but whose content does not is not taken as
// complete.
type DigestChecker interface {
	// MediaDigest returns media_length and sha256 (lowercase hex; "" when
	// the column does not exist or is NULL for the row) of mediaID; found
	// is false when there is no row or its media_length is NULL.
	MediaDigest(ctx context.Context, mediaID string) (length int64, sha256hex string, found bool, err error)
}

// ThumbnailChecker is optionally implemented by a LengthChecker: it gives
// local_media_repository_thumbnails.thumbnail_length, which Synapse
// records after writing the thumbnail file, so that a thumbnail of that
// size is complete without waiting for the quiet period.
type ThumbnailChecker interface {
	// ThumbnailLength returns thumbnail_length of mediaID's thumbnail th;
	// found is false when there is no row (yet) or its length is NULL.
	ThumbnailLength(ctx context.Context, mediaID string, th Thumbnail) (length int64, found bool, err error)
}

// Thumbnail names one of a local media's thumbnails, as in
// local_media_repository_thumbnails.
type Thumbnail struct {
	Width, Height int
	// Type is the content type ("image/png"); Method is "crop" or "scale".
	Type, Method string
}

// FileName is the thumbnail's file name in Synapse's media store,
// "<width>-<height>-<top type>-<sub type>-<method>" (synapse/media/filepath.py).
func (t Thumbnail) FileName() string {
	return strconv.Itoa(t.Width) + "-" + strconv.Itoa(t.Height) + "-" + strings.Replace(t.Type, "/", "-", 1) + "-" + t.Method
}

// ParseThumbnailName parses a thumbnail's file name (see FileName). The
// top-level content type has no dash; the sub type may.
func ParseThumbnailName(name string) (Thumbnail, bool) {
	parts := strings.Split(name, "-")
	if len(parts) < 5 {
		return Thumbnail{}, false
	}
	w, err1 := strconv.Atoi(parts[0])
	h, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || w <= 0 || h <= 0 {
		return Thumbnail{}, false
	}
	method := parts[len(parts)-1]
	if method == "" || parts[2] == "" {
		return Thumbnail{}, false
	}
	return Thumbnail{Width: w, Height: h, Type: parts[2] + "/" + strings.Join(parts[3:len(parts)-1], "-"), Method: method}, true
}

// contentMediaID returns the media id of a local_content path
// ("local_content/ab/cd/efgh…" → "abcdefgh…").
func contentMediaID(p string) (string, bool) {
	parts := strings.Split(p, "/")
	if len(parts) != 4 || parts[0] != LocalContent {
		return "", false
	}
	return parts[1] + parts[2] + parts[3], true
}

// thumbnailOf returns the media id and thumbnail of a local_thumbnails path
// ("local_thumbnails/ab/cd/efgh…/32-32-image-png-crop").
func thumbnailOf(p string) (string, Thumbnail, bool) {
	parts := strings.Split(p, "/")
	if len(parts) != 5 || parts[0] != LocalThumbnails {
		return "", Thumbnail{}, false
	}
	th, ok := ParseThumbnailName(parts[4])
	return parts[1] + parts[2] + parts[3], th, ok
}

// mediaContentPath and mediaThumbnailPath are where Synapse stores a local media
// and its thumbnail, relative to the media store; ok is false for a media
// id that cannot name a path there.
func mediaContentPath(mediaID string) (string, bool) {
	if !validMediaID(mediaID) {
		return "", false
	}
	return LocalContent + "/" + mediaID[:2] + "/" + mediaID[2:4] + "/" + mediaID[4:], true
}

func mediaThumbnailPath(mediaID string, th Thumbnail) (string, bool) {
	name := th.FileName()
	top, sub, ok := strings.Cut(th.Type, "/")
	if !validMediaID(mediaID) || !ok || top == "" || strings.Contains(sub, "/") || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", false
	}
	return LocalThumbnails + "/" + mediaID[:2] + "/" + mediaID[2:4] + "/" + mediaID[4:] + "/" + name, true
}

func validMediaID(id string) bool {
	if len(id) < 5 || strings.ContainsAny(id, "/\x00") {
		return false
	}
	for _, el := range []string{id[:2], id[2:4], id[4:]} {
		if el == "." || el == ".." {
			return false
		}
	}
	return true
}

// Querier is a database handle: *pgx.Conn, *pgxpool.Pool and pgx.Tx are.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// hasSHA256Column says whether local_media_repository (as the search path
// resolves it) has Synapse 1.128's sha256 column.
func hasSHA256Column(ctx context.Context, q Querier) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
		WHERE attrelid = to_regclass('local_media_repository') AND attname = 'sha256' AND attnum > 0 AND NOT attisdropped)`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look for local_media_repository.sha256: %w", err)
	}
	return ok, nil
}

// RecentMedia is optionally implemented by a LengthChecker: the Watcher
// polls it for media created since a time, so that files written into leaf
// directories it does not watch (any more) are noticed within seconds.
type RecentMedia interface {
	// MediaSince returns the ids of local media created at or after
	// sinceMS (milliseconds since the epoch, created_ts) and the newest
	// created_ts among them (sinceMS when there are none).
	MediaSince(ctx context.Context, sinceMS int64) (ids []string, newestMS int64, err error)
}

// DBLengths is a LengthChecker and RecentMedia on Synapse's database, over one connection
// (reconnected when it breaks). It is safe for concurrent use.
type DBLengths struct {
	connString string

	mu   sync.Mutex
	conn *pgx.Conn
	// hasSHA caches whether the sha256 column exists, as of shaChecked
	// (looked up again after shaRecheck: Synapse may be upgraded).
	hasSHA     bool
	shaChecked time.Time
}

const shaRecheck = 10 * time.Minute

var (
	_ LengthChecker    = (*DBLengths)(nil)
	_ DigestChecker    = (*DBLengths)(nil)
	_ ThumbnailChecker = (*DBLengths)(nil)
	_ RecentMedia      = (*DBLengths)(nil)
)

// OpenDBLengths connects to Synapse's main database.
func OpenDBLengths(ctx context.Context, connString string) (*DBLengths, error) {
	d := &DBLengths{connString: connString}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.connect(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *DBLengths) connect(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.connString)
	if err != nil {
		return fmt.Errorf("connect to Synapse's database for media lengths: %w", err)
	}
	d.conn = conn
	d.shaChecked = time.Time{}
	return nil
}

// ensure (re)connects when needed; the caller holds mu.
func (d *DBLengths) ensure(ctx context.Context) error {
	if d.conn == nil || d.conn.IsClosed() {
		return d.connect(ctx)
	}
	return nil
}

// MediaLength implements LengthChecker.
func (d *DBLengths) MediaLength(ctx context.Context, mediaID string) (int64, bool, error) {
	n, _, found, err := d.MediaDigest(ctx, mediaID)
	return n, found, err
}

// MediaDigest implements DigestChecker.
func (d *DBLengths) MediaDigest(ctx context.Context, mediaID string) (int64, string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.ensure(ctx); err != nil {
		return 0, "", false, err
	}
	if time.Since(d.shaChecked) > shaRecheck {
		ok, err := hasSHA256Column(ctx, d.conn)
		if err != nil {
			return 0, "", false, err
		}
		d.hasSHA, d.shaChecked = ok, time.Now()
	}
	q := "SELECT media_length, NULL::text FROM local_media_repository WHERE media_id = $1"
	if d.hasSHA {
		q = "SELECT media_length, sha256 FROM local_media_repository WHERE media_id = $1"
	}
	var n *int64
	var sha *string
	err := d.conn.QueryRow(ctx, q, mediaID).Scan(&n, &sha)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, fmt.Errorf("query local_media_repository: %w", err)
	}
	if n == nil {
		return 0, "", false, nil
	}
	h := ""
	if sha != nil {
		h = strings.ToLower(*sha)
	}
	return *n, h, true, nil
}

// ThumbnailLength implements ThumbnailChecker.
func (d *DBLengths) ThumbnailLength(ctx context.Context, mediaID string, th Thumbnail) (int64, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.ensure(ctx); err != nil {
		return 0, false, err
	}
	var n *int64
	err := d.conn.QueryRow(ctx, `SELECT thumbnail_length FROM local_media_repository_thumbnails
		WHERE media_id = $1 AND thumbnail_width = $2 AND thumbnail_height = $3 AND thumbnail_type = $4 AND thumbnail_method = $5`,
		mediaID, th.Width, th.Height, th.Type, th.Method).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && n == nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("query local_media_repository_thumbnails: %w", err)
	}
	return *n, true, nil
}

// Close closes the connection.
func (d *DBLengths) Close(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		return nil
	}
	err := d.conn.Close(ctx)
	d.conn = nil
	return err
}

// MediaSince implements RecentMedia.
func (d *DBLengths) MediaSince(ctx context.Context, sinceMS int64) ([]string, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.ensure(ctx); err != nil {
		return nil, sinceMS, err
	}
	rows, err := d.conn.Query(ctx, "SELECT media_id, created_ts FROM local_media_repository WHERE created_ts >= $1 ORDER BY created_ts LIMIT 10000", sinceMS)
	if err != nil {
		return nil, sinceMS, fmt.Errorf("query local_media_repository: %w", err)
	}
	defer rows.Close()
	var ids []string
	newest := sinceMS
	for rows.Next() {
		var id string
		var ts int64
		if err := rows.Scan(&id, &ts); err != nil {
			return nil, sinceMS, fmt.Errorf("query local_media_repository: %w", err)
		}
		ids = append(ids, id)
		newest = max(newest, ts)
	}
	if err := rows.Err(); err != nil {
		return nil, sinceMS, fmt.Errorf("query local_media_repository: %w", err)
	}
	return ids, newest, nil
}
