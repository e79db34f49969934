package pgtest

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// SynapseSchemaVersion is the version CreateSynapseSchema records in
// schema_version.
const SynapseSchemaVersion = 88

// synapseSchema is a Synapse-shaped schema written for these tests (not
// Synapse's own): the tables a backup of a homeserver meets first, with
// plausible columns.
const synapseSchema = `
CREATE TABLE schema_version (
    lock char(1) NOT NULL DEFAULT 'X' UNIQUE CHECK (lock = 'X'),
    version integer NOT NULL,
    upgraded boolean NOT NULL
);
CREATE TABLE schema_compat_version (
    lock char(1) NOT NULL DEFAULT 'X' UNIQUE CHECK (lock = 'X'),
    compat_version integer NOT NULL
);
CREATE TABLE users (
    name text PRIMARY KEY,
    password_hash text,
    creation_ts bigint,
    admin smallint NOT NULL DEFAULT 0,
    upgrade_ts bigint,
    is_guest smallint NOT NULL DEFAULT 0,
    appservice_id text,
    consent_version text,
    consent_server_notice_sent text,
    user_type text,
    deactivated smallint NOT NULL DEFAULT 0,
    shadow_banned boolean,
    consent_ts bigint,
    approved boolean,
    locked boolean NOT NULL DEFAULT false,
    suspended boolean NOT NULL DEFAULT false
);
CREATE TABLE devices (
    user_id text NOT NULL,
    device_id text NOT NULL,
    display_name text,
    last_seen bigint,
    ip text,
    user_agent text,
    hidden boolean DEFAULT false,
    CONSTRAINT device_uniqueness UNIQUE (user_id, device_id)
);
CREATE TABLE rooms (
    room_id text PRIMARY KEY,
    is_public boolean,
    creator text,
    room_version text,
    has_auth_chain_index boolean
);
CREATE TABLE events (
    topological_ordering bigint NOT NULL,
    event_id text NOT NULL UNIQUE,
    type text NOT NULL,
    room_id text NOT NULL,
    content text,
    unrecognized_keys text,
    processed boolean NOT NULL,
    outlier boolean NOT NULL,
    depth bigint NOT NULL DEFAULT 0,
    origin_server_ts bigint,
    received_ts bigint,
    sender text,
    contains_url boolean,
    instance_name text,
    stream_ordering bigint UNIQUE,
    state_key text,
    rejection_reason text
);
CREATE INDEX events_order_room ON events (room_id, topological_ordering, stream_ordering);
CREATE INDEX events_ts ON events (origin_server_ts, stream_ordering);
CREATE TABLE event_json (
    event_id text NOT NULL UNIQUE,
    room_id text NOT NULL,
    internal_metadata text NOT NULL,
    json text NOT NULL,
    format_version integer
);
CREATE TABLE event_edges (
    event_id text NOT NULL,
    prev_event_id text NOT NULL,
    room_id text,
    is_state boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX event_edges_event_id_prev_event_id_idx ON event_edges (event_id, prev_event_id);
CREATE INDEX ev_edges_prev_id ON event_edges (prev_event_id);
CREATE TABLE state_events (
    event_id text NOT NULL UNIQUE,
    room_id text NOT NULL,
    type text NOT NULL,
    state_key text NOT NULL,
    prev_state text
);
CREATE TABLE room_memberships (
    event_id text NOT NULL UNIQUE,
    user_id text NOT NULL,
    sender text NOT NULL,
    room_id text NOT NULL,
    membership text NOT NULL,
    forgotten integer DEFAULT 0,
    display_name text,
    avatar_url text,
    event_stream_ordering bigint
);
CREATE SEQUENCE state_group_id_seq;
CREATE TABLE state_groups (
    id bigint PRIMARY KEY,
    room_id text NOT NULL,
    event_id text NOT NULL
);
CREATE TABLE state_groups_state (
    state_group bigint,
    room_id text,
    type text,
    state_key text,
    event_id text
);
CREATE INDEX state_groups_state_type_idx ON state_groups_state (state_group, type, state_key);
CREATE TABLE event_to_state_groups (
    event_id text NOT NULL UNIQUE,
    state_group bigint NOT NULL
);
CREATE TABLE local_media_repository (
    media_id text,
    media_type text,
    media_length bigint,
    created_ts bigint,
    upload_name text,
    user_id text,
    quarantined_by text,
    url_cache text,
    last_access_ts bigint,
    safe_from_quarantine boolean NOT NULL DEFAULT false,
    authenticated boolean NOT NULL DEFAULT false,
    sha256 text,
    UNIQUE (media_id)
);
CREATE INDEX local_media_repository_sha256 ON local_media_repository (sha256) WHERE sha256 IS NOT NULL;
CREATE TABLE local_media_repository_thumbnails (
    media_id text,
    thumbnail_width integer,
    thumbnail_height integer,
    thumbnail_type text,
    thumbnail_method text,
    thumbnail_length integer,
    UNIQUE (media_id, thumbnail_width, thumbnail_height, thumbnail_type, thumbnail_method)
);
CREATE TABLE e2e_device_keys_json (
    user_id text NOT NULL,
    device_id text NOT NULL,
    ts_added_ms bigint NOT NULL,
    key_json text NOT NULL,
    CONSTRAINT e2e_device_keys_json_uniqueness UNIQUE (user_id, device_id)
);
CREATE TABLE e2e_one_time_keys_json (
    user_id text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id text NOT NULL,
    ts_added_ms bigint NOT NULL,
    key_json text NOT NULL,
    CONSTRAINT e2e_one_time_keys_json_uniqueness UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE TABLE e2e_fallback_keys_json (
    user_id text NOT NULL,
    device_id text NOT NULL,
    algorithm text NOT NULL,
    key_id text NOT NULL,
    key_json text NOT NULL,
    used boolean NOT NULL DEFAULT false,
    CONSTRAINT e2e_fallback_keys_json_uniqueness UNIQUE (user_id, device_id, algorithm)
);
`

// CreateSynapseSchema creates a Synapse-shaped schema in dbname (which must
// exist, see CreateDB): users, devices, rooms, events, event_json,
// event_edges, state_groups(_state), local_media_repository, the e2e key
// tables and schema_version, among others.
func (c *Cluster) CreateSynapseSchema(t testing.TB, dbname string) {
	t.Helper()
	c.Exec(t, dbname, synapseSchema+fmt.Sprintf(
		"INSERT INTO schema_version (version, upgraded) VALUES (%d, true);\n"+
			"INSERT INTO schema_compat_version (compat_version) VALUES (%d);\n",
		SynapseSchemaVersion, SynapseSchemaVersion-5))
}

// FillSynapse inserts n events (with event_json bodies of realistic sizes: a
// few hundred bytes to a few kB, random ids, text and some encrypted
// payloads), plus users and their devices, rooms, state groups, media rows
// and one-time and fallback keys in proportion. It may be called again to
// add more.
func (c *Cluster) FillSynapse(t testing.TB, dbname string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(dbname))
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", dbname, err)
	}
	defer closeConn(conn)
	if err := fillSynapse(ctx, conn, n); err != nil {
		t.Fatalf("pgtest: fill Synapse tables in %s: %v", dbname, err)
	}
}

const serverName = "example.org"

type fillUser struct{ id, device string }

type fillRoom struct {
	id         string
	stateGroup int64
	depth      int64
	last       string // event id of the newest event
}

func fillSynapse(ctx context.Context, conn *pgx.Conn, n int) error {
	now := time.Now().UnixMilli()
	var stream, group int64
	err := conn.QueryRow(ctx, "SELECT coalesce(max(stream_ordering), 0), (SELECT coalesce(max(id), 0) FROM state_groups) FROM events").Scan(&stream, &group)
	if err != nil {
		return err
	}

	users := make([]fillUser, max(3, n/100))
	for i := range users {
		users[i] = fillUser{id: "@" + randLower(10) + ":" + serverName, device: randUpper(10)}
	}
	rooms := make([]*fillRoom, max(2, n/500))
	for i := range rooms {
		group++
		rooms[i] = &fillRoom{id: "!" + randLetters(18) + ":" + serverName, stateGroup: group}
	}
	if err := copyRows(ctx, conn, "users", []string{"name", "password_hash", "creation_ts", "admin", "user_type", "approved"}, len(users),
		func(i int) []any {
			return []any{users[i].id, "$2b$12$" + randB64(40), now/1000 - rand.Int64N(1e8), int16(boolInt(i == 0)), nil, true}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "devices", []string{"user_id", "device_id", "display_name", "last_seen", "ip", "user_agent"}, len(users),
		func(i int) []any {
			return []any{users[i].id, users[i].device, "Element on " + pick(platforms), now - rand.Int64N(1e9),
				fmt.Sprintf("192.0.2.%d", rand.IntN(250)+1), "Mozilla/5.0 (X11; Linux x86_64) Element/1." + fmt.Sprint(rand.IntN(12))}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "rooms", []string{"room_id", "is_public", "creator", "room_version", "has_auth_chain_index"}, len(rooms),
		func(i int) []any {
			return []any{rooms[i].id, rand.IntN(4) == 0, pickUser(users).id, "10", true}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "state_groups", []string{"id", "room_id", "event_id"}, len(rooms),
		func(i int) []any { return []any{rooms[i].stateGroup, rooms[i].id, eventID()} }); err != nil {
		return err
	}

	const batch = 5000
	tsStep := int64(1)
	if n > 0 {
		tsStep = max(1, 30*24*3600*1000/int64(n)) // spread over a month
	}
	ts := now - int64(n)*tsStep
	for done := 0; done < n; done += batch {
		m := min(batch, n-done)
		evs := make([]fillEvent, m)
		for i := range evs {
			stream++
			ts += rand.Int64N(2*tsStep) + 1
			evs[i] = newFillEvent(rooms[rand.IntN(len(rooms))], pickUser(users), stream, ts)
		}
		if err := copyEvents(ctx, conn, evs); err != nil {
			return err
		}
	}

	media := max(1, n/20)
	if err := copyRows(ctx, conn, "local_media_repository",
		[]string{"media_id", "media_type", "media_length", "created_ts", "upload_name", "user_id", "last_access_ts", "authenticated", "sha256"}, media,
		func(i int) []any {
			mt := pick(mediaTypes)
			size := int64(math.Exp(rand.Float64()*math.Log(20e6/500))) * 500
			created := now - rand.Int64N(1e10)
			return []any{randLetters(24), mt, size, created, randLower(8) + extension(mt), pickUser(users).id,
				created + rand.Int64N(1e9), rand.IntN(2) == 0, randHex(32)}
		}); err != nil {
		return err
	}
	keys := max(5, n/10)
	if err := copyRows(ctx, conn, "e2e_one_time_keys_json",
		[]string{"user_id", "device_id", "algorithm", "key_id", "ts_added_ms", "key_json"}, keys,
		func(i int) []any {
			u := pickUser(users)
			return []any{u.id, u.device, "signed_curve25519", "AAAAA" + randB64(6), now - rand.Int64N(1e9), keyJSON(u)}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "e2e_fallback_keys_json",
		[]string{"user_id", "device_id", "algorithm", "key_id", "key_json", "used"}, len(users),
		func(i int) []any {
			u := users[i]
			return []any{u.id, u.device, "signed_curve25519", "AAAAQ" + randB64(6), keyJSON(u), false}
		}); err != nil {
		return err
	}
	return nil
}

// fillEvent is one generated event with the rows it produces.
type fillEvent struct {
	room                   *fillRoom
	id, typ, sender        string
	stateKey               *string
	stream, depth, ts      int64
	prev, json, membership string
}

var (
	platforms  = []string{"Linux", "Android", "iOS", "macOS", "Windows", "Firefox", "Chrome"}
	mediaTypes = []string{"image/png", "image/jpeg", "image/jpeg", "image/gif", "video/mp4", "application/pdf", "audio/ogg"}
	words      = strings.Fields(`the be to of and a in that have I it for not on with he as you do at this
but his by from they we say her she or an will my one all would there their what so up out if about
who get which go me when make can like time no just him know take people into year your good some could
them see other than then now look only come its over think also back after use two how our work first
well way even new want because any these give day most us server room backup matrix synapse restore
message deploy tonight coffee meeting lunch release bug fix database postgres federation key device
encryption verify homeserver admin media upload thanks sure okay maybe tomorrow yesterday weekend 👍 🎉`)
)

func newFillEvent(r *fillRoom, u fillUser, stream, ts int64) fillEvent {
	r.depth++
	e := fillEvent{room: r, id: eventID(), sender: u.id, stream: stream, depth: r.depth, ts: ts, prev: r.last}
	r.last = e.id
	var content any
	switch p := rand.IntN(100); {
	case p < 70:
		e.typ = "m.room.message"
		body := randText(int(math.Exp(math.Log(5) + rand.Float64()*(math.Log(3000)-math.Log(5)))))
		c := map[string]any{"msgtype": "m.text", "body": body}
		if rand.IntN(5) == 0 {
			c["format"] = "org.matrix.custom.html"
			c["formatted_body"] = "<p>" + strings.ReplaceAll(body, ". ", ".</p><p>") + "</p>"
		}
		content = c
	case p < 85:
		e.typ = "m.room.encrypted"
		content = map[string]any{
			"algorithm":  "m.megolm.v1.aes-sha2",
			"ciphertext": randB64(100 + rand.IntN(2500)),
			"device_id":  u.device,
			"sender_key": randB64(43),
			"session_id": randB64(43),
		}
	case p < 93:
		e.typ = "m.reaction"
		content = map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": eventID(), "key": pick([]string{"👍", "😂", "🎉", "❤️"})}}
	default:
		e.typ = "m.room.member"
		sk := u.id
		e.stateKey = &sk
		e.membership = pick([]string{"join", "join", "join", "leave", "invite"})
		content = map[string]any{"membership": e.membership, "displayname": randText(8 + rand.IntN(12)), "avatar_url": "mxc://" + serverName + "/" + randLetters(24)}
	}
	prev := []string{}
	if e.prev != "" {
		prev = append(prev, e.prev)
	}
	body := map[string]any{
		"auth_events":      []string{eventID(), eventID(), eventID()},
		"prev_events":      prev,
		"type":             e.typ,
		"room_id":          r.id,
		"sender":           u.id,
		"content":          content,
		"depth":            e.depth,
		"hashes":           map[string]string{"sha256": randB64(43)},
		"signatures":       map[string]map[string]string{serverName: {"ed25519:a_" + randLetters(4): randB64(86)}},
		"origin":           serverName,
		"origin_server_ts": ts,
		"unsigned":         map[string]any{"age_ts": ts},
	}
	if e.stateKey != nil {
		body["state_key"] = *e.stateKey
	}
	b, _ := json.Marshal(body)
	e.json = string(b)
	return e
}

func copyEvents(ctx context.Context, conn *pgx.Conn, evs []fillEvent) error {
	if err := copyRows(ctx, conn, "events", []string{"topological_ordering", "event_id", "type", "room_id", "processed", "outlier",
		"depth", "origin_server_ts", "received_ts", "sender", "contains_url", "instance_name", "stream_ordering", "state_key"}, len(evs),
		func(i int) []any {
			e := evs[i]
			return []any{e.depth, e.id, e.typ, e.room.id, true, false, e.depth, e.ts, e.ts + rand.Int64N(500), e.sender, false, "master", e.stream, e.stateKey}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "event_json", []string{"event_id", "room_id", "internal_metadata", "json", "format_version"}, len(evs),
		func(i int) []any {
			return []any{evs[i].id, evs[i].room.id, `{"txn_id":"m` + fmt.Sprint(evs[i].ts) + `.0"}`, evs[i].json, 3}
		}); err != nil {
		return err
	}
	var edges, state []fillEvent
	for _, e := range evs {
		if e.prev != "" {
			edges = append(edges, e)
		}
		if e.stateKey != nil {
			state = append(state, e)
		}
	}
	if err := copyRows(ctx, conn, "event_edges", []string{"event_id", "prev_event_id", "room_id", "is_state"}, len(edges),
		func(i int) []any { return []any{edges[i].id, edges[i].prev, edges[i].room.id, false} }); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "event_to_state_groups", []string{"event_id", "state_group"}, len(evs),
		func(i int) []any { return []any{evs[i].id, evs[i].room.stateGroup} }); err != nil {
		return err
	}
	// state_groups_state dominates real databases: a row per event here,
	// and more for state events.
	if err := copyRows(ctx, conn, "state_groups_state", []string{"state_group", "room_id", "type", "state_key", "event_id"}, len(evs),
		func(i int) []any {
			return []any{evs[i].room.stateGroup, evs[i].room.id, "m.room.member", evs[i].sender, evs[i].id}
		}); err != nil {
		return err
	}
	if err := copyRows(ctx, conn, "state_events", []string{"event_id", "room_id", "type", "state_key"}, len(state),
		func(i int) []any { return []any{state[i].id, state[i].room.id, state[i].typ, *state[i].stateKey} }); err != nil {
		return err
	}
	return copyRows(ctx, conn, "room_memberships", []string{"event_id", "user_id", "sender", "room_id", "membership", "event_stream_ordering"}, len(state),
		func(i int) []any {
			e := state[i]
			return []any{e.id, *e.stateKey, e.sender, e.room.id, e.membership, e.stream}
		})
}

func copyRows(ctx context.Context, conn *pgx.Conn, table string, cols []string, n int, row func(i int) []any) error {
	if n == 0 {
		return nil
	}
	_, err := conn.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromSlice(n, func(i int) ([]any, error) { return row(i), nil }))
	if err != nil {
		return fmt.Errorf("copy into %s: %w", table, err)
	}
	return nil
}

func keyJSON(u fillUser) string {
	b, _ := json.Marshal(map[string]any{
		"key":        randB64(43),
		"signatures": map[string]map[string]string{u.id: {"ed25519:" + u.device: randB64(86)}},
	})
	return string(b)
}

func pick[T any](s []T) T { return s[rand.IntN(len(s))] }

func pickUser(users []fillUser) fillUser { return pick(users) }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func extension(mediaType string) string {
	_, sub, _ := strings.Cut(mediaType, "/")
	return "." + sub
}

// eventID returns a room-version-4+ style event id: $ and 43 characters of
// URL-safe base64.
func eventID() string { return "$" + base64.RawURLEncoding.EncodeToString(randBytes(32)) }

func randBytes(n int) []byte {
	b := make([]byte, (n+7)/8*8)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rand.Uint64())
	}
	return b[:n]
}

// randB64 returns n characters of unpadded standard base64 from random bytes.
func randB64(n int) string {
	return base64.RawStdEncoding.EncodeToString(randBytes(n*3/4 + 3))[:n]
}

func randHex(nbytes int) string { return hex.EncodeToString(randBytes(nbytes)) }

func randFrom(alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

func randLower(n int) string { return randFrom("abcdefghijklmnopqrstuvwxyz", n) }

func randUpper(n int) string { return randFrom("ABCDEFGHIJKLMNOPQRSTUVWXYZ", n) }

func randLetters(n int) string {
	return randFrom("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", n)
}

// randText returns about n characters of chat-like text.
func randText(n int) string {
	var b strings.Builder
	sentence := 0
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		w := pick(words)
		switch r := rand.IntN(20); {
		case r == 0:
			w = randLower(3 + rand.IntN(8)) // names, typos, jargon
		case r == 1:
			w = fmt.Sprint(rand.IntN(10000))
		}
		if sentence == 0 && len(w) > 0 && w[0] >= 'a' && w[0] <= 'z' {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		sentence++
		if rand.IntN(12) == 0 {
			b.WriteString(pick([]string{".", ".", "?", "!"}))
			sentence = 0
		}
	}
	return b.String()
}
