package agent

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// ComponentStatus is what the supervisor knows about a part.
type ComponentStatus struct {
	Name    string `json:"name"`
	Running bool   `json:"running"`
	// Failures counts the errors the component returned; Restarts the
	// times it was run again after one.
	Failures      int       `json:"failures"`
	Restarts      int       `json:"restarts"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// RetryAt is when a failed component runs again.
	RetryAt time.Time `json:"retry_at,omitzero"`
	Started time.Time `json:"started,omitzero"`
}

// supervisor runs components side by side, restarting failed ones with
// exponential backoff, so that one failing part (a base backup hitting an
// error) never stops the others (WAL streaming).
type supervisor struct {
	log        *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
	onFailure  func(name string)

	mu     sync.Mutex
	status map[string]*ComponentStatus
	order  []string
}

func newSupervisor(log *slog.Logger, minBackoff, maxBackoff time.Duration, onFailure func(string)) *supervisor {
	if minBackoff <= 0 {
		minBackoff = time.Second
	}
	if maxBackoff < minBackoff {
		maxBackoff = minBackoff
	}
	return &supervisor{log: log, minBackoff: minBackoff, maxBackoff: maxBackoff, onFailure: onFailure, status: map[string]*ComponentStatus{}}
}

// register makes the components known (and visible in snapshot) before
// they run.
func (s *supervisor) register(comps []Part) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range comps {
		if _, ok := s.status[c.Name]; !ok {
			s.status[c.Name] = &ComponentStatus{Name: c.Name}
			s.order = append(s.order, c.Name)
		}
	}
}

// run runs every component until ctx is cancelled and all have returned.
func (s *supervisor) run(ctx context.Context, comps []Part) {
	s.register(comps)
	var wg sync.WaitGroup
	for _, c := range comps {
		wg.Go(func() { s.keep(ctx, c) })
	}
	wg.Wait()
}

func (s *supervisor) keep(ctx context.Context, c Part) {
	backoff := s.minBackoff
	log := s.log.With("component", c.Name)
	for {
		started := time.Now()
		s.update(c.Name, func(st *ComponentStatus) { st.Running, st.Started, st.RetryAt = true, started, time.Time{} })
		err := c.Run(ctx)
		s.update(c.Name, func(st *ComponentStatus) { st.Running = false })
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("stopped with an error", "err", err)
			}
			return
		}
		if err == nil {
			log.Info("finished")
			return
		}
		if time.Since(started) > 10*s.maxBackoff {
			backoff = s.minBackoff // it had been working for a long time
		}
		// Full jitter on the upper half, so that restarts of several
		// agents do not synchronise.
		wait := backoff/2 + rand.N(backoff/2+1)
		retry := time.Now().Add(wait)
		s.update(c.Name, func(st *ComponentStatus) {
			st.Failures++
			st.LastError, st.LastErrorTime, st.RetryAt = err.Error(), time.Now(), retry
		})
		if s.onFailure != nil {
			s.onFailure(c.Name)
		}
		log.Error("failed; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, s.maxBackoff)
		s.update(c.Name, func(st *ComponentStatus) { st.Restarts++ })
	}
}

func (s *supervisor) update(name string, f func(*ComponentStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.status[name])
}

// snapshot returns the components' status in the order they were given.
func (s *supervisor) snapshot() []ComponentStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ComponentStatus, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, *s.status[n])
	}
	return out
}
