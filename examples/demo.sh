#!/usr/bin/env bash
# synbak end to end on throwaway data: a scratch PostgreSQL cluster with a
# Synapse-style homeserver.yaml, signing key and media store, a local
# repository, and `synbak agent` running (WAL streamed while pgbench writes, a
# first base backup, media and config snapshots) until SIGTERM; then every
# archived segment fetched back with `synbak wal-fetch` and checked against
# PostgreSQL's own pg_wal (cmp, and pg_waldump over the whole range), and two
# restores into new data directories: to a time between two commits, and of
# the latest state with the media and config files, each printing what was
# expected and what was found; then a logical dump (synbak dump) restored
# into a new database (restore --from-dump). Everything lives in one
# temporary directory, removed at the end (KEEP=1 keeps it).
#
#   bash examples/demo.sh
#
# Needs Go and PostgreSQL's server binaries (Debian: apt-get install postgresql).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bindir=${SYNBAK_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "demo: PostgreSQL server binaries not found: apt-get install postgresql (or set SYNBAK_PG_BINDIR)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/synbak-demo.XXXXXX)
chmod 0711 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(runuser -u postgres --)
  mkdir -p "$work/pg"
  chown postgres: "$work/pg"
else
  mkdir -p "$work/pg"
fi
pgdata=$work/pg/data
streamer=
cleanup() {
  set +e
  [ -n "$streamer" ] && kill -TERM "$streamer" 2>/dev/null && wait "$streamer" 2>/dev/null
  for d in "$pgdata" "$work"/pg/at-target "$work"/pg/latest; do
    [ -f "$d/postmaster.pid" ] && "${as_pg[@]}" "$bindir/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "building synbak"
(cd "$here" && go build -o "$work/synbak" ./cmd/synbak)
synbak=$work/synbak

step "starting a scratch PostgreSQL cluster ($bindir)"
port=
for _ in $(seq 1 50); do
  p=$((20000 + RANDOM % 40000))
  if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "demo: no free port found" >&2; exit 1; }
"${as_pg[@]}" "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust --no-sync --wal-segsize=16 -E UTF8 --locale=C >/dev/null
cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work/pg'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
EOF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -l "$work/pg/server.log" -w start >/dev/null
psql() { "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"

step "a homeserver.yaml pointing at it"
mkdir -p "$work/synapse"
cat >"$work/synapse/homeserver.yaml" <<EOF
server_name: demo.example
database:
  name: psycopg2
  args: {user: postgres, password: demo-password, dbname: synapse, host: 127.0.0.1, port: $port, cp_min: 5}
media_store_path: $work/synapse/media_store
signing_key_path: $work/synapse/demo.example.signing.key
EOF
# A signing key and an uploaded file, as Synapse would have them.
printf 'ed25519 a_demo %s\n' "$(head -c 32 /dev/urandom | base64 | tr -d '=\n')" >"$work/synapse/demo.example.signing.key"
chmod 600 "$work/synapse/demo.example.signing.key"
mkdir -p "$work/synapse/media_store/local_content/ab/cd"
head -c 200000 /dev/urandom >"$work/synapse/media_store/local_content/ab/cd/efghijklmnopqrstuvwx"
export SYNBAK_STATE_DIR=$work/state SYNBAK_WAL_PARTIAL_INTERVAL=2s SYNBAK_WAL_STATUS_INTERVAL=1s \
  SYNBAK_HTTP_LISTEN=127.0.0.1:0 SYNBAK_MEDIA_QUIET_PERIOD=500ms SYNBAK_HEALTH_PROBE_INTERVAL=500ms
sb() { "$synbak" -c /dev/null --homeserver "$work/synapse/homeserver.yaml" --repo "$work/repo" "$@"; }
sb config check
sb init

step "the agent: WAL streaming, a first base backup, media and config snapshots"
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 5 -q synapse 2>&1 | tail -n 1
"$synbak" -c /dev/null --homeserver "$work/synapse/homeserver.yaml" --repo "$work/repo" agent 2>"$work/agent.log" &
streamer=$!
healthy=
for _ in $(seq 1 600); do
  if sb status >/dev/null 2>&1; then healthy=1; break; fi
  kill -0 "$streamer" 2>/dev/null || break
  sleep 0.2
done
[ -n "$healthy" ] || { echo "demo: the agent did not become healthy; its log:" >&2; tail -n 30 "$work/agent.log" >&2; exit 1; }
echo "pgbench writes while the agent runs:"
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -c 2 -T 5 synapse 2>&1 | grep -E '^(tps|number of transactions actually)'
sb status
sb list

psql -d synapse -c "CREATE TABLE e2e_one_time_keys_json(user_id text, device_id text, algorithm text, key_id text, ts_added_ms bigint, key_json text, UNIQUE (user_id, device_id, algorithm, key_id))"
psql -d synapse -c "INSERT INTO e2e_one_time_keys_json VALUES ('@alice:demo.example', 'DEV', 'signed_curve25519', 'AAAAAQ', 0, '{}'), ('@alice:demo.example', 'DEV', 'signed_curve25519', 'AAAAAg', 0, '{}')"
# Three commits a moment apart; the restore below targets the time between
# the second and the third.
psql -d synapse -c "CREATE TABLE marker(n int, note text)"
psql -d synapse -c "INSERT INTO marker VALUES (1, 'first')"
psql -d synapse -c "INSERT INTO marker VALUES (2, 'second')"
psql -d synapse -Atc "select pg_sleep(0.3)" >/dev/null
target=$(psql -d synapse -Atc "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
psql -d synapse -Atc "select pg_sleep(0.3)" >/dev/null
psql -d synapse -c "INSERT INTO marker VALUES (3, 'committed at the end')"
echo "target time for the point-in-time restore: $target (after commit 2, before commit 3)"
last=$(psql -d postgres -Atc "select pg_walfile_name(pg_current_wal_lsn())")
psql -d postgres -Atc "select pg_switch_wal()" >/dev/null
sysid=$(psql -d postgres -Atc "select system_identifier from pg_control_system()")
echo "waiting for $last to reach the repository"
for _ in $(seq 1 600); do
  [ -f "$work/repo/wal/00000001/$last" ] && break
  sleep 0.1
done
[ -f "$work/repo/wal/00000001/$last" ] || { echo "demo: $last was not archived; log:" >&2; tail -n 30 "$work/agent.log" >&2; exit 1; }
echo "stopping the agent (SIGTERM: it stores the open segment and exits 0)"
kill -TERM "$streamer"; wait "$streamer"; streamer=

step "fetching every archived segment back and comparing it with pg_wal"
mkdir -p "$work/fetched"
n=0 compared=0
for obj in "$work"/repo/wal/00000001/????????????????????????; do
  seg=$(basename "$obj")
  sb wal-fetch "$seg" "$work/fetched/$seg"
  n=$((n + 1))
  # The server removes segments it no longer needs (after the backup's
  # checkpoint): compare those it still has.
  if [ -f "$pgdata/pg_wal/$seg" ]; then
    cmp "$work/fetched/$seg" "$pgdata/pg_wal/$seg"
    compared=$((compared + 1))
  fi
done
[ "$compared" -gt 0 ] || { echo "demo: no segment left in pg_wal to compare with" >&2; exit 1; }
first=$(ls "$work/fetched" | head -n 1)
"$bindir/pg_waldump" --path "$work/fetched" --quiet "$first" "$last"
echo "demo: checking that wal-fetch of a segment the archive does not hold exits 1 (PostgreSQL's \"end of the archive\"; the message below is expected):"
set +e; sb wal-fetch 0000000100000000000000FF "$work/fetched/x"; code=$?; set -e
[ "$code" = 1 ] || { echo "demo: wal-fetch of a missing segment exited $code, want 1" >&2; exit 1; }
echo "demo: ok, exit 1"

# The repository stays as the agent wrote it (0700, this user's): the
# restore serves the WAL to the restored server itself.

# restore_into NAME ARGS...: restores into $work/pg/NAME, starts it on a free
# port, prints the markers and the one-time key count ("1,2 0"), stops it.
restore_into() {
  local name=$1; shift
  local rport= p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then rport=$p; break; fi
  done
  sb restore --pgdata "$work/pg/$name" "$@" --port "$rport" --pg-bindir "$bindir" --leave-running >"$work/$name.out"
  sed 's/^/    /' "$work/$name.out" >&2
  # The restored server accepts only local connections through its private socket.
  local rsock
  rsock=$(grep -o '/tmp/synbak-restore-[0-9]*' "$work/$name.out" | head -n 1)
  local rows keys
  rows=$("$bindir/psql" -X -At -h "$rsock" -p "$rport" -U postgres -d synapse -c "select coalesce(string_agg(n::text, ',' order by n), '') from marker")
  keys=$("$bindir/psql" -X -At -h "$rsock" -p "$rport" -U postgres -d synapse -c "select count(*) from e2e_one_time_keys_json")
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$work/pg/$name" -m fast -w stop >/dev/null
  rm -rf "$rsock"
  echo "$rows $keys"
}
check() { # check WHAT WANT GOT
  printf '    %-34s expected %-8s got %s\n' "$1" "$2" "$3"
  [ "$2" = "$3" ] || { echo "demo: $1: expected '$2', got '$3'" >&2; exit 1; }
}

step "point-in-time restore to $target (between commits 2 and 3)"
read -r rows keys < <(restore_into at-target --target-time "$target")
check "marker rows" "1,2" "$rows"
check "one-time keys after the restore" "0" "$keys"

step "point-in-time restore of the latest state (--latest), with media and config"
read -r rows keys < <(restore_into latest --latest --media-dir "$work/restored-media" --config-dir "$work/restored-config")
check "marker rows" "1,2,3" "$rows"
check "one-time keys after the restore" "0" "$keys"
media_ok=no; cmp -s "$work/synapse/media_store/local_content/ab/cd/efghijklmnopqrstuvwx" "$work/restored-media/local_content/ab/cd/efghijklmnopqrstuvwx" && media_ok=yes
check "uploaded file restored" "yes" "$media_ok"
key_ok=no; cmp -s "$work/synapse/demo.example.signing.key" "$work/restored-config/$work/synapse/demo.example.signing.key" && key_ok=yes
check "signing key restored" "yes" "$key_ok"

step "a logical dump (pg_dump -Fc, as Synapse's docs describe) restored into a new database"
dump_id=$(sb dump)
echo "dump $dump_id"
sb restore --from-dump "$dump_id" --target-dsn "host=127.0.0.1 port=$port user=postgres dbname=synapse_from_dump" | sed 's/^/    /'
check "marker rows" "1,2,3" "$(psql -d synapse_from_dump -Atc "select string_agg(n::text, ',' order by n) from marker")"
check "one-time keys (excluded)" "0" "$(psql -d synapse_from_dump -Atc "select count(*) from e2e_one_time_keys_json")"
check "pgbench_accounts rows" "$(psql -d synapse -Atc "select count(*) from pgbench_accounts")" "$(psql -d synapse_from_dump -Atc "select count(*) from pgbench_accounts")"

raw=$(du -sb "$work/fetched" | cut -f1)
stored=$(du -sb "$work/repo/wal" | cut -f1)
printf '\nOK: %d segments (%s .. %s) of system %s archived and fetched back;\n' "$n" "$first" "$last" "$sysid"
printf '    the %d still in pg_wal are byte-identical to the server'"'"'s copies;\n' "$compared"
printf '    pg_waldump read them all; %d MB of WAL stored in %d MB (zstd);\n' $((raw / 1048576)) $((stored / 1048576))
printf '    restored to %s: rows 1,2 as expected; --latest: rows 1,2,3;\n' "$target"
printf '    logical dump %s restored into a new database: rows 1,2,3.\n' "$dump_id"
