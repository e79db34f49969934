package mediawatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/synbak/synbak/internal/durable"
	"github.com/synbak/synbak/internal/repo"
)

// RestoreReport says what Restore did.
type RestoreReport struct {
	// Files and Bytes were written.
	Files int
	Bytes int64
	// Deleted counts paths the index has that were deleted as of the
	// target time (not restored).
	Deleted int
}

// Set returns the media set as of at: for every path present at that time,
// its Added event. A path is present when the last event for it (in index
// order) dated at or before at is Added (see Event.Date). A zero at means
// the newest state.
func Set(ctx context.Context, r *repo.Repo, at time.Time) (present map[string]Event, deleted int, err error) {
	last := map[string]Event{}
	err = loadIndex(ctx, r, func() error {
		clear(last)
		return nil
	}, func(ev Event) error {
		if at.IsZero() || !ev.Date().After(at) {
			last[ev.Path] = ev
		}
		return nil
	}, nil)
	if err != nil {
		return nil, 0, err
	}
	present = map[string]Event{}
	for p, ev := range last {
		if ev.Event == Added {
			present[p] = ev
		} else {
			deleted++
		}
	}
	return present, deleted, nil
}

// Restore writes the media set as of at (see Set) into dir, which must be
// missing or empty, as a media store (dir/local_content/ab/cd/...), with
// every checksum verified and modification times as recorded. Files are
// 0600 and directories 0700.
func Restore(ctx context.Context, r *repo.Repo, at time.Time, dir string) (RestoreReport, error) {
	if err := emptyDir(dir); err != nil {
		return RestoreReport{}, err
	}
	set, deleted, err := Set(ctx, r, at)
	if err != nil {
		return RestoreReport{}, err
	}
	paths := make([]string, 0, len(set))
	for p := range set {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	rep := RestoreReport{Deleted: deleted}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	ch := make(chan Event)
	for range 4 {
		wg.Go(func() {
			for ev := range ch {
				if err := restoreFile(ctx, r, dir, ev); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				mu.Lock()
				rep.Files++
				rep.Bytes += ev.Size
				mu.Unlock()
			}
		})
	}
feed:
	for _, p := range paths {
		select {
		case ch <- set[p]:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return rep, fmt.Errorf("restore media into %s: %w", dir, firstErr)
	}
	return rep, nil
}

// emptyDir creates dir or checks that it is empty.
func emptyDir(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create media directory: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("media directory: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("media directory %s: %w (give a missing or empty directory)", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("media directory %s is not empty: a restore never writes into an existing media store; give a missing or empty directory", dir)
	}
	return nil
}

func restoreFile(ctx context.Context, r *repo.Repo, dir string, ev Event) error {
	if !filepath.IsLocal(filepath.FromSlash(ev.Path)) {
		return fmt.Errorf("index path %q is not relative", ev.Path)
	}
	dst := filepath.Join(dir, filepath.FromSlash(ev.Path))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	rd, err := r.Get(ctx, ObjectName(ev.SHA256))
	if err != nil {
		return fmt.Errorf("%s: %w", ev.Path, err)
	}
	defer rd.Close()
	err = durable.Write(dst, durable.Options{SkipDirSync: true}, func(f *os.File) error {
		n, err := io.Copy(f, rd)
		if err != nil {
			return err
		}
		if info := rd.Info(); info.SHA256 != ev.SHA256 || n != ev.Size {
			return fmt.Errorf("object %s holds %d bytes with sha256 %s, the index says %d bytes: the repository is damaged (run synbak verify)",
				ObjectName(ev.SHA256), n, info.SHA256, ev.Size)
		}
		return os.Chtimes(f.Name(), ev.MTime, ev.MTime)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", ev.Path, err)
	}
	return nil
}
