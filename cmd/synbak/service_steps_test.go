package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/synbak/synbak/internal/pgtest"
)

// TestReadmeServiceSteps runs steps 2–4 of the README's "Running the agent
// as a service" on throwaway data, as written: the role made with the real
// createuser (password typed at its prompt), the grants from
// examples/debian/synbak-role.sql through psql, the README's pg_hba.conf
// lines as the only way in for that role (scram-sha-256), the dsn file
// 0640 for the service's group, and the README's setfacl command on a
// media store and config directory only root could read. Then the agent's
// commands, run as an unprivileged service user (nobody standing in for
// synbak), must work: config check, backup, media sync (also of a file
// created after the ACLs were set) and verify --media (the SELECT grant).
func TestReadmeServiceSteps(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (to run the agent's commands as another user)")
	}
	setfacl, err := exec.LookPath("setfacl")
	if err != nil {
		t.Fatalf("setfacl is missing: apt-get install acl (the README says so)")
	}
	svc, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(svc.Uid)
	gid, _ := strconv.Atoi(svc.Gid)

	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"password_encryption = 'scram-sha-256'"}})
	c.CreateDB(t, "synapse")
	c.CreateSynapseSchema(t, "synapse")
	bin := c.BinDir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Step 2: createuser --replication --pwprompt synbak, the password
	// typed at the prompt (no controlling terminal: it reads stdin).
	const password = "readme-service-password"
	cu := exec.CommandContext(ctx, filepath.Join(bin, "createuser"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "--replication", "--pwprompt", "synbak")
	cu.Stdin = strings.NewReader(password + "\n" + password + "\n")
	cu.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if out, err := cu.CombinedOutput(); err != nil {
		t.Fatalf("createuser: %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, filepath.Join(bin, "psql"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres",
		"-d", "synapse", "-v", "ON_ERROR_STOP=1", "-f", "../../examples/debian/synbak-role.sql").CombinedOutput(); err != nil {
		t.Fatalf("psql -f synbak-role.sql: %v\n%s", err, out)
	}
	// The README's pg_hba.conf lines are synbak's only way in.
	hba := readmeHBALines(t)
	if len(hba) != 2 {
		t.Fatalf("README: want the 2 pg_hba.conf lines for synbak, found %q", hba)
	}
	hbaFile := filepath.Join(c.DataDir, "pg_hba.conf")
	body := strings.Join(hba, "\n") + "\nhost all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\nlocal all postgres trust\n"
	if err := os.WriteFile(hbaFile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	pgUser, err := user.Lookup("postgres")
	if err == nil {
		pu, _ := strconv.Atoi(pgUser.Uid)
		pg, _ := strconv.Atoi(pgUser.Gid)
		_ = os.Chown(hbaFile, pu, pg)
	}
	c.Exec(t, "postgres", "SELECT pg_reload_conf()")

	root, err := os.MkdirTemp("/tmp", "sbsvc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// Step 3: the dsn file, 0640 root:<the service's group>.
	etc := filepath.Join(root, "etc-synbak")
	mustMkdir(t, etc, 0o750, 0, gid)
	dsnFile := filepath.Join(etc, "dsn")
	if out, err := exec.Command("install", "-m", "0640", "-g", strconv.Itoa(gid), "/dev/null", dsnFile).CombinedOutput(); err != nil {
		t.Fatalf("install dsn: %v %s", err, out)
	}
	if err := os.WriteFile(dsnFile, fmt.Appendf(nil, "host=127.0.0.1 port=%d user=synbak password=%s dbname=synapse\n", c.Port, password), 0o640); err != nil {
		t.Fatal(err)
	}

	// Synapse's files, as a Debian install has them: only root (and
	// Synapse's user) can read them.
	synConf := filepath.Join(root, "matrix-synapse")
	media := filepath.Join(root, "media")
	mustMkdir(t, synConf, 0o700, 0, 0)
	mustMkdir(t, media, 0o700, 0, 0)
	hsFile := filepath.Join(synConf, "homeserver.yaml")
	if err := os.WriteFile(hsFile, fmt.Appendf(nil, "server_name: test.example\ndatabase:\n  name: psycopg2\n  args: {user: postgres, dbname: synapse, host: 127.0.0.1, port: %d}\nmedia_store_path: %s\nsigning_key_path: %s/test.example.signing.key\n", c.Port, media, synConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(synConf, "test.example.signing.key"), []byte("ed25519 a_svc AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := writeMedia(t, c, media, "AbCdEfGhIjKlMnOpQrStUvWx", "uploaded before the ACLs")
	// Step 4: the README's setfacl command (for the service user).
	if out, err := exec.Command(setfacl, "-R", "-m", "u:"+svc.Username+":rX", "-m", "d:u:"+svc.Username+":rX", synConf, media).CombinedOutput(); err != nil {
		t.Fatalf("setfacl: %v %s", err, out)
	}
	after := writeMedia(t, c, media, "XwVuTsRqPoNmLkJiHgFeDcBa", "uploaded after the ACLs")

	repoDir, state := filepath.Join(root, "repo"), filepath.Join(root, "state")
	mustMkdir(t, repoDir, 0o700, uid, gid)
	mustMkdir(t, state, 0o700, uid, gid)
	cfg := filepath.Join(etc, "synbak.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "synapse:\n  config: %s\nrepository:\n  path: %s\npostgres:\n  dsn_file: %s\nstate_dir: %s\nwal:\n  status_interval: 200ms\n", hsFile, repoDir, dsnFile, state), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg, 0, gid); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(root, "synbak")
	data, err := os.ReadFile(pgtest.SynbakBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self, data, 0o755); err != nil {
		t.Fatal(err)
	}
	asService := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, self, append([]string{"-c", cfg}, args...)...)
		cmd.Dir = root
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + root}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("synbak %s as %s: %v\n%s\n%s", strings.Join(args, " "), svc.Username, err, out.String(), errb.String())
		}
		if strings.Contains(out.String()+errb.String(), password) {
			t.Fatalf("synbak %s printed the password", strings.Join(args, " "))
		}
		return out.String()
	}
	asService("config", "check")
	asService("backup")
	out := asService("media", "sync")
	if !strings.Contains(out, "2 added") {
		t.Errorf("media sync as the service user: %s", out)
	}
	asService("verify", "--media")

	// The role can read what the grants say, and no more.
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=synbak password=%s dbname=synapse sslmode=disable", c.Port, password))
	if err != nil {
		t.Fatalf("connect as synbak with the README's hba lines: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM local_media_repository WHERE media_id IN ($1, $2)", before, after).Scan(&n); err != nil || n != 2 {
		t.Errorf("SELECT on local_media_repository as synbak: %d %v", n, err)
	}
	if _, err := conn.Exec(ctx, "SELECT count(*) FROM events"); err == nil {
		t.Errorf("the synbak role can read events: the grants are broader than the README says")
	}
}

// readmeHBALines returns the README's pg_hba.conf lines for the synbak role.
func readmeHBALines(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`^host\s+\S+\s+synbak\s+\S+\s+scram-sha-256$`)
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); re.MatchString(l) && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}

func mustMkdir(t *testing.T, dir string, mode os.FileMode, uid, gid int) {
	t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// writeMedia writes a local_content file as Synapse does under Debian's
// unit (UMask=0027: files 0640, new directories 0750; not readable by
// others) and its row; it returns the media id.
func writeMedia(t *testing.T, c *pgtest.Cluster, store, id, content string) string {
	t.Helper()
	p := filepath.Join(store, "local_content", id[:2], id[2:4], id[4:])
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	_ = os.Chtimes(p, old, old)
	c.Exec(t, "synapse", "INSERT INTO local_media_repository (media_id, media_type, media_length, created_ts, user_id) VALUES ($1, 'text/plain', $2, $3, '@a:test.example')", id, len(content), time.Now().UnixMilli())
	return id
}
