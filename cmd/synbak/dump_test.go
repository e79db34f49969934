package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/pgtest"
)

// TestDumpAndRestoreFromDump runs `synbak dump` against a homeserver whose
// state store lives in a second database (password authentication), twice
// with media and config changes in between, then `synbak restore
// --from-dump` of the first dump into another cluster: both databases, the
// media set and the config files as of that dump; then the refusals.
func TestDumpAndRestoreFromDump(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	const pw = "dump-cli-Secret-91"
	src := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	src.CreatePasswordRole(t, "synapse_user", pw)
	for _, db := range []string{"synapse", "synapse_state"} {
		src.Exec(t, "postgres", "CREATE DATABASE "+db+" OWNER synapse_user ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
		src.Exec(t, "postgres", "ALTER ROLE postgres IN DATABASE "+db+" SET role = synapse_user")
		src.CreateSynapseSchema(t, db)
	}
	src.FillSynapse(t, "synapse", 400)
	src.Exec(t, "synapse_state", "INSERT INTO state_groups (id, room_id, event_id) SELECT g, '!r:test.example', '$e' || g FROM generate_series(1, 50) g")

	dir := t.TempDir()
	media := filepath.Join(dir, "media_store")
	hsFile := filepath.Join(dir, "homeserver.yaml")
	writeHS := func(version int) {
		t.Helper()
		body := fmt.Sprintf(`# version %d
server_name: test.example
signing_key_path: %s/test.example.signing.key
media_store_path: %s
databases:
  main:
    name: psycopg2
    data_stores: [main]
    args: {user: synapse_user, password: %s, dbname: synapse, host: 127.0.0.1, port: %d}
  state:
    name: psycopg2
    data_stores: [state]
    args: {user: synapse_user, password: %s, dbname: synapse_state, host: 127.0.0.1, port: %d}
`, version, dir, media, pw, src.Port, pw, src.Port)
		if err := os.WriteFile(hsFile+".new", []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(hsFile+".new", hsFile); err != nil {
			t.Fatal(err)
		}
	}
	writeHS(1)
	if err := os.WriteFile(filepath.Join(dir, "test.example.signing.key"), []byte("ed25519 a_test AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	upload := func() string {
		t.Helper()
		b := make([]byte, 12)
		rand.Read(b)
		id := hex.EncodeToString(b)
		rel := filepath.Join("local_content", id[:2], id[2:4], id[4:])
		if err := os.MkdirAll(filepath.Join(media, filepath.Dir(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(media, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
		src.Exec(t, "synapse", "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ($1, 'application/octet-stream', $2, $3, '@alice:test.example')",
			id, len(b), time.Now().UnixMilli())
		// Dated by mtime: make the file clearly older than what follows.
		old := time.Now().Add(-time.Minute)
		if err := os.Chtimes(filepath.Join(media, rel), old, old); err != nil {
			t.Fatal(err)
		}
		return rel
	}
	env := map[string]string{
		"SYNBAK_SYNAPSE_CONFIG":     hsFile,
		"SYNBAK_REPOSITORY_PATH":    filepath.Join(dir, "repo"),
		"SYNBAK_STATE_DIR":          filepath.Join(dir, "state"),
		"SYNBAK_MEDIA_QUIET_PERIOD": "1ms",
		"SYNBAK_DUMP_PART_SIZE_MB":  "1",
	}
	cli := func(args ...string) (int, string, string) {
		t.Helper()
		code, out, errs := runCLI(t, env, args...)
		if strings.Contains(out+errs, pw) {
			t.Fatalf("synbak %s printed the database password", strings.Join(args, " "))
		}
		return code, out, errs
	}

	// No media sync of its own: `dump` copies the media store first.
	first := upload()
	code, out, errs := cli("dump")
	if code != 0 {
		t.Fatalf("dump: %d\n%s", code, errs)
	}
	id1 := strings.TrimSpace(out)
	// Later changes: a new upload, homeserver.yaml version 2, more rows.
	second := upload()
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(filepath.Join(media, second), later, later); err != nil {
		t.Fatal(err)
	}
	writeHS(2)
	events := src.Int64(t, "synapse", "SELECT count(*) FROM events")
	src.FillSynapse(t, "synapse", 50)
	code, out, errs = cli("dump")
	if code != 0 {
		t.Fatalf("second dump: %d\n%s", code, errs)
	}
	id2 := strings.TrimSpace(out)

	code, out, _ = cli("list", "--json")
	var l listing
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Dumps) != 2 || l.Dumps[0].ID != id1 || l.Dumps[1].ID != id2 ||
		strings.Join(l.Dumps[0].Databases, ",") != "synapse,synapse_state" {
		t.Fatalf("list --json: %d %s", code, out)
	}
	if code, out, _ := cli("list"); code != 0 || !strings.Contains(out, id1) || !strings.Contains(out, "synapse,synapse_state") {
		t.Fatalf("list: %s", out)
	}

	dst := pgtest.Start(t, pgtest.Options{Conf: []string{"fsync = off"}})
	dst.Exec(t, "postgres", "CREATE ROLE synapse_user LOGIN")
	target := func(db string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", dst.Port, db)
	}
	databases := func() string {
		return dst.Text(t, "postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
	}
	initial := databases()
	restoreArgs := func(id string, extra ...string) []string {
		return append([]string{"restore", "--from-dump", id, "--target-dsn", target("synapse"), "--target-state-dsn", target("synapse_state"), "--jobs", "2"}, extra...)
	}

	// Usage errors are exit 2, before anything is touched.
	if code, _, errs := cli("restore", "--from-dump", id1); code != 2 || !strings.Contains(errs, "--target-dsn") {
		t.Fatalf("no --target-dsn: %d %s", code, errs)
	}
	if code, _, errs := cli("restore", "--from-dump", id1, "--target-dsn", target("synapse")); code != 1 || !strings.Contains(errs, "--target-state-dsn") {
		t.Fatalf("two databases, one target: %d %s", code, errs)
	}
	if code, _, errs := cli("restore", "--from-dump", "20200101T000000Z-000000", "--target-dsn", target("x")); code != 1 || !strings.Contains(errs, "no complete dump") {
		t.Fatalf("unknown dump: %d %s", code, errs)
	}
	// A dry run checks and prints, creating nothing.
	code, out, errs = cli(restoreArgs(id1, "--dry-run", "--media-dir", filepath.Join(dir, "rm"), "--config-dir", filepath.Join(dir, "rc"))...)
	if code != 0 || !strings.Contains(out, "create database \"synapse_state\"") || !strings.Contains(out, "Dry run") {
		t.Fatalf("dry run: %d\n%s\n%s", code, out, errs)
	}
	if databases() != initial {
		t.Fatalf("the dry run created databases: %s", databases())
	}
	if _, err := os.Stat(filepath.Join(dir, "rm")); !os.IsNotExist(err) {
		t.Fatalf("the dry run created the media directory: %v", err)
	}

	// The first dump, with media and config as of its time.
	mediaOut, confOut := filepath.Join(dir, "restored-media"), filepath.Join(dir, "restored-config")
	code, out, errs = cli(restoreArgs(id1, "--media-dir", mediaOut, "--config-dir", confOut)...)
	if code != 0 {
		t.Fatalf("restore --from-dump: %d\n%s\n%s", code, out, errs)
	}
	if n := dst.Int64(t, "synapse", "SELECT count(*) FROM events"); n != events {
		t.Errorf("restored %d events, the first dump had %d", n, events)
	}
	if n := dst.Int64(t, "synapse_state", "SELECT count(*) FROM state_groups"); n != 50 {
		t.Errorf("state database: %d state groups, want 50", n)
	}
	if n := dst.Int64(t, "synapse", "SELECT count(*) FROM e2e_one_time_keys_json"); n != 0 {
		t.Errorf("%d one-time keys restored", n)
	}
	if _, err := os.Stat(filepath.Join(mediaOut, first)); err != nil {
		t.Errorf("media uploaded before the dump: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mediaOut, second)); !os.IsNotExist(err) {
		t.Errorf("media uploaded after the dump was restored (%v)", err)
	}
	hs, err := os.ReadFile(filepath.Join(confOut, hsFile))
	if err != nil || !strings.HasPrefix(string(hs), "# version 1\n") {
		t.Errorf("restored homeserver.yaml: %v %q", err, firstLine(string(hs)))
	}
	if _, err := os.Stat(filepath.Join(confOut, dir, "test.example.signing.key")); err != nil {
		t.Errorf("signing key: %v", err)
	}

	// Again into the now populated databases: refused, nothing changed.
	before := dst.Int64(t, "synapse", "SELECT count(*) FROM events")
	code, _, errs = cli(restoreArgs("latest")...)
	if code != 1 || !strings.Contains(errs, "never restored over an existing database") {
		t.Fatalf("restore over existing: %d %s", code, errs)
	}
	if dst.Int64(t, "synapse", "SELECT count(*) FROM events") != before {
		t.Fatal("the refused restore changed the database")
	}
	// The newest dump into new databases has the later rows.
	code, _, errs = cli("restore", "--from-dump", "latest", "--target-dsn", target("synapse2"), "--target-state-dsn", target("synapse_state2"))
	if code != 0 {
		t.Fatalf("restore latest: %d %s", code, errs)
	}
	if n, want := dst.Int64(t, "synapse2", "SELECT count(*) FROM events"), src.Int64(t, "synapse", "SELECT count(*) FROM events"); n != want || n == events {
		t.Errorf("latest dump: %d events, source %d", n, want)
	}
	if code, out, errs := cli("verify"); code != 0 {
		t.Errorf("verify: %d\n%s\n%s", code, out, errs)
	}

	// A dump with --skip-media into a repository that holds no media: the
	// restore's plan says --media-dir will stay empty, and why.
	env["SYNBAK_REPOSITORY_PATH"] = filepath.Join(dir, "repo-no-media")
	if code, _, errs := cli("dump", "--skip-media"); code != 0 {
		t.Fatalf("dump --skip-media: %d %s", code, errs)
	}
	code, out, errs = cli("restore", "--from-dump", "latest", "--target-dsn", target("synapse3"), "--target-state-dsn", target("synapse_state3"),
		"--dry-run", "--media-dir", filepath.Join(dir, "rm3"))
	if code != 0 || !strings.Contains(out, "warning: the repository holds no media files") || !strings.Contains(out, "warning: the dump's media not synced (--skip-media)") {
		t.Fatalf("dry run of a dump without media: %d\n%s\n%s", code, out, errs)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// Commands that only read the repository never create its directory.
func TestReadOnlyCommandsDoNotCreateTheRepository(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-repo")
	for _, args := range [][]string{{"list"}, {"verify", "--quick"}, {"restore", "--from-dump", "latest", "--target-dsn", "host=127.0.0.1 dbname=x"}} {
		code, _, errs := runCLI(t, nil, append([]string{"-c", "/dev/null", "--repo", missing}, args...)...)
		if code != 1 || !strings.Contains(errs, "repository "+missing+" does not exist") {
			t.Errorf("%v: exit %d, %s", args, code, errs)
		}
		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Fatalf("%v created %s (%v)", args, missing, err)
		}
	}
}
