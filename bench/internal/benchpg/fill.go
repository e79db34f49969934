package benchpg

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// Fill grows the postgres database of c to about gb GiB: pgbench tables
// (pgbenchShare of it; they compress ~20x) and Synapse-like event JSON (the
// rest: bodies of 300 B to 4 kB with random ids, hashes and words, which
// compress ~3x like Synapse's event_json). It returns the database size in
// MB.
func Fill(ctx context.Context, c *Cluster, conn *pgx.Conn, gb, pgbenchShare float64) (float64, error) {
	if scale := int(gb * pgbenchShare * 1024 / 15); scale > 0 { // ~15 MB per scale unit
		bin := c.Bin
		if c.ClientBin != "" {
			bin = c.ClientBin
		}
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
			"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "postgres")
		cmd.Env = CleanEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("pgbench -i: %v\n%s", err, out)
		}
	}
	if _, err := conn.Exec(ctx, `create table if not exists event_json (event_id text primary key, room_id text, json text)`); err != nil {
		return 0, err
	}
	var have int64
	if err := conn.QueryRow(ctx, "select pg_total_relation_size('event_json')").Scan(&have); err != nil {
		return 0, err
	}
	want := int64(gb * (1 - pgbenchShare) * (1 << 30))
	for have < want {
		// About 50 MB per batch: JSON bodies of 300 B to 4 kB with random
		// ids, hashes and words.
		_, err := conn.Exec(ctx, `
insert into event_json
select '$' || md5(random()::text) || md5(random()::text),
       '!' || substr(md5((g % 500)::text), 1, 18) || ':example.org',
       json_build_object(
         'type', (array['m.room.message','m.room.member','m.reaction','m.room.encrypted'])[1 + (g % 4)],
         'sender', '@user' || (g % 2000) || ':example.org',
         'origin_server_ts', 1700000000000 + g,
         'content', json_build_object('body', (select string_agg((array['the','a','matrix','room','hello','synapse','backup','server','message','ok','thanks','see','you','later'])[1 + floor(random()*14)::int] || case when random() < 0.2 then md5(random()::text) else '' end, ' ') from generate_series(1, 10 + (g % 300) + (g*0)) )),
         'hashes', json_build_object('sha256', encode(sha256(random()::text::bytea), 'base64')),
         'signatures', json_build_object('example.org', json_build_object('ed25519:a', encode(sha512(random()::text::bytea), 'base64'))))::text
from generate_series(1, 30000) g`)
		if err != nil {
			return 0, fmt.Errorf("fill event_json: %w", err)
		}
		if err := conn.QueryRow(ctx, "select pg_total_relation_size('event_json')").Scan(&have); err != nil {
			return 0, err
		}
	}
	if _, err := conn.Exec(ctx, "vacuum analyze"); err != nil {
		return 0, err
	}
	var db int64
	if err := conn.QueryRow(ctx, "select pg_database_size('postgres')").Scan(&db); err != nil {
		return 0, err
	}
	return float64(db) / 1e6, nil
}
