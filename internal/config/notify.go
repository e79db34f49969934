package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Notify configures notifications (internal: the notify package).
type Notify struct {
	Matrix  NotifyMatrix  `mapstructure:"matrix"`
	Webhook NotifyWebhook `mapstructure:"webhook"`
	// HealthGrace: health must stay red this long before it is reported.
	HealthGrace Duration `mapstructure:"health_grace"`
	// RTOBound: a passing drill slower than this is reported (0: never).
	RTOBound Duration `mapstructure:"rto_bound"`
	// WeeklySummary sends a summary every 7 days.
	WeeklySummary bool `mapstructure:"weekly_summary"`
	// Dedup: the same failure is reported at most once per this period.
	Dedup Duration `mapstructure:"dedup"`
	// Timeout bounds one delivery attempt.
	Timeout Duration `mapstructure:"timeout"`
}

// NotifyMatrix posts to a Matrix room.
type NotifyMatrix struct {
	// Homeserver is the client API's base URL (https://matrix.example.org).
	Homeserver string `mapstructure:"homeserver"`
	// RoomID is the room's ID (!abc:example.org), not an alias.
	RoomID string `mapstructure:"room_id"`
	// AccessTokenFile holds the bot user's access token (mode 0600).
	AccessTokenFile string `mapstructure:"access_token_file"`
}

// NotifyWebhook posts JSON to a URL.
type NotifyWebhook struct {
	URL string `mapstructure:"url"`
	// BearerTokenFile, when set, sends its content as a bearer token.
	BearerTokenFile string `mapstructure:"bearer_token_file"`
}

// Enabled reports whether the Matrix target is configured.
func (m NotifyMatrix) Enabled() bool {
	return m.Homeserver != "" || m.RoomID != "" || m.AccessTokenFile != ""
}

func notifyDefaults() map[string]any {
	return map[string]any{
		"notify.matrix.homeserver":         "",
		"notify.matrix.room_id":            "",
		"notify.matrix.access_token_file":  "",
		"notify.webhook.url":               "",
		"notify.webhook.bearer_token_file": "",
		"notify.health_grace":              "2m",
		"notify.rto_bound":                 "0",
		"notify.weekly_summary":            false,
		"notify.dedup":                     "6h",
		"notify.timeout":                   "10s",
		"http.auth_token_file":             "",
		"http.basic_auth_file":             "",
		"http.overview_max_age":            "1m",
	}
}

func (c *Config) validateNotify() []error {
	var errs []error
	n := c.Notify
	if m := n.Matrix; m.Enabled() {
		if m.Homeserver == "" || m.RoomID == "" || m.AccessTokenFile == "" {
			errs = append(errs, invalid("notify.matrix: set homeserver, room_id and access_token_file together"))
		}
		if m.Homeserver != "" {
			if u, err := url.Parse(m.Homeserver); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
				errs = append(errs, invalid("notify.matrix.homeserver %q: want the client API's base URL, e.g. https://matrix.example.org", m.Homeserver))
			}
		}
		if m.RoomID != "" && (!strings.HasPrefix(m.RoomID, "!") || !strings.Contains(m.RoomID, ":")) {
			errs = append(errs, invalid("notify.matrix.room_id %q: want a room ID like !abcdef:example.org (not an alias; Element shows it under Room settings → Advanced)", m.RoomID))
		}
	}
	if w := n.Webhook; w.URL != "" {
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, invalid("notify.webhook.url: want an http(s) URL"))
		}
	} else if w.BearerTokenFile != "" {
		errs = append(errs, invalid("notify.webhook.bearer_token_file is set but notify.webhook.url is not"))
	}
	if n.HealthGrace.D() < 0 || n.RTOBound.D() < 0 || n.Dedup.D() < 0 {
		errs = append(errs, invalid("notify.health_grace, notify.rto_bound and notify.dedup must not be negative"))
	}
	if n.Timeout.D() < 0 {
		errs = append(errs, invalid("notify.timeout %s: must be positive (0: the default, 10s)", n.Timeout))
	}
	if a := c.HTTP.OverviewMaxAge.D(); a != 0 && a < time.Second {
		errs = append(errs, invalid("http.overview_max_age %s: must be at least 1s", c.HTTP.OverviewMaxAge))
	}
	return errs
}

// ReadSecretFile reads a secret (a token) from a file that only its owner
// may read: a file readable by group or others is refused, so that a
// token is never left where other users can read it. The error never
// contains the file's content.
func ReadSecretFile(key, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrInvalid, key, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", invalid("%s %s: mode %04o lets other users read it: run chmod 600 %s", key, path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrInvalid, key, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", invalid("%s %s is empty", key, path)
	}
	return s, nil
}
