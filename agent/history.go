package agent

import (
	"sync"
	"time"
)

// Sample is one point of the agent's recent history, shown on the status
// page.
type Sample struct {
	Time time.Time `json:"time"`
	// LagBytes is how far the flushed WAL is behind the server's
	// position (0 when the server is unreachable).
	LagBytes int64 `json:"lag_bytes"`
	// BacklogBytes is WAL acknowledged to PostgreSQL as flushed but not
	// yet in a complete segment stored in the repository (partials cover
	// it within wal.partial_interval).
	BacklogBytes int64 `json:"backlog_bytes"`
	Streaming    bool  `json:"streaming"`
	Healthy      bool  `json:"healthy"`
}

// DrillRun is one drill's outcome as the agent saw it.
type DrillRun struct {
	Time     time.Time `json:"time"`
	OK       bool      `json:"ok"`
	Seconds  float64   `json:"rto_seconds"`
	Problems []string  `json:"problems,omitempty"`
}

// history is a ring of samples (one per interval, 24 h by default) and the
// last drills.
type history struct {
	every time.Duration
	size  int

	mu     sync.Mutex
	ring   []Sample
	next   int
	full   bool
	last   time.Time
	drills []DrillRun
	runs   int
}

func newHistory(every time.Duration, keep time.Duration) *history {
	if every <= 0 {
		every = time.Minute
	}
	if keep <= 0 {
		keep = 24 * time.Hour
	}
	n := max(int(keep/every), 2)
	return &history{every: every, size: n, ring: make([]Sample, n)}
}

// due reports whether a sample should be taken at now.
func (h *history) due(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last.IsZero() || now.Sub(h.last) >= h.every
}

func (h *history) add(s Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = s.Time
	h.ring[h.next] = s
	h.next = (h.next + 1) % h.size
	if h.next == 0 {
		h.full = true
	}
}

// drill records a drill when the schedule reports a new run.
func (h *history) drill(d DrillStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d.Runs <= h.runs {
		return
	}
	h.runs = d.Runs
	h.drills = append(h.drills, DrillRun{Time: d.LastRun, OK: d.LastOK, Seconds: d.LastDuration, Problems: append([]string(nil), d.LastProblems...)})
	if len(h.drills) > 10 {
		h.drills = h.drills[len(h.drills)-10:]
	}
}

// samples returns the samples, oldest first.
func (h *history) samples() []Sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Sample
	if h.full {
		out = append(out, h.ring[h.next:]...)
	}
	return append(out, h.ring[:h.next]...)
}

func (h *history) lastDrills() []DrillRun {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]DrillRun(nil), h.drills...)
}
