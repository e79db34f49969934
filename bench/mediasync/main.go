// Command mediasync benchmarks synbak's media backup (issue 6):
//
//  1. the initial sync of a synthetic media store (files of realistic sizes
//     in Synapse's two-level directories) by `synbak media sync`, against
//     `rsync -a` of the same trees, in the same run: files/s, CPU and peak
//     RSS (VmHWM of the process tree, polled). Each of -runs rounds runs
//     every configuration into a fresh destination, in alternating order
//     (forward, reverse, ...), after `sync` and dropping the page cache
//     (root); medians are reported, with the CPU time of everything else
//     on the machine during each run as a noise indicator;
//  2. the latency from a file's completion (close) to its durable copy
//     (the index batch naming it stored), at about -rate new files/s, with
//     the watcher running in this process: on the quiet period alone, and
//     with a LengthChecker standing in for Synapse's database (answering
//     once the "upload" is complete, as the local_media_repository row);
//     the quiet period alone at 2 s (media.quiet_period's default) and 1 s.
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
	runs := flag.Int("runs", 3, "rounds of initial syncs (configurations in alternating order); medians are reported")
	synbak := flag.String("synbak", "", "the synbak binary to measure (default: build ./cmd/synbak)")
	synbakBase := flag.String("synbak-base", "", "a second synbak binary, measured in the same rounds (e.g. the previous commit's)")
	flag.Parse()
	if err := run(*files, *rate, *seconds, *runs, *base, *synbak, *synbakBase, *dropCaches); err != nil {
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

func run(files, rate, seconds, runs int, base, exe, exeBase string, drop bool) error {
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

	if exe == "" {
		exe = filepath.Join(base, "synbak")
		build := exec.Command("go", "build", "-o", exe, "./cmd/synbak")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build synbak (run from the module root): %w", err)
		}
	}
	hs := filepath.Join(base, "homeserver.yaml")
	if err := os.WriteFile(hs, []byte("server_name: example.org\nmedia_store_path: "+store+
		"\ndatabase:\n  name: psycopg2\n  args: {database: none, host: 127.0.0.1, port: 1}\n"), 0o600); err != nil {
		return err
	}

	configs := []struct {
		name string
		cmd  func(dest string) *exec.Cmd
	}{
		{"rsync -a", func(dest string) *exec.Cmd {
			return exec.Command("rsync", "-a", filepath.Join(store, "local_content"), dest)
		}},
		// rsync does not fsync; synbak's copies are durable when it ends.
		{"rsync -a, then sync (durable)", func(dest string) *exec.Cmd {
			return exec.Command("sh", "-c", `rsync -a "$0" "$1" && sync`, filepath.Join(store, "local_content"), dest)
		}},
		{"synbak media sync", func(dest string) *exec.Cmd {
			return exec.Command(exe, "--homeserver", hs, "--repo", dest, "--log-level", "error", "media", "sync")
		}},
	}
	if exeBase != "" {
		configs = append(configs, struct {
			name string
			cmd  func(dest string) *exec.Cmd
		}{"synbak media sync (-synbak-base)", func(dest string) *exec.Cmd {
			return exec.Command(exeBase, "--homeserver", hs, "--repo", dest, "--log-level", "error", "media", "sync")
		}})
	}
	results := make([][]result, len(configs))
	for round := range runs {
		order := make([]int, len(configs))
		for i := range order {
			order[i] = i
			if round%2 == 1 {
				order[i] = len(configs) - 1 - i
			}
		}
		for _, ci := range order {
			c := configs[ci]
			dest := filepath.Join(base, fmt.Sprintf("dest-%d-%d", round, ci))
			_ = exec.Command("sync").Run()
			if drop {
				if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
					return fmt.Errorf("drop the page cache (run as root or pass -drop-caches=false): %w", err)
				}
			}
			res, err := measure(c.cmd(dest))
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			results[ci] = append(results[ci], res)
			fmt.Fprintf(os.Stderr, "round %d %-30s %6.1f s  %5.0f files/s  cpu %5.1f s  other cpu %5.1f s  peak RSS %4.0f MiB\n",
				round+1, c.name, res.wall.Seconds(), float64(files)/res.wall.Seconds(), res.cpu.Seconds(), res.other.Seconds(), float64(res.rss)/(1<<10))
			// Not timed: the next run starts from the same disk state.
			if err := os.RemoveAll(dest); err != nil {
				return err
			}
		}
	}
	fmt.Printf("| initial sync (medians of %d) | wall s (min–max) | files/s | MiB/s | CPU s | other CPU s | peak RSS |\n", runs)
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	med := make([]result, len(configs))
	for ci, c := range configs {
		med[ci] = median(results[ci])
		lo, hi := results[ci][0].wall, results[ci][0].wall
		for _, r := range results[ci] {
			lo, hi = min(lo, r.wall), max(hi, r.wall)
		}
		fmt.Printf("| %s | %.1f (%.1f–%.1f) | %.0f | %.1f | %.1f | %.1f | %.0f MiB |\n", c.name, med[ci].wall.Seconds(), lo.Seconds(), hi.Seconds(),
			float64(files)/med[ci].wall.Seconds(), float64(total)/(1<<20)/med[ci].wall.Seconds(), med[ci].cpu.Seconds(), med[ci].other.Seconds(),
			float64(med[ci].rss)/(1<<10))
	}
	fmt.Printf("\nfiles/s ratio synbak/rsync (medians): %.2f× (against rsync + sync: %.2f×); per round:",
		med[0].wall.Seconds()/med[2].wall.Seconds(), med[1].wall.Seconds()/med[2].wall.Seconds())
	for i := range runs {
		fmt.Printf(" %.2f×", results[0][i].wall.Seconds()/results[2][i].wall.Seconds())
	}
	if exeBase != "" {
		fmt.Printf("\nfiles/s ratio synbak/synbak-base (medians): %.2f×; CPU s ratio: %.2f×; per round:", med[3].wall.Seconds()/med[2].wall.Seconds(), med[2].cpu.Seconds()/med[3].cpu.Seconds())
		for i := range runs {
			fmt.Printf(" %.2f×", results[3][i].wall.Seconds()/results[2][i].wall.Seconds())
		}
	}
	fmt.Print("\n\n")

	fmt.Printf("| completion → durable copy at %d files/s | files | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n", rate)
	for _, c := range []struct {
		quiet  time.Duration
		withDB bool
	}{{2 * time.Second, false}, {time.Second, false}, {2 * time.Second, true}} {
		lat, err := latency(base, rate, seconds, c.quiet, c.withDB)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("quiet period %s alone", c.quiet)
		if c.withDB {
			name = fmt.Sprintf("with media_length check (quiet period %s)", c.quiet)
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

type result struct {
	wall, cpu time.Duration
	// other is the busy CPU time of the machine during the run minus cpu:
	// whatever else ran (noise).
	other time.Duration
	rss   int64 // KiB
}

func median(rs []result) result {
	pick := func(get func(result) int64) int64 {
		v := make([]int64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		wall:  time.Duration(pick(func(r result) int64 { return int64(r.wall) })),
		cpu:   time.Duration(pick(func(r result) int64 { return int64(r.cpu) })),
		other: time.Duration(pick(func(r result) int64 { return int64(r.other) })),
		rss:   pick(func(r result) int64 { return r.rss }),
	}
}

// busyCPU is the machine's busy CPU time so far (/proc/stat: all but idle
// and iowait), in clock ticks of 10 ms.
func busyCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is in user already
			busy += n
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// measure runs cmd and polls the VmHWM of it and its children.
func measure(cmd *exec.Cmd) (result, error) {
	cmd.Stderr = os.Stderr
	busy0 := busyCPU()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak int64
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			res := result{wall: time.Since(start), rss: peak}
			if ps := cmd.ProcessState; ps != nil {
				// wait4's rusage: the process and the descendants it waited for.
				res.cpu = ps.UserTime() + ps.SystemTime()
			}
			res.other = max(busyCPU()-busy0-res.cpu, 0)
			return res, err
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
func latency(base string, rate, seconds int, quiet time.Duration, withDB bool) ([]time.Duration, error) {
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
	opts := mediawatch.Options{QuietPeriod: quiet, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
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
