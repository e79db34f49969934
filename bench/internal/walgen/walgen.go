// Package walgen writes the benchmarks' WAL: pgbench with full-page
// writes and Synapse-like event rows (bench/walstream, bench/restore).
package walgen

import (
	"github.com/synbak/synbak/bench/internal/benchpg"

	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"
)

// WALLSN returns an LSN expression's value as a byte position.
func WALLSN(ctx context.Context, conn *pgx.Conn, expr string) (int64, error) {
	var v int64
	err := conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff("+expr+", '0/0')::bigint").Scan(&v)
	return v, err
}

// Pgbench runs pgbench (as this user, over TCP) and returns its output.
func Pgbench(ctx context.Context, c *benchpg.Cluster, env []string, args ...string) (string, error) {
	base := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin, "pgbench"), append(append(base, args...), "postgres")...)
	cmd.Env = benchpg.CleanEnv(env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, Tail(out, 2000))
	}
	return string(out), nil
}

func Tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

var TPSRE = regexp.MustCompile(`tps = ([0-9.]+)`)

// Result describes the generated WAL.
type Result struct {
	Mode          string  `json:"mode"`
	PgbenchBytes  int64   `json:"pgbench_wal_bytes"`
	SynapseBytes  int64   `json:"synapse_wal_bytes"`
	PgbenchScale  int     `json:"pgbench_scale"`
	SynapseRows   int64   `json:"synapse_rows"`
	Seconds       float64 `json:"seconds"`
	SampleZstdRat float64 `json:"synapse_rows_zstd2_ratio,omitempty"`
}

// Generate writes about total bytes of WAL: pgbench (init, then timed runs
// after a checkpoint so that updates log full-page images as in production)
// and/or Synapse-like event rows, by mode.
func Generate(ctx context.Context, c *benchpg.Cluster, conn *pgx.Conn, mode string, total int64, scale int) (Result, error) {
	res := Result{Mode: mode}
	t0 := time.Now()
	var pgShare float64
	switch mode {
	case "pgbench":
		pgShare = 1
	case "synapse":
		pgShare = 0
	default:
		pgShare = 0.5
	}
	start, err := WALLSN(ctx, conn, "pg_current_wal_lsn()")
	if err != nil {
		return res, err
	}
	if pgShare > 0 {
		target := int64(float64(total) * pgShare)
		if scale <= 0 {
			// pgbench -i writes about 16 MB of WAL per scale unit; let the
			// init produce ~60% of the share and timed runs the rest.
			scale = max(1, int(float64(target)*0.6/16e6))
		}
		res.PgbenchScale = scale
		Logf("pgbench -i -s %d", scale)
		if _, err := Pgbench(ctx, c, nil, "-i", "-q", "-s", strconv.Itoa(scale)); err != nil {
			return res, err
		}
		if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
			return res, err
		}
		for {
			now, err := WALLSN(ctx, conn, "pg_current_wal_lsn()")
			if err != nil {
				return res, err
			}
			if now-start >= target {
				res.PgbenchBytes = now - start
				break
			}
			Logf("pgbench timed run: %d / %d MB of WAL", (now-start)>>20, target>>20)
			if _, err := Pgbench(ctx, c, nil, "-n", "-c", "4", "-j", "2", "-T", "10"); err != nil {
				return res, err
			}
		}
	}
	if pgShare < 1 {
		mid, err := WALLSN(ctx, conn, "pg_current_wal_lsn()")
		if err != nil {
			return res, err
		}
		target := total - (mid - start)
		rows, err := SynapseLoad(ctx, conn, mid, target)
		res.SynapseRows = rows
		if err != nil {
			return res, err
		}
		end, err := WALLSN(ctx, conn, "pg_current_wal_lsn()")
		if err != nil {
			return res, err
		}
		res.SynapseBytes = end - mid
		res.SampleZstdRat = SampleRatio()
	}
	res.Seconds = time.Since(t0).Seconds()
	return res, nil
}

const SynapseSchema = `
CREATE TABLE IF NOT EXISTS events (
	stream_ordering bigint PRIMARY KEY,
	topological_ordering bigint NOT NULL,
	event_id text NOT NULL UNIQUE,
	type text NOT NULL,
	room_id text NOT NULL,
	sender text,
	origin_server_ts bigint,
	received_ts bigint,
	contains_url boolean
);
CREATE INDEX IF NOT EXISTS events_order_room ON events (room_id, topological_ordering, stream_ordering);
CREATE TABLE IF NOT EXISTS event_json (
	event_id text NOT NULL PRIMARY KEY,
	room_id text NOT NULL,
	internal_metadata text NOT NULL,
	json text NOT NULL,
	format_version integer
);`

// SynapseLoad inserts Synapse-like events (events + event_json rows, like
// Synapse's own tables) until target bytes of WAL were written after from.
func SynapseLoad(ctx context.Context, conn *pgx.Conn, from, target int64) (int64, error) {
	if _, err := conn.Exec(ctx, SynapseSchema); err != nil {
		return 0, fmt.Errorf("create Synapse-like tables: %w", err)
	}
	var next int64
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(stream_ordering), 0) + 1 FROM events").Scan(&next); err != nil {
		return 0, err
	}
	g := newEventGen(uint64(next))
	const batch = 5000
	var rows int64
	lastLog := time.Now()
	for {
		now, err := WALLSN(ctx, conn, "pg_current_wal_lsn()")
		if err != nil {
			return rows, err
		}
		if now-from >= target {
			return rows, nil
		}
		if time.Since(lastLog) > 10*time.Second {
			Logf("Synapse-like rows: %d rows, %d / %d MB of WAL", rows, (now-from)>>20, target>>20)
			lastLog = time.Now()
		}
		ev := make([][]any, 0, batch)
		js := make([][]any, 0, batch)
		for range batch {
			e := g.next()
			ev = append(ev, []any{e.so, e.so, e.id, e.typ, e.room, e.sender, e.ts, e.ts + 15, false})
			js = append(js, []any{e.id, e.room, e.meta, e.json, 3})
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			return rows, err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"stream_ordering", "topological_ordering", "event_id", "type", "room_id", "sender", "origin_server_ts", "received_ts", "contains_url"}, pgx.CopyFromRows(ev)); err != nil {
			_ = tx.Rollback(ctx)
			return rows, fmt.Errorf("copy events: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"event_json"}, []string{"event_id", "room_id", "internal_metadata", "json", "format_version"}, pgx.CopyFromRows(js)); err != nil {
			_ = tx.Rollback(ctx)
			return rows, fmt.Errorf("copy event_json: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return rows, err
		}
		rows += batch
	}
}

// event is one generated Synapse event.
type event struct {
	so                                int64
	id, typ, room, sender, meta, json string
	ts                                int64
}

// eventGen produces Synapse-like events: random event ids, hashes and
// signatures (incompressible base64), a Zipf-distributed vocabulary for
// message bodies, body lengths log-normal from a few words to a few kB.
type eventGen struct {
	rng   *rand.Rand
	zipf  *rand.Zipf
	words []string
	rooms []string
	users []string
	so    uint64
	ts    int64
}

func newEventGen(start uint64) *eventGen {
	rng := rand.New(rand.NewPCG(42, start))
	g := &eventGen{rng: rng, so: start, ts: 1_700_000_000_000}
	syl := []string{"ka", "lo", "mi", "ne", "ru", "ta", "ve", "si", "po", "da", "en", "ar", "ul", "th", "or", "ie", "st", "qu", "br", "an", "el", "ow", "ch", "ing"}
	for range 5000 {
		var b strings.Builder
		for range 1 + rng.IntN(4) {
			b.WriteString(syl[rng.IntN(len(syl))])
		}
		g.words = append(g.words, b.String())
	}
	g.zipf = rand.NewZipf(rng, 1.5, 2, uint64(len(g.words)-1))
	for range 300 {
		g.rooms = append(g.rooms, "!"+g.alnum(18)+":example.org")
	}
	for i := range 2000 {
		g.users = append(g.users, fmt.Sprintf("@%s%d:%s", g.words[rng.IntN(len(g.words))], i, []string{"example.org", "matrix.org", "chat.example.net"}[rng.IntN(3)]))
	}
	return g
}

func (g *eventGen) alnum(n int) string {
	const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	for i := range b {
		b[i] = a[g.rng.IntN(len(a))]
	}
	return string(b)
}

func (g *eventGen) b64(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rng.Uint32())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (g *eventGen) text(words int) string {
	var b strings.Builder
	for i := range words {
		if i > 0 {
			if g.rng.IntN(12) == 0 {
				b.WriteString(". ")
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString(g.words[g.zipf.Uint64()])
	}
	return b.String()
}

func (g *eventGen) next() event {
	g.so++
	g.ts += int64(g.rng.IntN(2000))
	e := event{so: int64(g.so), id: "$" + g.b64(32), room: g.rooms[g.rng.IntN(len(g.rooms))],
		sender: g.users[g.rng.IntN(len(g.users))], ts: g.ts}
	var content string
	switch r := g.rng.IntN(100); {
	case r < 70: // message: body length log-normal, median ~25 words
		n := int(math.Min(1500, math.Exp(3.7+1.0*g.rng.NormFloat64())))
		e.typ = "m.room.message"
		content = fmt.Sprintf(`{"msgtype":"m.text","body":%q}`, g.text(max(1, n)))
	case r < 80:
		e.typ = "m.reaction"
		content = fmt.Sprintf(`{"m.relates_to":{"event_id":"$%s","key":"👍","rel_type":"m.annotation"}}`, g.b64(32))
	case r < 95:
		e.typ = "m.room.member"
		content = fmt.Sprintf(`{"avatar_url":"mxc://example.org/%s","displayname":%q,"membership":"join"}`, g.alnum(24), g.text(2))
	default: // state with a larger body, e.g. power levels or a topic
		e.typ = "m.room.topic"
		content = fmt.Sprintf(`{"topic":%q}`, g.text(100+g.rng.IntN(600)))
	}
	var prev, auth bytes.Buffer
	for i := range 1 + g.rng.IntN(10)/9 {
		if i > 0 {
			prev.WriteByte(',')
		}
		fmt.Fprintf(&prev, `"$%s"`, g.b64(32))
	}
	for i := range 3 + g.rng.IntN(2) {
		if i > 0 {
			auth.WriteByte(',')
		}
		fmt.Fprintf(&auth, `"$%s"`, g.b64(32))
	}
	origin := e.sender[strings.IndexByte(e.sender, ':')+1:]
	e.json = fmt.Sprintf(`{"auth_events":[%s],"prev_events":[%s],"type":%q,"room_id":%q,"sender":%q,"content":%s,"depth":%d,"origin":%q,"origin_server_ts":%d,"hashes":{"sha256":%q},"signatures":{%q:{"ed25519:a_%s":%q}},"unsigned":{"age_ts":%d}}`,
		auth.String(), prev.String(), e.typ, e.room, e.sender, content, g.so, origin, e.ts, g.b64(32), origin, g.alnum(4), g.b64(64), e.ts)
	e.meta = fmt.Sprintf(`{"stream_ordering":%d,"txn_id":"m%d.%d"}`, g.so, e.ts, g.rng.IntN(100))
	return e
}

// SampleRatio is the zstd (level 2, like synbak's default) ratio of 8 MB of
// generated event JSON: what the data itself allows, before WAL framing.
func SampleRatio() float64 {
	g := newEventGen(1 << 40)
	var raw bytes.Buffer
	for raw.Len() < 8<<20 {
		e := g.next()
		raw.WriteString(e.id + e.room + e.meta + e.json)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(2)))
	if err != nil {
		return 0
	}
	defer enc.Close()
	out := enc.EncodeAll(raw.Bytes(), nil)
	return float64(raw.Len()) / float64(len(out))
}

// Logf prints a progress line on stderr.
func Logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}
