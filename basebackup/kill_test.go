package basebackup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/internal/pgtest"
)

// TestKilledBackup kills `synbak backup` (kill -9) halfway through: the
// backup must not be listed as complete, and the next one must succeed.
func TestKilledBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	bin := pgtest.SynbakBinary(t)
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: initdbArgs, Conf: append([]string{"fsync = off"}, clusterConf...)})
	c.Pgbench(t, "postgres", "-i", "-s", "15", "-q")
	repoDir, stateDir := t.TempDir(), t.TempDir()
	env := append(os.Environ(),
		"SYNBAK_POSTGRES_DSN="+c.DSN("postgres"),
		"SYNBAK_STATE_DIR="+stateDir,
		"SYNBAK_REPOSITORY_PATH="+repoDir,
		"SYNBAK_BASEBACKUP_PART_SIZE_MB=1",
		"SYNBAK_BASEBACKUP_WAL_TIMEOUT=2m",
		"SYNBAK_WAL_PARTIAL_INTERVAL=500ms",
		"SYNBAK_LOG_LEVEL=debug",
	)
	run := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"-c", "/dev/null"}, args...)...)
		cmd.Env = env
		return cmd
	}

	// Start a backup and kill it once some of its parts are stored.
	var stderr bytes.Buffer
	cmd := run("backup")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var killedID string
	waitFor(t, 2*time.Minute, "stored backup parts", func() bool {
		dirs, _ := os.ReadDir(filepath.Join(repoDir, "backups"))
		for _, d := range dirs {
			parts, _ := filepath.Glob(filepath.Join(repoDir, "backups", d.Name(), "base.tar.*"))
			if len(parts) >= 20 {
				killedID = d.Name()
				return true
			}
		}
		return false
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	t.Logf("killed backup %s (%v); its log:\n%s", killedID, err, stderr.String())
	if strings.Contains(stderr.String(), "base backup complete") {
		t.Fatal("the backup completed before it was killed: make the database bigger")
	}

	r := newRepo(t, repoDir)
	ctx := context.Background()
	if list, err := basebackup.List(ctx, r); err != nil || len(list) != 0 {
		t.Fatalf("after kill -9: List = %+v, %v; want no complete backup", list, err)
	}
	inc, err := basebackup.ListIncomplete(ctx, r)
	if err != nil || len(inc) != 1 || inc[0].ID != killedID {
		t.Fatalf("after kill -9: ListIncomplete = %+v, %v; want %s", inc, err, killedID)
	}

	// The next backup succeeds.
	stderr.Reset()
	cmd = run("backup")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("second backup: %v\n%s", err, stderr.String())
	}
	id := strings.TrimSpace(string(out))
	list, err := basebackup.List(ctx, r)
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("List = %+v, %v; want backup %q", list, err, id)
	}

	// synbak list shows both, the killed one as incomplete.
	out, err = run("list", "--json").Output()
	if err != nil {
		t.Fatalf("synbak list: %v", err)
	}
	var l struct {
		Backups []struct {
			ID         string `json:"id"`
			StoredSize int64  `json:"stored_size"`
		} `json:"backups"`
		Incomplete []struct {
			ID string `json:"id"`
		} `json:"incomplete_backups"`
		WAL []struct {
			Timeline uint32            `json:"timeline"`
			Ranges   []json.RawMessage `json:"ranges"`
		} `json:"wal"`
		RecoveryWindow *struct {
			From, To time.Time
		} `json:"recovery_window"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("synbak list --json: %v\n%s", err, out)
	}
	if len(l.Backups) != 1 || l.Backups[0].ID != id || l.Backups[0].StoredSize == 0 ||
		len(l.Incomplete) != 1 || l.Incomplete[0].ID != killedID ||
		len(l.WAL) != 1 || l.WAL[0].Timeline != 1 || len(l.WAL[0].Ranges) == 0 ||
		l.RecoveryWindow == nil || l.RecoveryWindow.To.Before(l.RecoveryWindow.From) {
		t.Errorf("synbak list --json:\n%s", out)
	}
	text, err := run("list").Output()
	if err != nil || !strings.Contains(string(text), "  "+killedID+"  INCOMPLETE") || !strings.Contains(string(text), "Recovery window: ") {
		t.Errorf("synbak list: %v\n%s", err, text)
	}
	t.Logf("synbak list:\n%s", text)
}
