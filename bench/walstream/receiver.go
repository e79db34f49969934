package main

import (
	"github.com/synbak/synbak/bench/internal/benchpg"

	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// receiverConfig is one way of receiving WAL.
type receiverConfig struct {
	Name     string `json:"name"`
	Tool     string `json:"tool"`     // "pg_receivewal" or "synbak"
	Compress string `json:"compress"` // none, lz4, gzip, zstd, s2
	Level    int    `json:"zstd_level,omitempty"`
	// Base runs the -synbak-base binary instead of -synbak (to compare two
	// builds side by side in one run).
	Base bool `json:"base,omitempty"`
}

// knownConfigs lists the catch-up configurations (-configs).
var knownConfigs = map[string]receiverConfig{
	"pgrw-none":   {Name: "pgrw-none", Tool: "pg_receivewal", Compress: "none"},
	"pgrw-lz4":    {Name: "pgrw-lz4", Tool: "pg_receivewal", Compress: "lz4"},
	"pgrw-gzip":   {Name: "pgrw-gzip", Tool: "pg_receivewal", Compress: "gzip"},
	"synbak-zstd": {Name: "synbak-zstd", Tool: "synbak", Compress: "zstd"},
	// Level 4, synbak's "smallest": the repository maps zstd levels 3-5 to
	// the encoder's default speed and 1-2 (synbak's default is 2) to its
	// fastest.
	"synbak-zstd4": {Name: "synbak-zstd4", Tool: "synbak", Compress: "zstd", Level: 4},
	"synbak-none":  {Name: "synbak-none", Tool: "synbak", Compress: "none"},
	// s2 (klauspost/compress), synbak's codec for WAL-heavy servers on few
	// cores: less CPU than zstd, larger objects.
	"synbak-s2": {Name: "synbak-s2", Tool: "synbak", Compress: "s2"},
	// The same with the -synbak-base binary.
	"base-zstd": {Name: "base-zstd", Tool: "synbak", Compress: "zstd", Base: true},
	"base-s2":   {Name: "base-s2", Tool: "synbak", Compress: "s2", Base: true},
	"base-none": {Name: "base-none", Tool: "synbak", Compress: "none", Base: true},
}

// proc is a running receiver.
type proc struct {
	cfg    receiverConfig
	cmd    *exec.Cmd
	done   chan struct{}
	out    string // directory holding the completed segments
	logf   *os.File
	stderr string
	hwmKB  atomic.Int64 // peak VmHWM seen
}

// sampleHWM records the process's peak resident set (VmHWM from
// /proc/PID/status). Maxrss from wait4 cannot be used: exec keeps the
// high-water mark of the replaced address space, which with Go's
// vfork-style spawn is this benchmark's own.
func (p *proc) sampleHWM() {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil && kb > p.hwmKB.Load() {
				p.hwmKB.Store(kb)
			}
			return
		}
	}
}

// peakRSSMB is the peak resident set seen, in MiB.
func (p *proc) peakRSSMB() float64 { return float64(p.hwmKB.Load()) / 1024 }

// env carries what every receiver needs.
type env struct {
	c      *benchpg.Cluster
	synbak string
	base   string   // the -synbak-base binary, for the base-* configurations
	extra  []string // -synbak-env: more environment for synbak
	work   string   // per-run directories go here
	perf   string   // when set, record system-wide perf profiles of synbak runs here

	mu    sync.Mutex
	procs map[*proc]struct{}
}

// startReceiver starts cfg streaming from slot into dir.
func (e *env) startReceiver(cfg receiverConfig, slot, dir string, synchronous bool) (*proc, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &proc{cfg: cfg, stderr: filepath.Join(dir, "stderr.log")}
	var cmd *exec.Cmd
	switch cfg.Tool {
	case "pg_receivewal":
		p.out = filepath.Join(dir, "out")
		if err := os.Mkdir(p.out, 0o700); err != nil {
			return nil, err
		}
		args := []string{"-d", e.c.DSN(), "-D", p.out, "-S", slot, "--no-loop", "--compress=" + cfg.Compress}
		if synchronous {
			args = append(args, "--synchronous")
		}
		cmd = exec.Command(filepath.Join(e.c.Bin, "pg_receivewal"), args...)
		cmd.Env = benchpg.CleanEnv()
	case "synbak":
		p.out = filepath.Join(dir, "repo", "wal", "00000001")
		extra := []string{
			"SYNBAK_POSTGRES_DSN=" + e.c.DSN(),
			"SYNBAK_STATE_DIR=" + filepath.Join(dir, "state"),
			"SYNBAK_POSTGRES_SLOT=" + slot,
			"SYNBAK_REPOSITORY_COMPRESSION=" + cfg.Compress,
			fmt.Sprintf("SYNBAK_WAL_SYNCHRONOUS=%t", synchronous),
		}
		if cfg.Level > 0 {
			extra = append(extra, fmt.Sprintf("SYNBAK_REPOSITORY_ZSTD_LEVEL=%d", cfg.Level))
		}
		extra = append(extra, e.extra...)
		bin := e.synbak
		if cfg.Base {
			bin = e.base
		}
		cmd = exec.Command(bin, "--repo", filepath.Join(dir, "repo"), "--log-level", "info", "wal", "stream")
		cmd.Env = benchpg.CleanEnv(extra...)
	default:
		return nil, fmt.Errorf("unknown tool %q", cfg.Tool)
	}
	lf, err := os.Create(p.stderr)
	if err != nil {
		return nil, err
	}
	p.logf = lf
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group: a Ctrl-C reaches only us, and we stop receivers in
	// order. SIGKILL if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.done) }()
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
				p.sampleHWM()
			}
		}
	}()
	e.mu.Lock()
	e.procs[p] = struct{}{}
	e.mu.Unlock()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGINT, waits (SIGKILL after 60 s) and returns the rusage.
func (e *env) stop(p *proc) *syscall.Rusage {
	if !p.exited() {
		p.sampleHWM()
		_ = p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			logf("%s did not stop within 60s of SIGINT; killing it", p.cfg.Name)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	p.logf.Close()
	e.mu.Lock()
	delete(e.procs, p)
	e.mu.Unlock()
	ru, _ := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return ru
}

// stopAll stops every receiver still running (cleanup after an error).
func (e *env) stopAll() {
	e.mu.Lock()
	var ps []*proc
	for p := range e.procs {
		ps = append(ps, p)
	}
	e.mu.Unlock()
	for _, p := range ps {
		e.stop(p)
	}
}

func (p *proc) stderrTail() string {
	b, _ := os.ReadFile(p.stderr)
	return tail(b, 3000)
}

// targetPath is where cfg's copy of the complete segment name appears.
func (p *proc) targetPath(name string) string {
	switch {
	case p.cfg.Tool == "synbak":
		return filepath.Join(p.out, name)
	case p.cfg.Compress == "lz4":
		return filepath.Join(p.out, name+".lz4")
	case p.cfg.Compress == "gzip":
		return filepath.Join(p.out, name+".gz")
	default:
		return filepath.Join(p.out, name)
	}
}

var segFileRE = regexp.MustCompile(`^[0-9A-F]{24}(\.lz4|\.gz|\.zst)?$`)

// stored counts the complete segments in p.out and their bytes on disk
// (apparent size), and returns the first segment's name.
func (p *proc) stored() (n int, size int64, first string, err error) {
	err = filepath.WalkDir(p.out, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !segFileRE.MatchString(d.Name()) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n++
		size += fi.Size()
		if first == "" || d.Name() < first {
			first = d.Name()
		}
		return nil
	})
	first = strings.TrimSuffix(strings.TrimSuffix(first, ".lz4"), ".gz")
	return n, size, first, err
}

// runResult is one measured catch-up.
type runResult struct {
	Config        string  `json:"config"`
	Round         int     `json:"round"`
	WallS         float64 `json:"wall_s"`
	MBps          float64 `json:"mb_per_s"`
	UserS         float64 `json:"user_s"`
	SysS          float64 `json:"sys_s"`
	CPUS          float64 `json:"cpu_s"`
	MaxRSSMB      float64 `json:"max_rss_mb"`
	StoredBytes   int64   `json:"stored_bytes"`
	Segments      int     `json:"segments"`
	Ratio         float64 `json:"compression_ratio"`
	WalsenderCPUS float64 `json:"walsender_cpu_s"`
	// OtherCPUS is the CPU time everything else on the machine used during
	// the run (all CPUs' busy time minus receiver and walsender): noise.
	OtherCPUS       float64 `json:"other_cpu_s"`
	Verified        int     `json:"segments_verified,omitempty"`
	VerifiedAgainst string  `json:"verified_against,omitempty"`
}

// catchUp streams from slot until the segment target is stored, then stops
// the receiver and measures it.
func (e *env) catchUp(ctx context.Context, conn *pgx.Conn, cfg receiverConfig, slot, dir string, w walInfo) (runResult, *proc, error) {
	res := runResult{Config: cfg.Name}
	busy0 := benchpg.BusyCPU()
	t0 := time.Now()
	p, err := e.startReceiver(cfg, slot, dir, false)
	if err != nil {
		return res, nil, err
	}
	target := p.targetPath(w.TargetSegment)
	stopPerf := func() {}
	if cfg.Tool == "synbak" {
		stopPerf = e.startPerf(filepath.Base(dir))
	}
	defer stopPerf()
	var walsenderPID int
	for {
		if _, err := os.Stat(target); err == nil {
			break
		}
		if p.exited() {
			e.stop(p)
			return res, nil, fmt.Errorf("%s exited before storing %s:\n%s", cfg.Name, w.TargetSegment, p.stderrTail())
		}
		if walsenderPID == 0 && time.Since(t0) > 200*time.Millisecond {
			_ = conn.QueryRow(ctx, "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&walsenderPID)
		}
		select {
		case <-ctx.Done():
			e.stop(p)
			return res, nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	res.WallS = time.Since(t0).Seconds()
	busy1 := benchpg.BusyCPU()
	recvCPU, _ := benchpg.ProcCPU(p.cmd.Process.Pid)
	stopPerf()
	if walsenderPID == 0 {
		_ = conn.QueryRow(ctx, "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&walsenderPID)
	}
	if walsenderPID != 0 {
		if cpu, err := benchpg.ProcCPU(walsenderPID); err == nil {
			res.WalsenderCPUS = cpu
		}
	}
	ru := e.stop(p)
	if ru != nil {
		res.UserS = tv(ru.Utime)
		res.SysS = tv(ru.Stime)
		res.CPUS = res.UserS + res.SysS
	}
	res.MaxRSSMB = p.peakRSSMB()
	res.OtherCPUS = max(0, busy1-busy0-recvCPU-res.WalsenderCPUS)
	n, size, first, err := p.stored()
	if err != nil {
		return res, p, err
	}
	if first != w.StartSegment || n != w.Segments {
		return res, p, fmt.Errorf("%s stored %d segments from %s; expected %d from %s (see %s)", cfg.Name, n, first, w.Segments, w.StartSegment, p.stderr)
	}
	res.Segments = n
	res.StoredBytes = size
	res.Ratio = float64(int64(n)*w.SegSize) / float64(size)
	res.MBps = float64(int64(n)*w.SegSize) / 1e6 / res.WallS
	return res, p, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// verify fetches segments from a synbak repository with `synbak wal-fetch`
// and compares them byte for byte with reference copies (pg_receivewal's
// uncompressed ones, and the server's pg_wal while the slots keep it).
func (e *env) verify(ctx context.Context, repoDir, stateDir string, names []string, refDirs []string) (int, string, error) {
	var used []string
	ok := 0
	for _, name := range names {
		dest := filepath.Join(stateDir, "fetched-"+name)
		cmd := exec.CommandContext(ctx, e.synbak, "--repo", repoDir, "wal-fetch", name, dest)
		cmd.Env = benchpg.CleanEnv("SYNBAK_STATE_DIR=" + stateDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return ok, "", fmt.Errorf("synbak wal-fetch %s: %w\n%s", name, err, out)
		}
		got, err := os.ReadFile(dest)
		if err != nil {
			return ok, "", err
		}
		compared := 0
		for _, d := range refDirs {
			want, err := os.ReadFile(filepath.Join(d, name))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return ok, "", err
			}
			if !bytes.Equal(got, want) {
				return ok, "", fmt.Errorf("segment %s fetched from synbak differs from %s", name, filepath.Join(d, name))
			}
			compared++
			if len(used) < len(refDirs) && !contains(used, d) {
				used = append(used, d)
			}
		}
		if compared == 0 {
			return ok, "", fmt.Errorf("no reference copy of %s to compare with", name)
		}
		os.Remove(dest)
		ok++
	}
	return ok, strings.Join(used, ", "), nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// startPerf starts a system-wide `perf record` into e.perf/name.perf.data
// when -perf is set, and returns the function that stops it (idempotent).
func (e *env) startPerf(name string) func() {
	if e.perf == "" {
		return func() {}
	}
	perf := exec.Command("perf", "record", "-a", "-g", "-F", "499", "-o", filepath.Join(e.perf, name+".perf.data"))
	perf.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := perf.Start(); err != nil {
		logf("perf record: %v", err)
		return func() {}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = perf.Process.Signal(syscall.SIGINT)
			_ = perf.Wait()
		})
	}
}
