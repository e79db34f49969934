package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/notify"
	"github.com/synbak/synbak/overview"
)

// httpAuth reads http.auth_token_file and http.basic_auth_file (each must
// be readable by its owner only); nil when neither is set.
func httpAuth(cfg *config.Config) (*agent.Auth, error) {
	if cfg.HTTP.AuthTokenFile == "" && cfg.HTTP.BasicAuthFile == "" {
		return nil, nil
	}
	a := &agent.Auth{}
	if f := cfg.HTTP.AuthTokenFile; f != "" {
		tok, err := config.ReadSecretFile("http.auth_token_file", f)
		if err != nil {
			return nil, err
		}
		a.Token = tok
	}
	if f := cfg.HTTP.BasicAuthFile; f != "" {
		data, err := config.ReadSecretFile("http.basic_auth_file", f)
		if err != nil {
			return nil, err
		}
		users, err := agent.ParseBasicAuthFile(data)
		if err != nil {
			return nil, fmt.Errorf("%w: http.basic_auth_file %s: %w", config.ErrInvalid, f, err)
		}
		a.Users = users
	}
	return a, nil
}

// setAgentAuth makes a request to the agent carry the configured
// credentials (for `synbak status`): http.auth_token_file's token, else
// the first user of http.basic_auth_file.
func setAgentAuth(cfg *config.Config, req *http.Request) {
	a, err := httpAuth(cfg)
	if err != nil || a == nil {
		return
	}
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
		return
	}
	users := make([]string, 0, len(a.Users))
	for u := range a.Users {
		users = append(users, u)
	}
	sort.Strings(users)
	if len(users) > 0 {
		req.SetBasicAuth(users[0], a.Users[users[0]])
	}
}

// loopback reports whether listen (host:port) binds loopback addresses only.
func loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// agentPage sets up the status page: the repository overview (a component
// to run) and the endpoint's authentication. Without authentication on a
// non-loopback address it warns: the page and /status show the
// homeserver's backup state (no secrets) to whoever can reach the port.
func agentPage(cfg *config.Config, r *repo.Repo, server string, ovLog, log *slog.Logger) (agent.PageOptions, *overview.Cache, error) {
	auth, err := httpAuth(cfg)
	if err != nil {
		return agent.PageOptions{}, nil, err
	}
	if auth == nil && cfg.HTTP.Listen != "" && !loopback(cfg.HTTP.Listen) {
		log.Warn("http.listen is not a loopback address and no http.auth_token_file or http.basic_auth_file is set: anyone who reaches the port sees the status page, /status and /metrics",
			"listen", cfg.HTTP.Listen)
	}
	cache := &overview.Cache{Repo: r, MaxAge: cfg.HTTP.OverviewMaxAge.D(), Log: ovLog}
	return agent.PageOptions{Overview: cache, Server: server, Auth: auth}, cache, nil
}

// agentNotifier builds the notifier and its watch from notify.*; nil when
// no target is configured. The agent hands the watch its status
// (agent.StatusReader) before it runs.
func agentNotifier(cfg *config.Config, server string, ov *overview.Cache, reg prometheus.Registerer, nlog *slog.Logger) (*notify.Notifier, *notify.Watch, error) {
	n := cfg.Notify
	senders, err := notifySenders(cfg)
	if err != nil || len(senders) == 0 {
		return nil, nil, err
	}
	nt := notify.New(notify.Options{Senders: senders, Log: nlog, Registerer: reg, Timeout: n.Timeout.D(), Dedup: n.Dedup.D()})
	w := &notify.Watch{Notifier: nt, Server: server, RedAfter: n.HealthGrace.D(), RTOBound: n.RTOBound.D(), Log: nlog}
	if n.WeeklySummary {
		w.SummaryEvery = 7 * 24 * time.Hour
		w.Summary = func(ctx context.Context) []string { return summaryLines(ctx, w.Status(), ov) }
	}
	return nt, w, nil
}

// notifySenders builds the configured notification targets.
func notifySenders(cfg *config.Config) ([]notify.Sender, error) {
	n := cfg.Notify
	timeout := n.Timeout.D()
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	client := &http.Client{Timeout: timeout + 5*time.Second} // the notifier's own timeout comes first
	var senders []notify.Sender
	if n.Matrix.Enabled() {
		tok, err := config.ReadSecretFile("notify.matrix.access_token_file", n.Matrix.AccessTokenFile)
		if err != nil {
			return nil, err
		}
		senders = append(senders, &notify.Matrix{Homeserver: n.Matrix.Homeserver, RoomID: n.Matrix.RoomID, Token: tok, Client: client})
	}
	if n.Webhook.URL != "" {
		wh := &notify.Webhook{URL: n.Webhook.URL, Client: client}
		if f := n.Webhook.BearerTokenFile; f != "" {
			tok, err := config.ReadSecretFile("notify.webhook.bearer_token_file", f)
			if err != nil {
				return nil, err
			}
			wh.Header = http.Header{"Authorization": {"Bearer " + tok}}
		}
		senders = append(senders, wh)
	}
	return senders, nil
}

// notifyVerifyFailure tells the notification targets that `synbak verify`
// found problems (within 30 s; a failure to notify is logged, never
// changes verify's result).
func notifyVerifyFailure(ctx context.Context, cfg *config.Config, problems []string, log *slog.Logger) {
	senders, err := notifySenders(cfg)
	if err != nil {
		log.Warn("cannot notify about the failed verification", "err", err)
		return
	}
	if len(senders) == 0 {
		return
	}
	lines := problems
	if len(lines) > 20 {
		lines = append(append([]string(nil), lines[:20]...), fmt.Sprintf("… and %d more (run synbak verify)", len(problems)-20))
	}
	nt := notify.New(notify.Options{Senders: senders, Log: log.With("component", "notify"), Timeout: cfg.Notify.Timeout.D(), RetryDelay: time.Second, Attempts: 3})
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nt.Deliver(ctx, notify.Event{Kind: notify.KindVerifyFailed, Severity: notify.SeverityCritical,
		Title: fmt.Sprintf("synbak verify found %d problem(s) in the repository", len(problems)), Lines: lines})
}

// summaryLines is the weekly summary: health, recovery window, sizes, the
// last drill.
func summaryLines(ctx context.Context, st agent.Status, ov *overview.Cache) []string {
	var lines []string
	if st.Healthy {
		lines = append(lines, "health: green")
	} else {
		lines = append(lines, "health: RED: "+strings.Join(st.Problems, "; "))
	}
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	o, err := ov.Get(gctx)
	cancel()
	switch {
	case o != nil:
		if w := o.Window(); w != nil {
			lines = append(lines, fmt.Sprintf("recovery window: %s to %s", w.From.Format(time.RFC3339), w.To.Format(time.RFC3339)))
		} else {
			lines = append(lines, "recovery window: none")
		}
		var parts []string
		var total int64
		for _, k := range o.Sizes {
			parts = append(parts, k.Kind+" "+humanBytes(k.Bytes))
			total += k.Bytes
		}
		lines = append(lines, fmt.Sprintf("repository: %s (%s); %d base backups, %d dumps", humanBytes(total), strings.Join(parts, ", "), len(o.Backups), len(o.Dumps)))
	case err != nil:
		lines = append(lines, "repository: could not be read: "+err.Error())
	}
	if d := st.Drills; d != nil && d.Runs > 0 {
		res := "passed"
		if !d.LastOK {
			res = "FAILED"
		}
		lines = append(lines, fmt.Sprintf("last drill: %s at %s, RTO %s", res, d.LastRun.UTC().Format(time.RFC3339), time.Duration(d.LastDuration*float64(time.Second)).Round(time.Second)))
	}
	return lines
}

// agentPageParts returns the status page's options and the parts behind
// it: the repository overview and, when configured, the notifier and its
// watch (which reads the agent's status: agent.StatusReader).
func agentPageParts(cfg *config.Config, r *repo.Repo, server string, reg prometheus.Registerer, partLog func(string) *slog.Logger) (agent.PageOptions, []agent.Part, error) {
	page, ov, err := agentPage(cfg, r, server, partLog("overview"), partLog("http"))
	if err != nil {
		return agent.PageOptions{}, nil, err
	}
	parts := []agent.Part{{Name: "overview", Runner: agent.RunFunc(ov.Run)}}
	nt, w, err := agentNotifier(cfg, server, ov, reg, partLog("notify"))
	if err != nil || nt == nil {
		return page, parts, err
	}
	return page, append(parts, agent.Part{Name: "notify", Runner: agent.RunFunc(nt.Run)}, agent.Part{Name: "notify-watch", Runner: w}), nil
}
