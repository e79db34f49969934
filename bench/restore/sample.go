package main

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/synbak/synbak/bench/internal/benchpg"
)

// sampler watches a process tree every 50 ms: the root's own CPU time and
// peak RSS (VmHWM), the highest sum of PSS over the root and its
// descendants (and over processes whose command line contains match, e.g.
// pgBackRest's detached async archive-get), and the CPU time of those
// matched processes outside the tree.
type sampler struct {
	root  int
	match string

	mu       sync.Mutex
	rootCPUs float64
	rootHWMk int64
	treeRSSk int64
	extra    map[int]float64 // matched process → its own CPU seconds

	quit chan struct{}
	done chan struct{}
}

func startSampler(root int, match string) *sampler {
	s := &sampler{root: root, match: match, extra: map[int]float64{}, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.quit:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() {
	close(s.quit)
	<-s.done
}

type procInfo struct {
	ppid     int
	cpu      float64 // own user + system seconds
	cmdMatch bool
}

func (s *sampler) sample() {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	procs := map[int]procInfo{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		str := string(st)
		i := strings.LastIndexByte(str, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(str[i+1:])
		if len(f) < 22 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseFloat(f[11], 64)
		stt, _ := strconv.ParseFloat(f[12], 64)
		pi := procInfo{ppid: ppid, cpu: (ut + stt) / 100}
		if s.match != "" {
			if cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(cl), s.match) {
				pi.cmdMatch = true
			}
		}
		procs[pid] = pi
	}
	inTree := func(pid int) bool {
		for range 64 {
			if pid == s.root {
				return true
			}
			p, ok := procs[pid]
			if !ok || p.ppid <= 1 {
				return false
			}
			pid = p.ppid
		}
		return false
	}
	var rss int64
	s.mu.Lock()
	defer s.mu.Unlock()
	for pid, p := range procs {
		tree := inTree(pid)
		if tree || p.cmdMatch {
			// PSS: shared memory (shared_buffers) divided among the
			// processes that map it, not counted once per process.
			rss += pssKB(pid)
		}
		if p.cmdMatch && !tree {
			s.extra[pid] = max(s.extra[pid], p.cpu)
		}
	}
	if r, ok := procs[s.root]; ok {
		s.rootCPUs = max(s.rootCPUs, r.cpu)
		s.rootHWMk = max(s.rootHWMk, benchpg.VmHWM(s.root))
	}
	s.treeRSSk = max(s.treeRSSk, rss)
}

func (s *sampler) rootCPU() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rootCPUs
}

func (s *sampler) rootHWM() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.rootHWMk) / 1024
}

func (s *sampler) treeRSS() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.treeRSSk) / 1024
}

func (s *sampler) extraCPU() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum float64
	for _, v := range s.extra {
		sum += v
	}
	return sum
}

// pssKB is a process's proportional set size in kB (Pss of
// /proc/PID/smaps_rollup; 0 when the process is gone).
func pssKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
