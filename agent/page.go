package agent

import (
	"context"
	_ "embed"
	"fmt"
	"html"
	"html/template"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/synbak/synbak/overview"
)

// OverviewSource gives the repository's overview (overview.Cache).
type OverviewSource interface {
	Get(ctx context.Context) (*overview.Overview, error)
}

// VerifyResult is the newest verification the agent knows of.
type VerifyResult struct {
	Time     time.Time
	OK       bool
	Problems []string
}

// PageOptions configure the status page and the endpoint's authentication.
type PageOptions struct {
	// Overview is the repository's overview (nil: the page shows the
	// agent's status only).
	Overview OverviewSource
	// Server names the homeserver in the page's title.
	Server string
	// HistoryInterval and HistoryKeep: one sample of lag and backlog per
	// interval, kept this long (defaults 1 min and 24 h).
	HistoryInterval, HistoryKeep time.Duration
	// Auth guards every path (nil: none).
	Auth *Auth
	// Verify returns the newest verification, when the agent knows one.
	Verify func() *VerifyResult
}

//go:embed page.tmpl
var pageTemplate string

//go:embed page.css
var pageCSS string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"when":  fmtTime,
	"bytes": hbytes,
	"secs":  func(s float64) string { return (time.Duration(s * float64(time.Second))).Round(time.Second).String() },
	"ago":   func(t time.Time) string { return ago(time.Now(), t) },
}).Parse(pageTemplate))

// recordHistory takes a sample when one is due and notes new drills.
func (a *Agent) recordHistory(now time.Time) {
	if a.drills != nil {
		a.hist.drill(a.drills.Status())
	}
	if !a.hist.due(now) {
		return
	}
	s := Sample{Time: now}
	if a.wal != nil {
		w := a.wal.Status()
		s.Streaming = w.Streaming
		if w.Flushed > w.Archived {
			s.BacklogBytes = int64(w.Flushed - w.Archived)
		}
		if a.probe != nil {
			if p := a.probe.Status(); p.Up && p.ServerLSN > w.Flushed {
				s.LagBytes = int64(p.ServerLSN - w.Flushed)
			}
		}
	}
	s.Healthy = a.Status().Healthy
	a.hist.add(s)
}

// Samples returns the recent history, oldest first.
func (a *Agent) Samples() []Sample { return a.hist.samples() }

type pageData struct {
	Server    string
	Now       time.Time
	Status    Status
	Problems  []string // the agent's and the archive's
	Overview  *overview.Overview
	OvErr     string
	Window    *overview.Interval
	Timeline  template.HTML
	Lag       template.HTML
	Backlog   template.HTML
	Drills    []DrillRun
	Verify    *VerifyResult
	Backups   []overview.Backup
	Dumps     []overview.Dump
	Total     int64
	CSS       template.CSS
	SizeBars  template.HTML
	Sizes     []overview.KindSize
	LastLag   int64
	LastBlog  int64
	RenderDur string
}

func (a *Agent) handlePage(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		// The drill table shows what /status shows, also when a drill
		// ended since the last sample.
		if a.drills != nil {
			a.hist.drill(a.drills.Status())
		}
		d := pageData{Server: a.opts.Page.Server, Now: start.UTC(), Status: a.Status(), Drills: a.hist.lastDrills(), CSS: template.CSS(pageCSS)}
		d.Problems = append(d.Problems, d.Status.Problems...)
		if a.opts.Page.Overview != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			o, err := a.opts.Page.Overview.Get(ctx)
			cancel()
			if err != nil {
				d.OvErr = err.Error()
			}
			if o != nil {
				d.Overview = o
				d.Window = o.Window()
				for _, p := range o.Problems {
					d.Problems = append(d.Problems, "archive: "+p)
				}
				d.Backups = lastN(o.Backups, 8)
				d.Dumps = lastN(o.Dumps, 5)
				for _, k := range o.Sizes {
					d.Total += k.Bytes
				}
				d.Timeline = timelineSVG(o, d.Status, d.Drills, d.Now)
				d.Sizes = append([]overview.KindSize(nil), o.Sizes...)
				sort.SliceStable(d.Sizes, func(i, j int) bool { return d.Sizes[i].Bytes > d.Sizes[j].Bytes })
				d.SizeBars = sizeBars(d.Sizes, d.Total)
			}
		}
		if a.opts.Page.Verify != nil {
			d.Verify = a.opts.Page.Verify()
		} else if rec := a.lastVerify(); rec != nil {
			d.Verify = &VerifyResult{Time: rec.Time, OK: rec.OK, Problems: rec.Problems}
		}
		if a.opts.Page.Verify != nil && d.Verify != nil && !d.Verify.OK {
			// Status() names a failed run it read from the state
			// directory; one given by the hook is named here.
			d.Problems = append(d.Problems, "verify: the last verification ("+fmtTime(d.Verify.Time)+") found problems: "+strings.Join(d.Verify.Problems, "; "))
		}
		samples := a.hist.samples()
		if n := len(samples); n > 0 {
			d.LastLag, d.LastBlog = samples[n-1].LagBytes, samples[n-1].BacklogBytes
		}
		d.Lag = chartSVG("lag", samples, func(s Sample) int64 { return s.LagBytes }, d.Now, a.hist.every*time.Duration(a.hist.size))
		d.Backlog = chartSVG("backlog", samples, func(s Sample) int64 { return s.BacklogBytes }, d.Now, a.hist.every*time.Duration(a.hist.size))
		d.RenderDur = time.Since(start).Round(time.Microsecond).String()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
		if err := pageTmpl.Execute(w, d); err != nil {
			a.opts.Log.Warn("status page", "err", err)
		}
	})
}

func lastN[T any](s []T, n int) []T {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	out := append([]T(nil), s...)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in " + (-d).Round(time.Second).String()
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func hbytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// The timeline's geometry.
const (
	svgW   = 1000.0
	labelW = 150.0
	plotX0 = labelW + 10
	plotX1 = svgW - 20
	rowH   = 26.0
)

type axis struct{ from, to time.Time }

func (ax axis) x(t time.Time) float64 {
	span := ax.to.Sub(ax.from).Seconds()
	if span <= 0 {
		return plotX0
	}
	f := t.Sub(ax.from).Seconds() / span
	return plotX0 + math.Max(0, math.Min(1, f))*(plotX1-plotX0)
}

// timelineSVG draws the recovery window on a time axis: recoverable spans,
// WAL per timeline, gaps in red, timeline switches, base backups, dumps,
// media and config snapshots, drills.
func timelineSVG(o *overview.Overview, st Status, drills []DrillRun, now time.Time) template.HTML {
	from, to := o.Extent.From, now
	if from.IsZero() || to.Sub(from) < time.Minute {
		from = to.Add(-time.Minute)
	}
	pad := to.Sub(from) / 50
	ax := axis{from: from.Add(-pad), to: to.Add(pad)}
	var b strings.Builder
	type row struct{ label, id string }
	rows := []row{{"recoverable", "row-window"}}
	for _, t := range o.Timelines {
		rows = append(rows, row{fmt.Sprintf("WAL timeline %d", t.TLI), fmt.Sprintf("row-wal-%d", t.TLI)})
	}
	rows = append(rows, row{"base backups", "row-backups"}, row{"dumps", "row-dumps"}, row{"media", "row-media"}, row{"config", "row-config"}, row{"drills", "row-drills"})
	top := 10.0
	h := top + float64(len(rows))*rowH + 40
	fmt.Fprintf(&b, `<svg id="timeline" class="timeline" viewBox="0 0 %.0f %.0f" width="100%%" role="img" aria-label="recovery window on a time axis" xmlns="http://www.w3.org/2000/svg">`, svgW, h)
	rowY := map[string]float64{}
	for i, r := range rows {
		y := top + float64(i)*rowH
		rowY[r.id] = y
		if i%2 == 0 {
			fmt.Fprintf(&b, `<rect class="band" x="0" y="%.1f" width="%.0f" height="%.0f"/>`, y, svgW, rowH)
		}
		fmt.Fprintf(&b, `<text id="%s" class="rowlabel" x="%.0f" y="%.1f">%s</text>`, r.id, labelW, y+rowH/2+4, html.EscapeString(r.label))
	}
	bottom := top + float64(len(rows))*rowH
	// Axis ticks.
	span := ax.to.Sub(ax.from)
	step := niceStep(span / 6)
	for t := ax.from.Truncate(step).Add(step); t.Before(ax.to); t = t.Add(step) {
		x := ax.x(t)
		layout := "Jan 02"
		if step < 24*time.Hour {
			layout = "Jan 02 15:04"
		}
		fmt.Fprintf(&b, `<line class="tick" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/><text class="ticklabel" x="%.1f" y="%.1f">%s</text>`,
			x, top, x, bottom+4, x, bottom+18, t.UTC().Format(layout))
	}
	fmt.Fprintf(&b, `<line class="now" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"><title>now %s</title></line>`, ax.x(now), top-4, ax.x(now), bottom+4, fmtTime(now))
	bar := func(rowID, class, id string, f, t time.Time, title string) {
		x0, x1 := ax.x(f), ax.x(t)
		w := math.Max(x1-x0, 2)
		idAttr := ""
		if id != "" {
			idAttr = ` id="` + id + `"`
		}
		fmt.Fprintf(&b, `<rect%s class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.0f"><title>%s</title></rect>`,
			idAttr, class, x0, rowY[rowID]+5, w, rowH-10, html.EscapeString(title))
	}
	mark := func(rowID, class string, t time.Time, title string) {
		x, y := ax.x(t), rowY[rowID]
		fmt.Fprintf(&b, `<path class="%s" d="M%.1f %.1fl5 -9h-10z"><title>%s</title></path>`, class, x, y+rowH-5, html.EscapeString(title))
	}
	for i, w := range o.Windows {
		bar("row-window", "win", fmt.Sprintf("window-%d", i), w.From, w.To, "restores possible from "+fmtTime(w.From)+" to "+fmtTime(w.To))
	}
	for _, t := range o.Timelines {
		id := fmt.Sprintf("row-wal-%d", t.TLI)
		for _, r := range t.Ranges {
			if r.From.IsZero() || r.To.IsZero() {
				continue // times unknown (unreadable headers)
			}
			what := fmt.Sprintf("timeline %d: %s .. %s (%d segments), %s to %s", t.TLI, r.First, r.Last, r.Segments, fmtTime(r.From), fmtTime(r.To))
			bar(id, fmt.Sprintf("wal tl%d", t.TLI%6), "", r.From, r.To, what)
		}
	}
	for i, g := range o.Gaps {
		if g.From.IsZero() {
			g.From = g.To
		}
		if g.To.IsZero() {
			g.To = g.From
		}
		if g.From.IsZero() {
			continue
		}
		x0, x1 := ax.x(g.From), ax.x(g.To)
		w := math.Max(x1-x0, 3)
		fmt.Fprintf(&b, `<rect id="gap-%d" class="gap" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>WAL gap: %d segment(s) missing from %s on timeline %d, between %s and %s: no restore reaches past it</title></rect>`,
			i, x0, top, w, rowY["row-backups"]-top, g.Segments, g.Missing, g.Timeline, fmtTime(g.From), fmtTime(g.To))
		fmt.Fprintf(&b, `<text class="gaplabel" x="%.1f" y="%.1f">gap</text>`, x0+w+2, top+10)
	}
	for _, s := range o.Switches {
		if s.Time.IsZero() {
			continue
		}
		x := ax.x(s.Time)
		fmt.Fprintf(&b, `<line class="switch" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"><title>switch to timeline %d at %s (%s)</title></line><text class="switchlabel" x="%.1f" y="%.1f">→ TL %d</text>`,
			x, top, x, rowY["row-backups"]+rowH/2, s.Timeline, s.LSN, fmtTime(s.Time), x+4, rowY["row-backups"]+rowH/2+4, s.Timeline)
	}
	for _, bk := range o.Backups {
		mark("row-backups", "backup", bk.End, fmt.Sprintf("base backup %s (timeline %d), %s to %s, %s", bk.ID, bk.Timeline, fmtTime(bk.Start), fmtTime(bk.End), hbytes(bk.Size)))
	}
	for _, d := range o.Dumps {
		mark("row-dumps", "dump", d.End, fmt.Sprintf("logical dump %s, ended %s, %s stored", d.ID, fmtTime(d.End), hbytes(d.StoredSize)))
	}
	ticks := func(rowID, class string, ts []time.Time, what string) {
		// At most one tick per pixel column: a year of snapshots stays light.
		lastX := -10.0
		for _, t := range ts {
			x := ax.x(t)
			if x-lastX < 1.5 {
				continue
			}
			lastX = x
			fmt.Fprintf(&b, `<line class="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"><title>%s %s</title></line>`, class, x, rowY[rowID]+6, x, rowY[rowID]+rowH-6, what, fmtTime(t))
		}
	}
	ticks("row-media", "media", o.Media, "media index written")
	ticks("row-config", "config", o.Config, "config snapshot")
	for _, d := range drills {
		class, what := "drill ok", "drill passed, RTO "
		if !d.OK {
			class, what = "drill failed", "drill FAILED after "
		}
		x, y := ax.x(d.Time), rowY["row-drills"]+rowH/2
		fmt.Fprintf(&b, `<circle class="%s" cx="%.1f" cy="%.1f" r="6"><title>%s%s at %s</title></circle>`, class, x, y, what, time.Duration(d.Seconds*float64(time.Second)).Round(time.Second), fmtTime(d.Time))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func niceStep(d time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
		24 * time.Hour, 2 * 24 * time.Hour, 7 * 24 * time.Hour, 14 * 24 * time.Hour, 30 * 24 * time.Hour, 61 * 24 * time.Hour} {
		if s >= d {
			return s
		}
	}
	return 91 * 24 * time.Hour
}

// chartSVG draws one value of the samples over the kept period.
func chartSVG(id string, samples []Sample, v func(Sample) int64, now time.Time, keep time.Duration) template.HTML {
	const w, h, x0, y0 = 480.0, 120.0, 60.0, 10.0
	pw, ph := w-x0-10, h-y0-25
	var mx int64 = 1024
	for _, s := range samples {
		mx = max(mx, v(s))
	}
	from := now.Add(-keep)
	if len(samples) > 0 && samples[0].Time.After(from) {
		// Less history than the ring holds: show what there is.
		from = samples[0].Time.Add(-time.Minute)
		keep = now.Sub(from)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="chart-%s" class="chart" viewBox="0 0 %.0f %.0f" width="100%%" xmlns="http://www.w3.org/2000/svg">`, id, w, h)
	fmt.Fprintf(&b, `<rect class="plot" x="%.0f" y="%.0f" width="%.0f" height="%.0f"/>`, x0, y0, pw, ph)
	fmt.Fprintf(&b, `<text class="ticklabel" x="%.0f" y="%.0f" text-anchor="end">%s</text><text class="ticklabel" x="%.0f" y="%.0f" text-anchor="end">0</text>`, x0-4, y0+8, hbytes(mx), x0-4, y0+ph)
	fmt.Fprintf(&b, `<text class="ticklabel" x="%.0f" y="%.0f">%s ago</text><text class="ticklabel" x="%.0f" y="%.0f" text-anchor="end">now</text>`, x0, h-6, shortDur(keep), x0+pw, h-6)
	if len(samples) > 0 {
		b.WriteString(`<polyline class="line" points="`)
		for _, s := range samples {
			f := s.Time.Sub(from).Seconds() / keep.Seconds()
			x := x0 + math.Max(0, math.Min(1, f))*pw
			y := y0 + ph - float64(v(s))/float64(mx)*ph
			fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		}
		b.WriteString(`"/>`)
	} else {
		fmt.Fprintf(&b, `<text class="ticklabel" x="%.0f" y="%.0f">no samples yet</text>`, x0+10, y0+ph/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func sizeBars(sizes []overview.KindSize, total int64) template.HTML {
	var b strings.Builder
	if total <= 0 {
		return ""
	}
	sorted := sizes
	b.WriteString(`<svg id="sizes" class="sizes" viewBox="0 0 600 24" width="100%" xmlns="http://www.w3.org/2000/svg">`)
	x := 0.0
	for i, k := range sorted {
		w := float64(k.Bytes) / float64(total) * 600
		fmt.Fprintf(&b, `<rect class="k%d" x="%.1f" y="0" width="%.1f" height="24"><title>%s: %s in %d objects</title></rect>`, i%6, x, w, html.EscapeString(k.Kind), hbytes(k.Bytes), k.Objects)
		x += w
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// shortDur formats d as 24h, 90m or 45s.
func shortDur(d time.Duration) string {
	switch {
	case d >= 2*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()+0.5))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%dm", int(d.Minutes()+0.5))
	}
	return fmt.Sprintf("%ds", int(d.Seconds()+0.5))
}
