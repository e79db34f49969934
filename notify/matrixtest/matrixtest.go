// Package matrixtest starts a real Matrix homeserver, Dendrite, for tests
// (imported by tests only): SQLite databases in a temporary directory, a
// free loopback port, open registration. The binaries (dendrite,
// generate-keys, generate-config) come from PATH or $(go env GOPATH)/bin;
// a missing one fails the test when CI is set and skips it otherwise.
package matrixtest

import (
	"bytes"
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
)

// Version is the Dendrite release .ci/run installs.
const Version = "v0.13.8"

func bin(t testing.TB, name string) string {
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
	msg := fmt.Sprintf("%s not found (install: go install github.com/matrix-org/dendrite/cmd/%s@%s)", name, name, Version)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Server is a running homeserver; its server name is "localhost".
type Server struct {
	URL string
}

// Start starts Dendrite; a t.Cleanup stops it.
func Start(t testing.TB) *Server {
	t.Helper()
	dendrite, keys, conf := bin(t, "dendrite"), bin(t, "generate-keys"), bin(t, "generate-config")
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
	s := &Server{URL: "http://" + addr}
	deadline := time.Now().Add(45 * time.Second)
	for {
		resp, err := http.Get(s.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
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
}

// Call makes a client-API request and decodes the answer into out.
func (s *Server) Call(t testing.TB, method, path, token string, body, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.URL+path, rd)
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

// User registers a user and logs in (with /login, as the README tells an
// admin to get the bot's token), returning the access token.
func (s *Server) User(t testing.TB, name string) string {
	t.Helper()
	s.Call(t, "POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "password": "pw-" + name + "-long", "auth": map[string]string{"type": "m.login.dummy"}}, nil)
	var login struct {
		AccessToken string `json:"access_token"`
	}
	s.Call(t, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": name}, "password": "pw-" + name + "-long"}, &login)
	if login.AccessToken == "" {
		t.Fatal("no access token")
	}
	return login.AccessToken
}

// Room has owner create a room, invite member and member join; it returns
// the room ID.
func (s *Server) Room(t testing.TB, ownerToken, memberToken, memberID string) string {
	t.Helper()
	var room struct {
		RoomID string `json:"room_id"`
	}
	s.Call(t, "POST", "/_matrix/client/v3/createRoom", ownerToken, map[string]any{"name": "backups", "invite": []string{memberID}}, &room)
	s.Call(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID), memberToken, map[string]any{}, nil)
	return room.RoomID
}

// Event is a room message as the client API returns it.
type Event struct {
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	Content struct {
		MsgType       string `json:"msgtype"`
		Body          string `json:"body"`
		Format        string `json:"format"`
		FormattedBody string `json:"formatted_body"`
	} `json:"content"`
}

// Messages reads the room's m.room.message events from sender, oldest
// first, polling until there are at least want of them or wait has passed.
func (s *Server) Messages(t testing.TB, token, roomID, sender string, want int, wait time.Duration) []Event {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var msgs struct {
			Chunk []Event `json:"chunk"`
		}
		s.Call(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=100", token, nil, &msgs)
		var out []Event
		for i := len(msgs.Chunk) - 1; i >= 0; i-- { // newest first: reverse
			if e := msgs.Chunk[i]; e.Type == "m.room.message" && e.Sender == sender {
				out = append(out, e)
			}
		}
		if len(out) >= want || time.Now().After(deadline) {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}
