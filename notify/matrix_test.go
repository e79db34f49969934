package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/agent"
)

// dendriteBin finds a Dendrite tool: on PATH or in $(go env GOPATH)/bin,
// where .ci/run installs them. A missing one fails the test under CI and
// skips it elsewhere.
func dendriteBin(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	p := filepath.Join(gopath, "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found (install: go install github.com/matrix-org/dendrite/cmd/%s@v0.13.8)", name, name)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// homeserver is a Dendrite started for a test, with SQLite databases in a
// temporary directory, listening on a free loopback port.
type homeserver struct {
	url string
}

func startDendrite(t *testing.T) *homeserver {
	t.Helper()
	dendrite, keys, conf := dendriteBin(t, "dendrite"), dendriteBin(t, "generate-keys"), dendriteBin(t, "generate-config")
	dir := t.TempDir()
	if out, err := exec.Command(keys, "--private-key", filepath.Join(dir, "matrix_key.pem")).CombinedOutput(); err != nil {
		t.Fatalf("generate-keys: %v\n%s", err, out)
	}
	cfg, err := exec.Command(conf, "-ci", "-dir", dir, "-server", "localhost").Output()
	if err != nil {
		t.Fatalf("generate-config: %v", err)
	}
	cfg = bytes.ReplaceAll(cfg, []byte("private_key: matrix_key.pem"), []byte("private_key: "+filepath.Join(dir, "matrix_key.pem")))
	if err := os.WriteFile(filepath.Join(dir, "dendrite.yaml"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logf, err := os.Create(filepath.Join(dir, "dendrite.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dendrite, "-config", filepath.Join(dir, "dendrite.yaml"), "-http-bind-address", addr, "-really-enable-open-registration")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "dendrite.log"))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("dendrite log (tail):\n%s", b)
		}
	})
	hs := &homeserver{url: "http://" + addr}
	deadline := time.Now().Add(45 * time.Second)
	for {
		resp, err := http.Get(hs.url + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-exited:
			t.Fatal("dendrite exited")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("dendrite did not answer within 45 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return hs
}

// call makes a client-API request and decodes the answer into out.
func (hs *homeserver) call(t *testing.T, method, path, token string, body, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, hs.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// user registers a user and logs in (as README tells an admin to get the
// bot's token: /login), returning the access token.
func (hs *homeserver) user(t *testing.T, name string) string {
	t.Helper()
	hs.call(t, "POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "password": "pw-" + name + "-long", "auth": map[string]string{"type": "m.login.dummy"}}, nil)
	var login struct {
		AccessToken string `json:"access_token"`
	}
	hs.call(t, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": name}, "password": "pw-" + name + "-long"}, &login)
	if login.AccessToken == "" {
		t.Fatal("no access token")
	}
	return login.AccessToken
}

type roomEvent struct {
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		MsgType       string `json:"msgtype"`
		Body          string `json:"body"`
		Format        string `json:"format"`
		FormattedBody string `json:"formatted_body"`
	} `json:"content"`
}

// TestMatrixRedGreen posts the notifications of health turning red and
// back green to a room of a real homeserver (Dendrite) and reads the room
// back as another member: each message arrives once, in order, as an
// m.notice with the problems in its plain and HTML bodies. A delivery
// retried with the same event (as after a lost answer) is not posted
// twice.
func TestMatrixRedGreen(t *testing.T) {
	hs := startDendrite(t)
	admin := hs.user(t, "admin")
	bot := hs.user(t, "synbakbot")
	var room struct {
		RoomID string `json:"room_id"`
	}
	hs.call(t, "POST", "/_matrix/client/v3/createRoom", admin, map[string]any{"name": "backups", "invite": []string{"@synbakbot:localhost"}}, &room)
	hs.call(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID), bot, map[string]any{}, nil)

	m := &Matrix{Homeserver: hs.url, RoomID: room.RoomID, Token: bot}
	n := New(Options{Senders: []Sender{m}, RetryDelay: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()

	red := agent.Status{Healthy: false, Problems: []string{"wal: the receiver has not been streaming for 2m0s: connection refused", "base backups: none complete yet (no restore is possible)"}}
	green := agent.Status{Healthy: true}
	script := []agent.Status{green, red, red, red, green, green}
	w := &Watch{Notifier: n, Server: "example.org"}
	now := time.Now()
	for i, st := range script {
		w.check(st, now.Add(time.Duration(i)*time.Second), i == 0)
	}
	read := func(want int, wait time.Duration) []roomEvent {
		t.Helper()
		var notices []roomEvent
		deadline := time.Now().Add(wait)
		for {
			var msgs struct {
				Chunk []roomEvent `json:"chunk"`
			}
			hs.call(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/messages?dir=b&limit=100", admin, nil, &msgs)
			notices = notices[:0]
			for i := len(msgs.Chunk) - 1; i >= 0; i-- { // newest first: reverse
				if e := msgs.Chunk[i]; e.Type == "m.room.message" && e.Sender == "@synbakbot:localhost" {
					notices = append(notices, e)
				}
			}
			if len(notices) >= want || time.Now().After(deadline) {
				return notices
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if got := read(2, 30*time.Second); len(got) != 2 {
		t.Fatalf("got %d messages from the bot, want 2 (red, green)", len(got))
	}
	// A retried delivery of one event: the same transaction ID.
	dup := Event{ID: "synbak-test-retry", Kind: KindTest, Severity: SeverityInfo, Title: "retried delivery"}
	for range 2 {
		if err := m.Send(ctx, dup); err != nil {
			t.Fatal(err)
		}
	}
	read(3, 30*time.Second)
	notices := read(4, 2*time.Second) // a fourth (the retry posted twice) must not come
	for i, e := range notices {
		t.Logf("message %d: %s", i, e.Content.Body)
	}
	if len(notices) != 3 {
		t.Fatalf("got %d messages from the bot, want 3 (red, green, and the retried one once)", len(notices))
	}
	r, g := notices[0], notices[1]
	if !strings.Contains(r.Content.Body, "RED") || !strings.Contains(r.Content.Body, red.Problems[0]) || !strings.Contains(r.Content.Body, red.Problems[1]) {
		t.Errorf("first message is not the red one with the problems: %q", r.Content.Body)
	}
	if !strings.Contains(r.Content.FormattedBody, "<li>"+red.Problems[1]+"</li>") || r.Content.Format != "org.matrix.custom.html" {
		t.Errorf("red message's HTML: %q (%s)", r.Content.FormattedBody, r.Content.Format)
	}
	if !strings.Contains(g.Content.Body, "green") {
		t.Errorf("second message is not the green one: %q", g.Content.Body)
	}
	for _, e := range notices {
		if e.Content.MsgType != "m.notice" {
			t.Errorf("msgtype %q, want m.notice", e.Content.MsgType)
		}
	}
	if !strings.Contains(notices[2].Content.Body, "retried delivery") {
		t.Errorf("third message: %q", notices[2].Content.Body)
	}
}
