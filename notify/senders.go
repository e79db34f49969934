package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Text renders ev as plain text: the title, then one "- " line per detail.
func Text(ev Event) string {
	var sb strings.Builder
	sb.WriteString(prefix(ev))
	sb.WriteString(ev.Title)
	for _, l := range ev.Lines {
		sb.WriteString("\n- ")
		sb.WriteString(l)
	}
	return sb.String()
}

// HTML renders ev as the HTML of a Matrix formatted_body.
func HTML(ev Event) string {
	var sb strings.Builder
	sb.WriteString("<p><strong>")
	sb.WriteString(html.EscapeString(prefix(ev) + ev.Title))
	sb.WriteString("</strong></p>")
	if len(ev.Lines) > 0 {
		sb.WriteString("<ul>")
		for _, l := range ev.Lines {
			sb.WriteString("<li>" + html.EscapeString(l) + "</li>")
		}
		sb.WriteString("</ul>")
	}
	return sb.String()
}

func prefix(ev Event) string {
	mark := map[string]string{SeverityCritical: "🔴 ", SeverityWarning: "🟠 ", SeverityOK: "🟢 ", SeverityInfo: "ℹ️ "}[ev.Severity]
	if ev.Server != "" {
		return mark + "synbak (" + ev.Server + "): "
	}
	return mark + "synbak: "
}

// Matrix posts events to a room as m.notice messages through the
// client-server API, as the user whose access token it holds (a bot user
// that has joined the room).
type Matrix struct {
	// Homeserver is the client API's base URL (https://matrix.example.org).
	Homeserver string
	// RoomID is the room's ID (!abc:example.org).
	RoomID string
	// Token is the access token (a secret: never logged).
	Token string
	// Client makes the requests (nil: http.DefaultClient; the notifier
	// bounds each attempt with its own timeout).
	Client *http.Client
}

// Name implements Sender.
func (m *Matrix) Name() string { return "matrix" }

// Send implements Sender: PUT /_matrix/client/v3/rooms/{roomId}/send/
// m.room.message/{txnId}. The transaction ID is the event's ID, so that a
// retried request after a lost answer is not posted twice (the homeserver
// answers a repeated transaction with the first event's ID).
func (m *Matrix) Send(ctx context.Context, ev Event) error {
	body, err := json.Marshal(map[string]string{
		"msgtype": "m.notice", "body": Text(ev),
		"format": "org.matrix.custom.html", "formatted_body": HTML(ev),
	})
	if err != nil {
		return err
	}
	u := strings.TrimRight(m.Homeserver, "/") + "/_matrix/client/v3/rooms/" + url.PathEscape(m.RoomID) +
		"/send/m.room.message/" + url.PathEscape(ev.ID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("matrix: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+m.Token)
	req.Header.Set("Content-Type", "application/json")
	return do(m.Client, req, "matrix room "+m.RoomID)
}

// Webhook posts each event as a JSON object (Event's fields plus "text",
// the plain-text rendering) to URL.
type Webhook struct {
	URL string
	// Header is added to every request (e.g. Authorization); its values
	// are secrets and never logged.
	Header http.Header
	Client *http.Client
}

// Name implements Sender.
func (w *Webhook) Name() string { return "webhook" }

// Send implements Sender.
func (w *Webhook) Send(ctx context.Context, ev Event) error {
	body, err := json.Marshal(struct {
		Event
		Text string `json:"text"`
	}{ev, Text(ev)})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	for k, vs := range w.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", ev.ID)
	return do(w.Client, req, "webhook "+redactURL(w.URL))
}

func do(c *http.Client, req *http.Request, what string) error {
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		// *url.Error carries the URL, which holds no secret here (the
		// Matrix token travels in a header), but redact the query anyway.
		if ue, ok := err.(*url.Error); ok {
			return fmt.Errorf("%s: %s: %w", what, req.Method, ue.Err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	err = fmt.Errorf("%s: HTTP %d: %s", what, resp.StatusCode, strings.TrimSpace(string(msg)))
	if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout {
		return fmt.Errorf("%w: %w", ErrPermanent, err)
	}
	return err
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}
