package overview

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/synbak/synbak/internal/repo"
)

// Cache keeps the newest Overview of a repository and rebuilds it when
// asked for one older than MaxAge, at most once per MaxAge. Run does the
// building; Get never blocks longer than its ctx allows.
type Cache struct {
	Repo *repo.Repo
	// MaxAge: an overview older than this is rebuilt when asked for
	// (default 60 s).
	MaxAge time.Duration
	Log    *slog.Logger

	once    sync.Once
	want    chan struct{}
	mu      sync.Mutex
	cur     *Overview
	err     error
	updated chan struct{} // closed and replaced after each build
}

func (c *Cache) init() {
	c.once.Do(func() {
		if c.MaxAge <= 0 {
			c.MaxAge = time.Minute
		}
		if c.Log == nil {
			c.Log = slog.New(slog.DiscardHandler)
		}
		c.want = make(chan struct{}, 1)
		c.updated = make(chan struct{})
	})
}

// Get returns the newest overview. When it is older than MaxAge (or there
// is none) it asks Run for a new one; it waits for that only when there
// is none yet, and then only until ctx ends. The error is the newest
// build's (the overview returned with it is the last good one, if any).
func (c *Cache) Get(ctx context.Context) (*Overview, error) {
	c.init()
	c.mu.Lock()
	cur, err, updated := c.cur, c.err, c.updated
	c.mu.Unlock()
	if cur == nil || time.Since(cur.Built) > c.MaxAge {
		select {
		case c.want <- struct{}{}:
		default:
		}
	}
	if cur != nil || err != nil {
		return cur, err
	}
	select {
	case <-updated:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.err
}

// Run builds overviews when Get asks for one, at most once per MaxAge,
// until ctx is cancelled (then it returns nil).
func (c *Cache) Run(ctx context.Context) error {
	c.init()
	bd := &builder{times: map[string]objTimes{}}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.want:
		}
		if wait := c.MaxAge - time.Since(last); !last.IsZero() && wait > 0 {
			if !sleep(ctx, wait) {
				return nil
			}
		}
		last = time.Now()
		o, err := bd.build(ctx, c.Repo)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.Log.Warn("repository overview failed", "err", err)
		} else {
			c.Log.Debug("repository overview built", "seconds", o.BuildSeconds, "segments", o.Segments)
		}
		c.mu.Lock()
		if err == nil {
			c.cur = o
		}
		c.err = err
		close(c.updated)
		c.updated = make(chan struct{})
		c.mu.Unlock()
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
