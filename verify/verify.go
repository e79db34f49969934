// Package verify checks a repository the way restores will use it: every
// object's checksum, every base backup's and logical dump's parts against
// its metadata, the
// WAL archive's continuity from every backup across timelines, and the
// media and config indexes against their objects. Each problem is one line
// saying what it affects.
package verify

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/dump"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/restore"
	"github.com/synbak/synbak/wal"
)

// Options configure Run.
type Options struct {
	// Quick checks each object's framing, size and metadata only, not its
	// checksum (which reads and decompresses everything).
	Quick bool
	// Workers read objects in parallel (default 4).
	Workers int
	Log     *slog.Logger
	// Progress, when set, is called after each object checked.
	Progress func(checked, total int)
}

// Report is what Run found.
type Report struct {
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"` // stored bytes of the objects checked
	Backups int   `json:"backups"`
	// Dumps counts complete logical dumps; IncompleteDumps those without
	// dump.json (running or interrupted: information, not a problem).
	Dumps           int      `json:"dumps"`
	IncompleteDumps int      `json:"incomplete_dumps"`
	Media           int      `json:"media_objects"`
	Config          int      `json:"config_objects"`
	Quick           bool     `json:"quick"`
	Problems        []string `json:"problems"`
	Seconds         float64  `json:"seconds"`
}

// OK reports whether nothing was found wrong.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Run checks the repository. It returns an error only when the check
// itself cannot run (the repository is unreachable); what is wrong with the
// repository is in Report.Problems.
func Run(ctx context.Context, r *repo.Repo, opts Options) (Report, error) {
	start := time.Now()
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	rep := Report{Quick: opts.Quick, Problems: []string{}}
	var mu sync.Mutex
	problem := func(format string, args ...any) {
		mu.Lock()
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}

	// 1. Every object: framing, and (unless quick) the checksum.
	var names []storage.ObjectInfo
	if err := r.List(ctx, "", func(oi storage.ObjectInfo) error { names = append(names, oi); return nil }); err != nil {
		return rep, fmt.Errorf("list %s: %w", r, err)
	}
	infos := make(map[string]repo.Info, len(names))
	// WAL segment objects are checked against their names too (not
	// without the key to an encrypted repository: --quick reads no
	// payload then, and a full check reports every object unreadable).
	walSettings, werr := wal.LoadSettings(ctx, r)
	haveWAL := werr == nil
	if werr != nil && !repo.IsNotExist(werr) && !repo.IsEncryption(werr) {
		problem("WAL settings: %v: wal-fetch and restores cannot serve WAL", werr)
	}
	jobs := make(chan storage.ObjectInfo)
	var wg sync.WaitGroup
	checked := 0
	for range opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for oi := range jobs {
				var info repo.Info
				var err error
				isWAL := haveWAL && wal.IsObjectName(oi.Name)
				switch {
				case opts.Quick:
					info, err = r.Stat(ctx, oi.Name)
					if err == nil && isWAL {
						// The segment's first page against its name.
						_, err = wal.CheckSegmentObject(ctx, r, oi.Name, walSettings)
					}
				case isWAL:
					// One read: checksum, binding and first page.
					info, _, err = wal.VerifySegmentObject(ctx, r, oi.Name, walSettings)
				default:
					info, err = r.Verify(ctx, oi.Name)
				}
				mu.Lock()
				checked++
				n := checked
				if err == nil {
					infos[oi.Name] = info
				}
				mu.Unlock()
				if err != nil && ctx.Err() == nil {
					problem("object %s: %v; %s", oi.Name, err, affects(oi.Name))
				}
				if opts.Progress != nil {
					opts.Progress(n, len(names))
				}
			}
		}()
	}
feed:
	for _, oi := range names {
		if storage.ValidName(oi.Name) != nil || isMeta(oi.Name) {
			mu.Lock()
			checked++
			mu.Unlock()
			continue
		}
		rep.Objects++
		rep.Bytes += oi.Size
		select {
		case jobs <- oi:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	// 2. Base backups: every part and the manifest as backup.json records them.
	backups, err := basebackup.List(ctx, r)
	if err != nil {
		problem("base backups: %v: restores cannot pick a backup", err)
	}
	rep.Backups = len(backups)
	damaged := map[string]bool{} // backups with a missing, corrupt or mismatched object
	for _, b := range backups {
		check := func(name string, want basebackup.Object) {
			info, ok := infos[name]
			if _, listed := find(names, name); !listed {
				problem("backup %s unusable: %s is missing", b.ID, name)
				damaged[b.ID] = true
				return
			}
			if !ok {
				damaged[b.ID] = true
				return // already reported as corrupt
			}
			if info.Size != want.Size || info.Checksum != want.Checksum {
				problem("backup %s unusable: %s holds %d bytes with %s, backup.json records %d bytes with %s", b.ID, name, info.Size, info.Checksum.Describe(), want.Size, want.Checksum.Describe())
				damaged[b.ID] = true
			}
		}
		for _, a := range b.Archives {
			for i, p := range a.Parts {
				check(basebackup.PartName(b.ID, a.Name, i), p)
			}
		}
		check(basebackup.ManifestName(b.ID), b.Manifest)
	}
	// 2a. Incremental backups: every chain complete and consistent, and
	// every member's objects whole.
	for _, b := range backups {
		if !b.Incremental() {
			continue
		}
		if _, err := basebackup.LoadChain(ctx, r, b); err != nil {
			problem("backup %s unusable: %v", b.ID, err)
			continue
		}
		for _, id := range b.Chain {
			if damaged[id] {
				problem("backup %s unusable: its chain member %s is damaged (see its problems)", b.ID, id)
			}
		}
	}

	// 2b. Logical dumps: every part as dump.json records it.
	dumps, incomplete, err := dump.Scan(ctx, r)
	if err != nil {
		problem("dumps: %v: restores from dumps cannot pick a dump", err)
	}
	rep.Dumps, rep.IncompleteDumps = len(dumps), len(incomplete)
	for _, d := range dumps {
		for _, db := range d.Databases {
			for i, p := range db.Parts {
				name := dump.PartName(d.ID, db.Name, i)
				if _, listed := find(names, name); !listed {
					problem("dump %s unusable: %s (database %s) is missing", d.ID, name, db.Name)
					continue
				}
				info, ok := infos[name]
				if !ok {
					continue // already reported as corrupt
				}
				if info.Size != p.Size || info.Checksum != p.Checksum {
					problem("dump %s unusable: %s (database %s) holds %d bytes with %s, dump.json records %d bytes with %s",
						d.ID, name, db.Name, info.Size, info.Checksum.Describe(), p.Size, p.Checksum.Describe())
				}
			}
		}
	}
	for _, inc := range incomplete {
		opts.Log.Info("incomplete dump (running, or interrupted: no dump.json)", "dump", inc.ID, "objects", inc.Objects, "last_modified", inc.LastModified)
	}

	// 3. WAL continuity from every backup, across timelines.
	walProblems, err := restore.ArchiveProblems(ctx, r)
	if err != nil {
		problem("WAL archive: %v", err)
	}
	for _, p := range walProblems {
		problem("%s", p)
	}

	// 4. The media index against the media objects.
	mediaFirst := map[string]mediawatch.Event{} // sha → first event naming it
	if _, err := mediawatch.ReadIndex(ctx, r, func(e mediawatch.Event) error {
		if e.Event == mediawatch.Added && e.SHA256 != "" {
			if _, ok := mediaFirst[e.SHA256]; !ok {
				mediaFirst[e.SHA256] = e
			}
		}
		return nil
	}); err != nil {
		problem("media index: %v: media restores may miss files", err)
	}
	rep.Media = len(mediaFirst)
	for _, sha := range sortedKeys(mediaFirst) {
		e := mediaFirst[sha]
		checkContent(names, infos, mediawatch.ObjectName(sha), sha, e.Size, func(msg string) {
			problem("media file %s (first seen %s): %s", e.Path, e.FirstSeen.UTC().Format(time.RFC3339), msg)
		})
	}

	// 5. The config index against the config objects.
	cfgFirst := map[string]confsnap.Record{}
	if _, err := confsnap.ReadIndex(ctx, r, func(b confsnap.Batch) error {
		for _, rec := range b.Records {
			if !rec.Deleted && rec.SHA256 != "" {
				if _, ok := cfgFirst[rec.SHA256]; !ok {
					cfgFirst[rec.SHA256] = rec
				}
			}
		}
		return nil
	}); err != nil {
		problem("config index: %v: config restores may miss files", err)
	}
	rep.Config = len(cfgFirst)
	for _, sha := range sortedKeys(cfgFirst) {
		rec := cfgFirst[sha]
		checkContent(names, infos, confsnap.ObjectName(sha), sha, rec.Size, func(msg string) {
			problem("config file %s (snapshot of %s): %s", rec.Path, rec.Time.UTC().Format(time.RFC3339), msg)
		})
	}
	sort.Strings(rep.Problems)
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// checkContent checks that a content-addressed object exists and holds
// what its name and index say.
func checkContent(names []storage.ObjectInfo, infos map[string]repo.Info, name, sha string, size int64, report func(string)) {
	if _, ok := find(names, name); !ok {
		report("object " + name + " is missing")
		return
	}
	info, ok := infos[name]
	if !ok {
		return // reported as corrupt already
	}
	if info.SHA256 != sha || info.Size != size {
		report(fmt.Sprintf("object %s does not match its index (%d bytes with sha256 %s, the index says %d bytes)", name, info.Size, info.SHA256, size))
	}
}

// find looks name up in the sorted listing.
func find(names []storage.ObjectInfo, name string) (storage.ObjectInfo, bool) {
	i := sort.Search(len(names), func(i int) bool { return names[i].Name >= name })
	if i < len(names) && names[i].Name == name {
		return names[i], true
	}
	return storage.ObjectInfo{}, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// isMeta reports whether name is the repository's own metadata, which
// repo.Open reads and checks already and which is not framed like objects.
func isMeta(name string) bool { return strings.HasPrefix(name, "meta/") }

// affects says what a damaged object makes impossible.
func affects(name string) string {
	o, _ := wal.ParseObjectName(name, 0)
	switch {
	case o.Kind == wal.KindHistory:
		return "restores onto that timeline are impossible"
	case wal.IsObjectName(name):
		return "restores that replay this WAL are impossible (every target after it, from backups before it)"
	case strings.HasPrefix(name, "backups/"):
		id, _, _ := strings.Cut(strings.TrimPrefix(name, "backups/"), "/")
		return "backup " + id + " is unusable"
	case strings.HasPrefix(name, dump.Prefix):
		id, _, _ := strings.Cut(strings.TrimPrefix(name, dump.Prefix), "/")
		return "dump " + id + " is unusable"
	case strings.HasPrefix(name, "media/objects/"):
		return "media restores lack this file"
	case strings.HasPrefix(name, "media/"):
		return "the media index is damaged: media restores may miss files"
	case strings.HasPrefix(name, "config/"):
		return "config restores may lack files"
	}
	return "unknown object"
}
