package notify

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/synbak/synbak/agent"
)

// Watch turns the agent's status into events: health turning red (after
// RedAfter of continuous trouble, so that a blip is not an alert) and back
// green, a failed base backup or dump (each distinct error once per dedup
// window), a failed drill, a drill slower than RTOBound, and a weekly
// summary.
type Watch struct {
	Notifier *Notifier
	// Status is the agent's status (agent.Agent.Status).
	Status func() agent.Status
	// Server names the homeserver in messages.
	Server string
	// Interval between looks at the status (default 5 s).
	Interval time.Duration
	// RedAfter: health must be red this long before it is reported
	// (default 0: at once).
	RedAfter time.Duration
	// RTOBound: a passing drill slower than this is reported (0: never).
	RTOBound time.Duration
	// SummaryEvery sends a summary this often (0: never); the first one
	// an interval after the start. Summary returns its lines.
	SummaryEvery time.Duration
	Summary      func(ctx context.Context) []string
	Log          *slog.Logger

	redSince  time.Time
	red       bool
	lastBkErr string
	lastDmErr string
	drillRuns int
}

// ReadStatusFrom sets Status: the agent hands a Watch that is one of its
// parts its own status (agent.StatusReader).
func (w *Watch) ReadStatusFrom(status func() agent.Status) { w.Status = status }

// Run watches until ctx is cancelled; it returns nil then.
func (w *Watch) Run(ctx context.Context) error {
	if w.Interval <= 0 {
		w.Interval = 5 * time.Second
	}
	if w.Log == nil {
		w.Log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(w.Interval)
	defer t.Stop()
	var summary <-chan time.Time
	if w.SummaryEvery > 0 && w.Summary != nil {
		st := time.NewTicker(w.SummaryEvery)
		defer st.Stop()
		summary = st.C
	}
	first := true
	for {
		w.check(w.Status(), time.Now(), first)
		first = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-summary:
			w.Notifier.Notify(Event{Kind: KindSummary, Severity: SeverityInfo, Server: w.Server,
				Title: "weekly summary", Lines: w.Summary(ctx)})
		}
	}
}

func (w *Watch) check(st agent.Status, now time.Time, first bool) {
	ev := func(kind, sev, title string, lines []string, key string) {
		w.Notifier.Notify(Event{Kind: kind, Severity: sev, Server: w.Server, Title: title, Lines: lines, Key: key, Time: now})
	}
	switch {
	case !st.Healthy && w.redSince.IsZero():
		w.redSince = now
	case st.Healthy:
		w.redSince = time.Time{}
	}
	if !st.Healthy && !w.red && now.Sub(w.redSince) >= w.RedAfter {
		w.red = true
		ev(KindHealthRed, SeverityCritical, "health is RED: backups are not fully protected", st.Problems, "")
	}
	if st.Healthy && w.red {
		w.red = false
		ev(KindHealthGreen, SeverityOK, "health is green again", []string{"every problem reported before is resolved"}, "")
	}
	if b := st.Backups; b != nil {
		if b.LastError != "" && b.LastError != w.lastBkErr && !first {
			ev(KindBackupFailed, SeverityCritical, "a base backup failed", []string{b.LastError}, "backup:"+b.LastError)
		}
		w.lastBkErr = b.LastError
	}
	if d := st.Dumps; d != nil {
		if d.LastError != "" && d.LastError != w.lastDmErr && !first {
			ev(KindDumpFailed, SeverityCritical, "a logical dump failed", []string{d.LastError}, "dump:"+d.LastError)
		}
		w.lastDmErr = d.LastError
	}
	if d := st.Drills; d != nil {
		if d.Runs > w.drillRuns && !first {
			rto := time.Duration(d.LastDuration * float64(time.Second)).Round(time.Second)
			switch {
			case !d.LastOK:
				ev(KindDrillFailed, SeverityCritical, "the restore drill FAILED: the newest backup could not be restored", d.LastProblems,
					"drill:"+strings.Join(d.LastProblems, ";"))
			case w.RTOBound > 0 && rto > w.RTOBound:
				ev(KindDrillSlow, SeverityWarning, fmt.Sprintf("the restore drill passed but took %s, more than notify.rto_bound (%s)", rto, w.RTOBound), nil, "")
			}
		}
		w.drillRuns = d.Runs
	}
}
