package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
)

// TestEncryptedRepositoryCommandLine: init records encryption; listing and
// --quick need no key; reading with a wrong or missing identity is a clear
// error (exit 1) that writes nothing; recipients on a clear repository are
// refused.
func TestEncryptedRepositoryCommandLine(t *testing.T) {
	dir := t.TempDir()
	key, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	wrong, _ := age.GenerateX25519Identity()
	keyFile, wrongFile := filepath.Join(dir, "key.age"), filepath.Join(dir, "wrong.age")
	os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600)
	os.WriteFile(wrongFile, []byte("# created: today\n"+wrong.String()+"\n"), 0o600)
	repoDir := filepath.Join(dir, "repo")
	env := map[string]string{
		"SYNBAK_REPOSITORY_PATH": repoDir, "SYNBAK_STATE_DIR": filepath.Join(dir, "state"),
		"SYNBAK_SYNAPSE_CONFIG":                   filepath.Join(dir, "absent.yaml"),
		"SYNBAK_REPOSITORY_ENCRYPTION_RECIPIENTS": key.Recipient().String(),
	}
	code, stdout, stderr := runCLI(t, env, "init")
	if code != 0 || !strings.Contains(stdout, "encrypted with age") {
		t.Fatalf("init: exit %d\n%s%s", code, stdout, stderr)
	}
	// An object, written with the key.
	be, err := local.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, repo.Options{Recipients: []age.Recipient{key.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(context.Background(), "config/objects/abc", strings.NewReader("macaroon_secret_key: s3cr3t"), nil); err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string]int64 {
		m := map[string]int64{}
		filepath.Walk(repoDir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				m[p] = fi.Size()
			}
			return nil
		})
		return m
	}
	before := snapshot()

	read := map[string]string{"SYNBAK_REPOSITORY_PATH": repoDir, "SYNBAK_STATE_DIR": filepath.Join(dir, "state")}
	if code, stdout, stderr := runCLI(t, read, "verify", "--quick"); code != 0 {
		t.Errorf("verify --quick without a key: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, tc := range []struct {
		identity, want string
	}{
		{"", "identity_file"},
		{wrongFile, "wrong key"},
	} {
		env := map[string]string{"SYNBAK_REPOSITORY_PATH": repoDir, "SYNBAK_STATE_DIR": filepath.Join(dir, "state"), "SYNBAK_REPOSITORY_ENCRYPTION_IDENTITY_FILE": tc.identity}
		code, stdout, stderr := runCLI(t, env, "verify")
		if code != 1 || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("verify with identity %q: exit %d, want 1 with %q\n%s%s", tc.identity, code, tc.want, stdout, stderr)
		}
		if strings.Contains(stdout+stderr, "s3cr3t") || strings.Contains(stdout+stderr, wrong.String()) {
			t.Errorf("a secret in the output:\n%s%s", stdout, stderr)
		}
	}
	env["SYNBAK_REPOSITORY_ENCRYPTION_IDENTITY_FILE"] = keyFile
	if code, stdout, stderr := runCLI(t, env, "verify"); code != 0 {
		t.Errorf("verify with the key: exit %d\n%s%s", code, stdout, stderr)
	}
	if after := snapshot(); len(after) != len(before) {
		t.Errorf("the failed reads changed the repository: %d files before, %d after", len(before), len(after))
	}

	// A clear repository refuses recipients.
	clear := filepath.Join(dir, "clear")
	if code, _, stderr := runCLI(t, map[string]string{"SYNBAK_REPOSITORY_PATH": clear, "SYNBAK_STATE_DIR": dir, "SYNBAK_SYNAPSE_CONFIG": filepath.Join(dir, "absent.yaml")}, "init"); code != 0 {
		t.Fatal(stderr)
	}
	code, _, stderr = runCLI(t, map[string]string{"SYNBAK_REPOSITORY_PATH": clear, "SYNBAK_STATE_DIR": dir, "SYNBAK_REPOSITORY_ENCRYPTION_RECIPIENTS": key.Recipient().String()}, "list")
	if code != 1 || !strings.Contains(stderr, "start a new repository") {
		t.Errorf("recipients on a clear repository: exit %d\n%s", code, stderr)
	}
	// A malformed recipient is a configuration error.
	code, _, stderr = runCLI(t, map[string]string{"SYNBAK_REPOSITORY_PATH": clear, "SYNBAK_STATE_DIR": dir, "SYNBAK_REPOSITORY_ENCRYPTION_RECIPIENTS": "age1notakey"}, "list")
	if code != 2 || !strings.Contains(stderr, "repository.encryption.recipients") {
		t.Errorf("malformed recipient: exit %d\n%s", code, stderr)
	}
}
