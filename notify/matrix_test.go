package notify

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/notify/matrixtest"
)

// TestMatrixRedGreen posts the notifications of health turning red and
// back green to a room of a real homeserver (Dendrite) and reads the room
// back as another member: each message arrives once, in order, as an
// m.notice with the problems in its plain and HTML bodies. A delivery
// retried with the same event (as after a lost answer) is not posted
// twice.
func TestMatrixRedGreen(t *testing.T) {
	hs := matrixtest.Start(t)
	admin := hs.User(t, "admin")
	bot := hs.User(t, "synbakbot")
	room := hs.Room(t, admin, bot, "@synbakbot:localhost")

	m := &Matrix{Homeserver: hs.URL, RoomID: room, Token: bot}
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
	if got := hs.Messages(t, admin, room, "@synbakbot:localhost", 2, 30*time.Second); len(got) != 2 {
		t.Fatalf("got %d messages from the bot, want 2 (red, green)", len(got))
	}
	// A retried delivery of one event: the same transaction ID.
	dup := Event{ID: "synbak-test-retry", Kind: KindTest, Severity: SeverityInfo, Title: "retried delivery"}
	for range 2 {
		if err := m.Send(ctx, dup); err != nil {
			t.Fatal(err)
		}
	}
	hs.Messages(t, admin, room, "@synbakbot:localhost", 3, 30*time.Second)
	notices := hs.Messages(t, admin, room, "@synbakbot:localhost", 4, 2*time.Second) // a fourth (the retry posted twice) must not come
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
