package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
)

// TestInitRefusesRepositoryWithoutMetadata: the metadata object deleted from
// an encrypted repository. init (with or without recipients), backup,
// wal stream and the agent refuse (exit 1) with what to do, and write
// nothing: no new, unencrypted repository over the encrypted objects.
func TestInitRefusesRepositoryWithoutMetadata(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(dir, "repo")
	b, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{Recipients: []age.Recipient{key.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"wal/00000001/000000010000000000000001", "config/objects/ab/abc"} {
		if _, err := r.Put(ctx, n, strings.NewReader("encrypted payload "+n), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Join(repoDir, "meta")); err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string]string {
		m := map[string]string{}
		filepath.Walk(repoDir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, _ := os.ReadFile(p)
				m[p] = string(b)
			}
			return nil
		})
		return m
	}
	before := snapshot()
	if len(before) != 2 {
		t.Fatalf("fixture: %d files, want 2", len(before))
	}

	base := map[string]string{
		"SYNBAK_REPOSITORY_PATH": repoDir, "SYNBAK_STATE_DIR": filepath.Join(dir, "state"),
		"SYNBAK_SYNAPSE_CONFIG": filepath.Join(dir, "absent.yaml"),
		// Nothing listens there: the commands must stop before connecting.
		"SYNBAK_POSTGRES_DSN": "host=127.0.0.1 port=1 user=postgres dbname=postgres connect_timeout=2",
		"SYNBAK_HTTP_LISTEN":  "127.0.0.1:0",
	}
	withKey := map[string]string{"SYNBAK_REPOSITORY_ENCRYPTION_RECIPIENTS": key.Recipient().String()}
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"init"}, nil},
		{[]string{"init"}, withKey},
		{[]string{"backup"}, nil},
		{[]string{"wal", "stream"}, nil},
		{[]string{"agent"}, nil},
		{[]string{"agent"}, withKey},
	} {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for k, v := range tc.env {
			env[k] = v
		}
		// A bounded context: an agent that wrongly started would run on.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var out, errb bytes.Buffer
		code := run(cctx, tc.args, &out, &errb, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		cancel()
		what := strings.Join(tc.args, " ")
		if len(tc.env) > 0 {
			what += " (with recipients)"
		}
		msg := out.String() + errb.String()
		if code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s", what, code, msg)
		}
		for _, want := range []string{"2 objects but no valid metadata", "meta/", "empty directory"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: output lacks %q:\n%s", what, want, msg)
			}
		}
		if strings.Contains(msg, "run synbak init") {
			t.Errorf("%s: the output suggests synbak init:\n%s", what, msg)
		}
		after := snapshot()
		if len(after) != len(before) {
			t.Errorf("%s wrote into the repository: %d files, before %d", what, len(after), len(before))
		}
		for p, c := range before {
			if after[p] != c {
				t.Errorf("%s changed %s", what, p)
			}
		}
	}
	// The read-only commands say the same instead of "run synbak init".
	code, stdout, stderr := runCLI(t, base, "verify")
	if code != 1 || !strings.Contains(stdout+stderr, "no valid metadata") || strings.Contains(stdout+stderr, "run synbak init") {
		t.Errorf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestVerifyEncryptedWALSegments: in an encrypted repository, verify (and
// verify --quick) with the key check each segment's first page: a segment
// of another cluster, stored as a valid object, is named.
func TestVerifyEncryptedWALSegments(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.age")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(dir, "repo")
	b, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(ctx, b, repo.Options{Recipients: []age.Recipient{key.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	const seg = "000000010000000000000003"
	if _, err := r.Put(ctx, "wal/settings.json", strings.NewReader(`{"system_id":"1","segment_size":1048576}`), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "wal/00000001/"+seg, bytes.NewReader(fakeSegment(t, seg)), nil); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SYNBAK_REPOSITORY_PATH": repoDir, "SYNBAK_STATE_DIR": filepath.Join(dir, "state")}
	withKey := map[string]string{"SYNBAK_REPOSITORY_ENCRYPTION_IDENTITY_FILE": keyFile}
	for k, v := range env {
		withKey[k] = v
	}
	if code, stdout, stderr := runCLI(t, withKey, "verify"); code != 0 {
		t.Errorf("verify with the key: exit %d\n%s%s", code, stdout, stderr)
	}
	// Another cluster's segment under the name, as a valid object.
	other := fakeSegment(t, seg)
	other[24] ^= 1 // xlp_sysid
	if err := b.Delete(ctx, "wal/00000001/"+seg); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "wal/00000001/"+seg, bytes.NewReader(other), nil); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"verify"}, {"verify", "--quick"}} {
		code, stdout, stderr := runCLI(t, withKey, args...)
		if code != 1 || !hasProblem(stdout, []string{"wal/00000001/" + seg, "another cluster"}) {
			t.Errorf("%v: exit %d, want 1 naming the segment\n%s%s", args, code, stdout, stderr)
		}
	}
}
