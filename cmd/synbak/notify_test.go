package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/notify/matrixtest"
)

// TestAgentNotifierUnreachable runs the agent with both notification
// targets broken: the Matrix homeserver answers every request with 500 and
// the webhook's port is closed. The agent still takes its base backup,
// streams WAL and turns healthy; the failed deliveries are counted (and
// retried) without disturbing anything; the access token never reaches the
// log; and SIGTERM stops the agent promptly while deliveries are still
// being retried.
func TestAgentNotifierUnreachable(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	const token = "syt_c3luYmFrYm90_notifier_secret_token"
	var mu sync.Mutex
	var requests int
	var auth []string
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		http.Error(w, `{"errcode":"M_UNKNOWN","error":"internal error"}`, http.StatusInternalServerError)
	}))
	defer failing.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	s := newAgentSite(t)
	tokFile := filepath.Join(t.TempDir(), "matrix-token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.env = append(s.env,
		"SYNBAK_NOTIFY_MATRIX_HOMESERVER="+failing.URL, "SYNBAK_NOTIFY_MATRIX_ROOM_ID=!backups:test.example",
		"SYNBAK_NOTIFY_MATRIX_ACCESS_TOKEN_FILE="+tokFile,
		"SYNBAK_NOTIFY_WEBHOOK_URL=http://"+closed+"/hook",
		"SYNBAK_NOTIFY_HEALTH_GRACE=0", "SYNBAK_NOTIFY_TIMEOUT=2s",
	)
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "a first base backup and WAL streaming, healthy", func() bool {
		st := s.status(t)
		return st.Healthy && st.Backups != nil && st.Backups.Count == 1 && st.WAL.Streaming
	})
	// The red notification (no backup yet at the start) failed on both
	// targets; the green one follows.
	errorsOf := func(target string) int {
		_, body := s.get(t, "/metrics")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, `synbak_notification_errors_total{target="`+target+`"} `); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		return -1
	}
	waitFor(t, 30*time.Second, "failed deliveries counted on both targets", func() bool { return errorsOf("matrix") > 0 && errorsOf("webhook") > 0 })
	mu.Lock()
	if requests == 0 || auth[0] != "Bearer "+token {
		t.Errorf("the homeserver got %d requests, first Authorization %q", requests, auth)
	}
	mu.Unlock()

	// WAL keeps moving to the repository.
	before := s.status(t).WAL.Archived
	s.c.Exec(t, "synapse", "INSERT INTO markers VALUES (1)")
	s.c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	waitFor(t, 30*time.Second, "WAL archived past the switch", func() bool { return s.status(t).WAL.Archived != before })
	if st := s.status(t); !st.Healthy {
		t.Errorf("unhealthy with failing notifiers: %v", st.Problems)
	}

	took, err := p.stop(t, syscall.SIGTERM, 15*time.Second)
	if err != nil {
		t.Errorf("agent exit: %v", err)
	}
	if took > 10*time.Second {
		t.Errorf("the agent took %s to stop", took)
	}
	logb, _ := os.ReadFile(p.logFile)
	if strings.Contains(string(logb), token) {
		t.Error("the access token appears in the agent's log")
	}
	if !strings.Contains(string(logb), "notification") {
		t.Error("no log line about the failed notifications")
	}
	t.Logf("stopped in %s; matrix requests %d", took, requests)
}

// TestVerifyNotifiesFailure: `synbak verify` that finds a problem posts a
// verify_failed event to the webhook (with its bearer token) and still
// exits 1; a clean repository posts nothing.
func TestVerifyNotifiesFailure(t *testing.T) {
	var mu sync.Mutex
	var got []map[string]any
	var auth string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		mu.Lock()
		got, auth = append(got, ev), r.Header.Get("Authorization")
		mu.Unlock()
	}))
	defer hook.Close()
	dir := t.TempDir()
	tok := filepath.Join(dir, "hook-token")
	if err := os.WriteFile(tok, []byte("hook-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SYNBAK_REPOSITORY_PATH": filepath.Join(dir, "repo"), "SYNBAK_STATE_DIR": filepath.Join(dir, "state"),
		"SYNBAK_NOTIFY_WEBHOOK_URL": hook.URL, "SYNBAK_NOTIFY_WEBHOOK_BEARER_TOKEN_FILE": tok}
	if code, _, stderr := runCLI(t, env, "-c", "/dev/null", "init"); code != 0 {
		t.Fatalf("init: %d %s", code, stderr)
	}
	if code, out, stderr := runCLI(t, env, "-c", "/dev/null", "verify"); code != 0 {
		t.Fatalf("verify of an empty repository: %d %s %s", code, out, stderr)
	}
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("a clean verify notified: %v", got)
	}
	mu.Unlock()
	bad := filepath.Join(dir, "repo", "wal", "00000001", "000000010000000000000003")
	if err := os.MkdirAll(filepath.Dir(bad), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("not a repository object"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, env, "-c", "/dev/null", "verify")
	if code != 1 {
		t.Fatalf("verify of a corrupt object exited %d:\n%s", code, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0]["kind"] != "verify_failed" || !strings.Contains(fmt.Sprint(got[0]["lines"]), "000000010000000000000003") || auth != "Bearer hook-secret" {
		t.Errorf("webhook got %v (Authorization %q), want one verify_failed naming the object", got, auth)
	}
}

// TestAgentNotifiesMatrixRoom runs the agent with notify.matrix pointed at
// a real homeserver (Dendrite): it starts red (no base backup yet), takes
// its first backup and turns green. The room, read back as its other
// member, holds the red message (naming the missing backup) and then the
// green one, once each.
func TestAgentNotifiesMatrixRoom(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	hs := matrixtest.Start(t)
	admin := hs.User(t, "admin")
	bot := hs.User(t, "synbakbot")
	room := hs.Room(t, admin, bot, "@synbakbot:localhost")
	s := newAgentSite(t)
	tokFile := filepath.Join(t.TempDir(), "matrix-token")
	if err := os.WriteFile(tokFile, []byte(bot+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.env = append(s.env, "SYNBAK_NOTIFY_MATRIX_HOMESERVER="+hs.URL, "SYNBAK_NOTIFY_MATRIX_ROOM_ID="+room,
		"SYNBAK_NOTIFY_MATRIX_ACCESS_TOKEN_FILE="+tokFile, "SYNBAK_NOTIFY_HEALTH_GRACE=0")
	p := s.startAgent(t)
	waitFor(t, 2*time.Minute, "healthy after the first base backup", func() bool {
		st := s.status(t)
		return st.Healthy && st.Backups != nil && st.Backups.Count == 1
	})
	hs.Messages(t, admin, room, "@synbakbot:localhost", 2, 30*time.Second)
	// The watcher looks every 5 s: a repeated message would have come.
	msgs := hs.Messages(t, admin, room, "@synbakbot:localhost", 3, 6*time.Second)
	for i, m := range msgs {
		t.Logf("message %d: %s", i, m.Content.Body)
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0].Content.Body, "RED") || !strings.Contains(msgs[0].Content.Body, "base backups: none complete yet") ||
		!strings.Contains(msgs[1].Content.Body, "green") || msgs[0].Content.MsgType != "m.notice" {
		t.Errorf("want a red message naming the missing backup, then a green one; got %d messages", len(msgs))
	}
	if _, err := p.stop(t, syscall.SIGTERM, 15*time.Second); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	logb, _ := os.ReadFile(p.logFile)
	if strings.Contains(string(logb), bot) {
		t.Error("the access token appears in the agent's log")
	}
}

// TestStatusSendsCredentials: `synbak status` reaches an agent behind
// http.auth_token_file (or, without a token, http.basic_auth_file).
func TestStatusSendsCredentials(t *testing.T) {
	ag := agent.New(agent.Options{Page: agent.PageOptions{Auth: &agent.Auth{Token: "tok-1", Users: map[string]string{"ops": "pw-2"}}}})
	srv := httptest.NewServer(ag.Handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	tok, basic := filepath.Join(dir, "token"), filepath.Join(dir, "users")
	os.WriteFile(tok, []byte("tok-1\n"), 0o600)
	os.WriteFile(basic, []byte("ops:pw-2\n"), 0o600)
	ctx := context.Background()
	if _, err := fetchAgentStatus(ctx, &config.Config{}, addr); err == nil {
		t.Error("no credentials: the agent answered")
	}
	for _, c := range []config.HTTP{{AuthTokenFile: tok}, {BasicAuthFile: basic}} {
		if st, err := fetchAgentStatus(ctx, &config.Config{HTTP: c}, addr); err != nil || st == nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
