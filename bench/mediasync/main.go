// Command mediasync benchmarks synbak's media backup (issue 6):
//
//  1. the initial sync of a synthetic media store (files of realistic sizes
//     in Synapse's two-level directories) by `synbak media sync`, against
//     `rsync -a` of the same trees, in the same run: files/s and peak RSS
//     (VmHWM of the process tree, polled);
//  2. the latency from a file's completion (close) to its durable copy
//     (the index batch naming it stored), at about -rate new files/s, with
//     the watcher running in this process: on the quiet period alone, and
//     with a LengthChecker standing in for Synapse's database (answering
//     once the "upload" is complete, as the local_media_repository row).
//
// Run: go run ./bench/mediasync -files 30000
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/mediawatch"
)

func main() {
	files := flag.Int("files", 30000, "media files in the synthetic store")
	rate := flag.Int("rate", 100, "new files per second in the latency test")
	seconds := flag.Int("seconds", 10, "duration of each latency test")
	base := flag.String("dir", "", "work directory (default: a new one in $TMPDIR)")
	dropCaches := flag.Bool("drop-caches", true, "drop the page cache before each sync (root)")
	flag.Parse()
	if err := run(*files, *rate, *seconds, *base, *dropCaches); err != nil {
		fmt.Fprintln(os.Stderr, "mediasync:", err)
		os.Exit(1)
	}
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func mediaID(rng *rand.Rand) string {
	b := make([]byte, 24)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

// size draws a realistic media size: mostly small images and thumbnails,
// some photos, a few large files (1 KB – 2 MB).
func size(rng *rand.Rand) int {
	switch p := rng.Float64(); {
	case p < 0.70:
		return 1<<10 + rng.IntN(31<<10)
	case p < 0.95:
		return 32<<10 + rng.IntN(480<<10)
	default:
		return 512<<10 + rng.IntN(1536<<10)
	}
}

func content(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	copy(b, "\x89PNG\r\n\x1a\n")
	return b[:n]
}

func writeFile(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	for off := 0; off < len(b); off += 64 << 10 {
		if _, err := f.Write(b[off:min(off+64<<10, len(b))]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func run(files, rate, seconds int, base string, drop bool) error {
	if base == "" {
		var err error
		if base, err = os.MkdirTemp("", "mediasync-"); err != nil {
			return err
		}
		defer os.RemoveAll(base)
	}
	store := filepath.Join(base, "media_store")
	rng := rand.New(rand.NewPCG(1, 2))
	var total int64
	start := time.Now()
	for i := range files {
		id := mediaID(rng)
		n := size(rng)
		total += int64(n)
		if err := writeFile(filepath.Join(store, "local_content", id[:2], id[2:4], id[4:]), content(rng, n)); err != nil {
			return err
		}
		if i%5000 == 4999 {
			fmt.Fprintf(os.Stderr, "generated %d files\n", i+1)
		}
	}
	// Old files, as in an existing store.
	old := time.Now().Add(-time.Hour)
	_ = filepath.WalkDir(store, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			_ = os.Chtimes(p, old, old)
		}
		return nil
	})
	fmt.Printf("store: %d files, %.1f MiB in local_content/ab/cd (generated in %s)\n\n", files, float64(total)/(1<<20), time.Since(start).Round(time.Second))

	exe := filepath.Join(base, "synbak")
	build := exec.Command("go", "build", "-o", exe, "./cmd/synbak")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build synbak (run from the module root): %w", err)
	}
	hs := filepath.Join(base, "homeserver.yaml")
	if err := os.WriteFile(hs, []byte("server_name: example.org\nmedia_store_path: "+store+
		"\ndatabase:\n  name: psycopg2\n  args: {database: none, host: 127.0.0.1, port: 1}\n"), 0o600); err != nil {
		return err
	}

	type result struct {
		name string
		d    time.Duration
		rss  int64
	}
	var results []result
	for _, c := range []struct {
		name string
		cmd  *exec.Cmd
	}{
		{"rsync -a", exec.Command("rsync", "-a", filepath.Join(store, "local_content"), filepath.Join(base, "rsync-dest"))},
		// rsync does not fsync; synbak's copies are durable when it ends.
		{"rsync -a, then sync (durable)", exec.Command("sh", "-c", `rsync -a "$0" "$1" && sync`, filepath.Join(store, "local_content"), filepath.Join(base, "rsync-dest2"))},
		{"synbak media sync", exec.Command(exe, "--homeserver", hs, "--repo", filepath.Join(base, "repo"), "--log-level", "error", "media", "sync")},
	} {
		if drop {
			_ = exec.Command("sync").Run()
			_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
		}
		d, rss, err := measure(c.cmd)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		results = append(results, result{c.name, d, rss})
	}
	fmt.Println("| initial sync | time | files/s | MiB/s | peak RSS |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, r := range results {
		fmt.Printf("| %s | %.1f s | %.0f | %.1f | %.0f MiB |\n", r.name, r.d.Seconds(), float64(files)/r.d.Seconds(),
			float64(total)/(1<<20)/r.d.Seconds(), float64(r.rss)/(1<<10))
	}
	fmt.Printf("\nfiles/s ratio synbak/rsync: %.2f× (against rsync + sync: %.2f×)\n\n",
		results[0].d.Seconds()/results[2].d.Seconds(), results[1].d.Seconds()/results[2].d.Seconds())

	fmt.Printf("| completion → durable copy at %d files/s | files | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n", rate)
	for _, withDB := range []bool{false, true} {
		lat, err := latency(base, rate, seconds, withDB)
		if err != nil {
			return err
		}
		name := "quiet period 2 s alone"
		if withDB {
			name = "with media_length check"
		}
		fmt.Printf("| %s | %d | %s | %s | %s |\n", name, len(lat), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 1))
	}
	return nil
}

func pct(d []time.Duration, p float64) string {
	if len(d) == 0 {
		return "-"
	}
	return d[min(int(p*float64(len(d))), len(d)-1)].Round(time.Millisecond).String()
}

// measure runs cmd and polls the VmHWM of it and its children.
func measure(cmd *exec.Cmd) (time.Duration, int64, error) {
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak int64
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return time.Since(start), peak, err
		case <-t.C:
			peak = max(peak, treeHWM(cmd.Process.Pid))
		}
	}
}

// treeHWM sums VmHWM (KiB) of pid and its descendants.
func treeHWM(pid int) int64 {
	var sum int64
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				sum += n
			}
		}
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, tf := range tasks {
		c, _ := os.ReadFile(tf)
		for _, f := range strings.Fields(string(c)) {
			if child, err := strconv.Atoi(f); err == nil {
				sum += treeHWM(child)
			}
		}
	}
	return sum
}

// fakeDB answers media lengths once the writer has registered them, as the
// local_media_repository row appears after Synapse closes the file.
type fakeDB struct {
	mu sync.Mutex
	m  map[string]int64
}

func (f *fakeDB) MediaLength(_ context.Context, id string) (int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.m[id]
	return n, ok, nil
}

// latency writes rate files/s for the given seconds into a fresh store
// while a Watcher runs, and returns completion→durable latencies, sorted.
func latency(base string, rate, seconds int, withDB bool) ([]time.Duration, error) {
	dir, err := os.MkdirTemp(base, "latency-")
	if err != nil {
		return nil, err
	}
	store := filepath.Join(dir, "media_store")
	if err := os.MkdirAll(filepath.Join(store, "local_content"), 0o755); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := local.New(filepath.Join(dir, "repo"))
	if err != nil {
		return nil, err
	}
	r, _, err := repo.Init(ctx, b, repo.Options{})
	if err != nil {
		return nil, err
	}
	opts := mediawatch.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	db := &fakeDB{m: map[string]int64{}}
	if withDB {
		opts.Lengths = db
	}
	w := mediawatch.New(r, store, opts)
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()
	for !w.Stats().ScanDone {
		time.Sleep(10 * time.Millisecond)
	}

	rng := rand.New(rand.NewPCG(3, 4))
	closed := map[string]time.Time{}
	n := rate * seconds
	tick := time.NewTicker(time.Second / time.Duration(rate))
	for range n {
		<-tick.C
		id := mediaID(rng)
		sz := size(rng)
		rel := "local_content/" + id[:2] + "/" + id[2:4] + "/" + id[4:]
		if err := writeFile(filepath.Join(store, rel), content(rng, sz)); err != nil {
			return nil, err
		}
		closed[rel] = time.Now()
		db.mu.Lock()
		db.m[id] = int64(sz)
		db.mu.Unlock()
	}
	tick.Stop()
	for w.Stats().Added < int64(n) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-runErr; err != nil {
		return nil, err
	}
	// Durable = the index batch's modification time.
	var lat []time.Duration
	batchTime := map[string]time.Time{}
	if err := b.List(context.Background(), "media/index/", func(oi storage.ObjectInfo) error {
		batchTime[oi.Name] = oi.ModTime
		return nil
	}); err != nil {
		return nil, err
	}
	for name, mt := range batchTime {
		rd, err := r.Get(context.Background(), name)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(rd)
		rd.Close()
		if err != nil {
			return nil, err
		}
		for _, l := range bytes.Split(data, []byte("\n")) {
			var ev mediawatch.Event
			if len(l) == 0 || json.Unmarshal(l, &ev) != nil {
				continue
			}
			if c, ok := closed[ev.Path]; ok {
				lat = append(lat, mt.Sub(c))
			}
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, nil
}
