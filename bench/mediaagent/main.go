// Command mediaagent measures the memory of the long-running `synbak
// agent` with a large media store (issue 19): its resident set during the
// initial copy of the store and when it is idle afterwards.
//
// It generates a synthetic media store (Synapse's local_content/ab/cd/rest
// and local_thumbnails/ab/cd/rest/W-H-type-method; many small thumbnails,
// images of tens to hundreds of kB, a few MB-sized videos; about 40 kB per
// file on average), then for each count in -files starts `synbak agent` on
// it with a fresh local repository, polls the agent's /status until every
// file is stored, samples the agent's VmRSS every 100 ms during the copy,
// and keeps sampling for -idle after it. The store grows between counts
// (the first count's files stay, more are added).
//
// PostgreSQL is not started: homeserver.yaml names an unreachable database,
// so the WAL receiver and the probe retry in the background and the media
// watcher copies on the quiet period alone; what is measured is the agent
// with its media part doing the work.
//
// -profile DIR runs the media watcher in this process instead (mediawatch.New,
// the agent's options) and writes heap profiles after the copy and after the
// idle period, for `go tool pprof`.
//
// Run: go run ./bench/mediaagent -files 100000,300000
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/mediawatch"
)

func main() {
	files := flag.String("files", "100000,300000", "comma-separated file counts; the store grows from one to the next")
	base := flag.String("dir", "", "work directory (default: a new one in $TMPDIR, removed at the end)")
	exe := flag.String("synbak", "", "the synbak binary to measure (default: build ./cmd/synbak)")
	idle := flag.Duration("idle", 30*time.Second, "how long to keep measuring after the copy is done")
	profile := flag.String("profile", "", "run the watcher in this process and write heap profiles to this directory")
	workers := flag.Int("workers", 32, "copy workers with -profile (the agent's: 32)")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*files, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "mediaagent: bad -files", s)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if err := run(counts, *base, *exe, *idle, *profile, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "mediaagent:", err)
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

// contentSize draws a local_content size: mostly images of tens of kB,
// some of hundreds, one in a hundred a video of 1–4 MB.
func contentSize(rng *rand.Rand) int {
	switch p := rng.Float64(); {
	case p < 0.86:
		return 8<<10 + rng.IntN(40<<10)
	case p < 0.99:
		return 48<<10 + rng.IntN(464<<10)
	default:
		return 1<<20 + rng.IntN(3<<20)
	}
}

// thumbSize draws a thumbnail's size (2–16 kB).
func thumbSize(rng *rand.Rand) int { return 2<<10 + rng.IntN(14<<10) }

var words = strings.Fields("the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part")

// content fills n bytes: random bytes behind a PNG, JPEG or MP4 header
// (incompressible, as real media), or for one file in ten text (the
// compressed path).
func content(rng *rand.Rand, n int, buf []byte) []byte {
	b := buf[:0]
	if rng.IntN(10) == 0 {
		for len(b) < n {
			b = append(b, words[rng.IntN(len(words))]...)
			b = append(b, ' ')
		}
		return b[:n]
	}
	b = buf[:n+8]
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	switch rng.IntN(3) {
	case 0:
		copy(b, "\x89PNG\r\n\x1a\n")
	case 1:
		copy(b, "\xff\xd8\xff")
	default:
		copy(b, "\x00\x00\x00\x18ftypmp42")
	}
	return b[:n]
}

// grow adds files to the store until it holds want; it returns the bytes
// added. Each media has a content file and one or two thumbnails.
func grow(store string, rng *rand.Rand, have, want int) (int64, error) {
	old := time.Now().Add(-time.Hour)
	buf := make([]byte, 5<<20)
	var total int64
	write := func(rel string, n int) error {
		p := filepath.Join(store, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		b := content(rng, n, buf)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		total += int64(n)
		have++
		if have%20000 == 0 {
			fmt.Fprintf(os.Stderr, "generated %d files\n", have)
		}
		// Old files, as in an existing store.
		return os.Chtimes(p, old, old)
	}
	for have < want {
		id := mediaID(rng)
		dir := id[:2] + "/" + id[2:4] + "/" + id[4:]
		if err := write("local_content/"+dir, contentSize(rng)); err != nil {
			return total, err
		}
		for i := range 1 + rng.IntN(2) {
			if have >= want {
				break
			}
			name := [...]string{"32-32-image-jpeg-crop", "96-96-image-jpeg-crop", "320-240-image-jpeg-scale", "640-480-image-png-scale"}[i+2*rng.IntN(2)]
			if err := write("local_thumbnails/"+dir+"/"+name, thumbSize(rng)); err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

func run(counts []int, base, exe string, idle time.Duration, profile string, workers int) error {
	if base == "" {
		var err error
		if base, err = os.MkdirTemp("", "mediaagent-"); err != nil {
			return err
		}
		defer os.RemoveAll(base)
	}
	store := filepath.Join(base, "media_store")
	if profile == "" && exe == "" {
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
	have := 0
	var bytes int64
	var rows []string
	for _, n := range counts {
		start := time.Now()
		// Each step of the store has its own seed and a marker with its
		// size, so that a kept -dir is not generated again.
		marker := filepath.Join(base, fmt.Sprintf("generated-%d-%d", have, n))
		var added int64
		if b, err := os.ReadFile(marker); err == nil {
			added, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		} else {
			rng := rand.New(rand.NewPCG(1, uint64(have)))
			if added, err = grow(store, rng, have, n); err != nil {
				return err
			}
			if err := os.WriteFile(marker, []byte(strconv.FormatInt(added, 10)+"\n"), 0o644); err != nil {
				return err
			}
		}
		have, bytes = n, bytes+added
		fmt.Fprintf(os.Stderr, "store: %d files, %.2f GiB (generated in %s)\n", have, float64(bytes)/(1<<30), time.Since(start).Round(time.Second))
		_ = exec.Command("sync").Run()
		dest := filepath.Join(base, fmt.Sprintf("repo-%d", n))
		var res result
		var err error
		if profile != "" {
			res, err = inProcess(store, dest, n, idle, workers, filepath.Join(profile, strconv.Itoa(n)))
		} else {
			res, err = agent(exe, hs, dest, filepath.Join(base, fmt.Sprintf("state-%d", n)), n, idle)
		}
		if err != nil {
			return fmt.Errorf("%d files: %w", n, err)
		}
		if err := os.RemoveAll(dest); err != nil {
			return err
		}
		rows = append(rows, fmt.Sprintf("| %d | %.2f | %.1f | %.0f | %.0f MiB | %.0f MiB | %.0f MiB | %.0f MiB |", n, float64(bytes)/(1<<30),
			res.copy.Seconds(), float64(n)/res.copy.Seconds(), mib(res.peak), mib(res.atDone), mib(res.idle), mib(res.idleAnon)))
		fmt.Fprintln(os.Stderr, rows[len(rows)-1])
	}
	fmt.Printf("| files | GiB | initial copy s | files/s | peak RSS during copy | RSS at the end of the copy | RSS idle %s after | of it anonymous |\n", idle)
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Println(r)
	}
	return nil
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

type result struct {
	copy                         time.Duration
	peak, atDone, idle, idleAnon int64 // KiB
}

// procStatus reads VmRSS and RssAnon (KiB) of pid.
func procStatus(pid int) (rss, anon int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "RssAnon":
			anon = n
		}
	}
	return rss, anon
}

// agent runs `synbak agent` until n files are stored and idle has passed.
func agent(exe, hs, dest, state string, n int, idle time.Duration) (result, error) {
	logf, err := os.Create(dest + ".log")
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	cmd := exec.Command(exe, "--homeserver", hs, "--repo", dest, "--log-level", "info", "agent")
	cmd.Env = append(os.Environ(), "SYNBAK_STATE_DIR="+state, "SYNBAK_HTTP_LISTEN=127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = logf, logf
	// No agent left behind when the benchmark is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	pid := cmd.Process.Pid
	var res result
	var addr string
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var copied time.Time
	lastPoll := time.Time{}
	for {
		select {
		case err := <-done:
			done <- err
			return res, fmt.Errorf("the agent exited: %v (see %s.log)", err, dest)
		case <-t.C:
		}
		rss, anon := procStatus(pid)
		res.peak = max(res.peak, rss)
		if !copied.IsZero() {
			if time.Since(copied) >= idle {
				res.idle, res.idleAnon = rss, anon
				return res, nil
			}
			continue
		}
		if time.Since(lastPoll) < 500*time.Millisecond {
			continue
		}
		lastPoll = time.Now()
		if addr == "" {
			b, err := os.ReadFile(filepath.Join(state, "agent.addr"))
			if err != nil {
				continue
			}
			addr = strings.TrimSpace(string(b))
		}
		st, err := mediaStatus(addr)
		if err != nil {
			continue
		}
		if st.ScanDone && st.Pending == 0 && st.Added >= int64(n) {
			copied = time.Now()
			res.copy = copied.Sub(start)
			res.atDone = rss
			fmt.Fprintf(os.Stderr, "%d files stored in %s; RSS %.0f MiB; idle for %s\n", n, res.copy.Round(100*time.Millisecond), mib(rss), idle)
		}
	}
}

func mediaStatus(addr string) (mediawatch.Stats, error) {
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return mediawatch.Stats{}, err
	}
	defer resp.Body.Close()
	var st struct {
		Media *mediawatch.Stats `json:"media"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return mediawatch.Stats{}, err
	}
	if st.Media == nil {
		return mediawatch.Stats{}, fmt.Errorf("no media in /status")
	}
	return *st.Media, nil
}

// inProcess runs the watcher here and writes heap profiles.
func inProcess(store, dest string, n int, idle time.Duration, workers int, dir string) (result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := local.New(dest)
	if err != nil {
		return result{}, err
	}
	r, _, err := repo.Init(ctx, b, repo.Options{})
	if err != nil {
		return result{}, err
	}
	w := mediawatch.New(r, store, mediawatch.Options{Workers: workers, QuietPeriod: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	runErr := make(chan error, 1)
	start := time.Now()
	go func() { runErr <- w.Run(ctx) }()
	var res result
	pid := os.Getpid()
	for {
		st := w.Stats()
		rss, _ := procStatus(pid)
		res.peak = max(res.peak, rss)
		if st.ScanDone && st.Pending == 0 && st.Added >= int64(n) {
			break
		}
		select {
		case err := <-runErr:
			return res, fmt.Errorf("watcher: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	res.copy = time.Since(start)
	res.atDone, _ = procStatus(pid)
	heap := func(name string) error {
		runtime.GC()
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintf(os.Stderr, "%s: HeapInuse %.1f MiB, HeapIdle %.1f MiB, HeapReleased %.1f MiB, Sys %.1f MiB\n", name,
			float64(ms.HeapInuse)/(1<<20), float64(ms.HeapIdle)/(1<<20), float64(ms.HeapReleased)/(1<<20), float64(ms.Sys)/(1<<20))
		return pprof.WriteHeapProfile(f)
	}
	if err := heap("heap-done.pprof"); err != nil {
		return res, err
	}
	time.Sleep(idle)
	res.idle, res.idleAnon = procStatus(pid)
	if err := heap("heap-idle.pprof"); err != nil {
		return res, err
	}
	cancel()
	return res, <-runErr
}
