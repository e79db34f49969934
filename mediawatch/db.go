package mediawatch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
)

// LengthChecker tells how long Synapse says a local media file is.
type LengthChecker interface {
	// MediaLength returns local_media_repository.media_length of
	// mediaID; found is false when there is no row (yet).
	MediaLength(ctx context.Context, mediaID string) (length int64, found bool, err error)
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
}

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
	return nil
}

// MediaLength implements LengthChecker.
func (d *DBLengths) MediaLength(ctx context.Context, mediaID string) (int64, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil || d.conn.IsClosed() {
		if err := d.connect(ctx); err != nil {
			return 0, false, err
		}
	}
	var n *int64
	err := d.conn.QueryRow(ctx, "SELECT media_length FROM local_media_repository WHERE media_id = $1", mediaID).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("query local_media_repository: %w", err)
	}
	if n == nil {
		return 0, false, nil
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
	if d.conn == nil || d.conn.IsClosed() {
		if err := d.connect(ctx); err != nil {
			return nil, sinceMS, err
		}
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
