package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateNotify(t *testing.T) {
	tests := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Notify.Matrix.Homeserver = "https://m.example.org" }, "set homeserver, room_id and access_token_file together"},
		{func(c *Config) {
			c.Notify.Matrix = NotifyMatrix{Homeserver: "matrix.example.org", RoomID: "!a:example.org", AccessTokenFile: "/t"}
		}, "want the client API's base URL"},
		{func(c *Config) {
			c.Notify.Matrix = NotifyMatrix{Homeserver: "https://m.example.org", RoomID: "#ops:example.org", AccessTokenFile: "/t"}
		}, "not an alias"},
		{func(c *Config) { c.Notify.Webhook.URL = "ftp://x" }, "notify.webhook.url"},
		{func(c *Config) { c.Notify.Webhook.BearerTokenFile = "/t" }, "notify.webhook.url is not"},
		{func(c *Config) { c.Notify.RTOBound = -1 }, "must not be negative"},
		{func(c *Config) { c.HTTP.OverviewMaxAge = 1 }, "http.overview_max_age"},
	}
	for _, tt := range tests {
		c := valid()
		tt.mutate(&c)
		err := c.Validate()
		if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("got %v, want an invalid-configuration error containing %q", err, tt.want)
		}
	}
	c := valid()
	c.Notify.Matrix = NotifyMatrix{Homeserver: "https://m.example.org", RoomID: "!abc:example.org", AccessTokenFile: "/t"}
	c.Notify.Webhook.URL = "https://hooks.example.org/x"
	if err := c.Validate(); err != nil {
		t.Errorf("valid notify settings: %v", err)
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "token")
	if err := os.WriteFile(p, []byte("syt_secret_token\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadSecretFile("notify.matrix.access_token_file", p)
	if err == nil || !IsInvalid(err) || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "syt_secret") {
		t.Errorf("0644 token file: %v", err)
	}
	os.Chmod(p, 0o600)
	if s, err := ReadSecretFile("k", p); err != nil || s != "syt_secret_token" {
		t.Errorf("0600 token file: %q, %v", s, err)
	}
}
