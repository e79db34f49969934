package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synbak/synbak/retention/retentiontest"
)

// pruneWorld is a synthetic repository whose Now is the real clock's (see
// retentiontest.World), pruned with 2 backups and a 36 h window: the anchor
// is B2, so B0, B1 and the abandoned incomplete backup go.
func pruneWorld(t *testing.T) (*retentiontest.World, map[string]string) {
	w := retentiontest.New(t, time.Now().Add(-4*retentiontest.Day-12*time.Hour))
	env := map[string]string{"SYNBAK_RETENTION_BACKUPS": "2", "SYNBAK_RETENTION_WINDOW": "36h"}
	return w, env
}

func TestPruneDryRun(t *testing.T) {
	w, env := pruneWorld(t)
	before := w.Names(t)
	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	b := w.Backups
	for _, want := range []string{
		"Retention: keep the newest 2 backups and everything needed for the last 36h",
		"Anchor: " + b[2].ID,
		"Backups kept (3): " + b[2].ID + ", " + b[3].ID + ", " + b[4].ID,
		"Incomplete backups left alone (running, or not abandoned for 24h0m0s yet): " + w.StaleRecent + ", " + w.InProgress,
		"Would delete:",
		"  backup " + b[0].ID + "  complete    4 objects",
		"  backup " + w.Abandoned + "  incomplete  2 objects",
		"  backup " + b[1].ID + "  complete    4 objects",
		"  WAL timeline 1: 000000010000000000000002 .. 000000010000000000000005  (4 objects",
		"  media objects: 3 (",
		"  config objects: 1 (",
		"  total: 18 objects",
		"Recovery window before: " + b[0].EndTime.UTC().Format(time.RFC3339) + " to " + w.End.UTC().Format(time.RFC3339),
		"Recovery window after:  " + b[2].EndTime.UTC().Format(time.RFC3339) + " to " + w.End.UTC().Format(time.RFC3339),
		"Dry run: nothing was deleted.",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, b[2].ID+"  complete") || strings.Contains(stdout, "WAL timeline 2") {
		t.Errorf("plans to delete what the window needs:\n%s", stdout)
	}
	if diff := cmp.Diff(before, w.Names(t)); diff != "" {
		t.Errorf("--dry-run changed the repository (-before +after):\n%s", diff)
	}

	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run", "--json")
	if code != 0 {
		t.Fatalf("--json: exit %d: %s", code, stderr)
	}
	var rep struct {
		DryRun bool `json:"dry_run"`
		Plan   struct {
			Anchor string                   `json:"anchor"`
			Delete []struct{ ID string }    `json:"delete_backups"`
			After  struct{ From time.Time } `json:"recovery_window_after"`
		} `json:"plan"`
		Result *json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	if !rep.DryRun || rep.Plan.Anchor != b[2].ID || len(rep.Plan.Delete) != 3 || !rep.Plan.After.From.Equal(b[2].EndTime) || rep.Result != nil {
		t.Errorf("--json: %+v", rep)
	}
	if diff := cmp.Diff(before, w.Names(t)); diff != "" {
		t.Errorf("--dry-run --json changed the repository (-before +after):\n%s", diff)
	}
}

func TestPruneDeletes(t *testing.T) {
	w, env := pruneWorld(t)
	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "Deleted:\n  backup "+w.Backups[0].ID) || strings.Contains(stdout, "Dry run") {
		t.Errorf("output:\n%s", stdout)
	}
	if !strings.Contains(stderr, "deleted base backup") {
		t.Errorf("log lacks the deletions:\n%s", stderr)
	}
	for _, n := range w.Names(t) {
		if strings.HasPrefix(n, "backups/"+w.Backups[0].ID) || strings.HasPrefix(n, "wal/00000001/000000010000000000000002") {
			t.Errorf("%s left", n)
		}
	}
	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run")
	if code != 0 || !strings.Contains(stdout, "total: 0 objects") {
		t.Errorf("second prune: exit %d, %s\n%s", code, stderr, stdout)
	}
	// retention.backups 0 is a configuration error (exit 2).
	code, _, stderr = runCLI(t, map[string]string{"SYNBAK_RETENTION_BACKUPS": "0"}, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run")
	if code != 2 || !strings.Contains(stderr, "retention.backups 0: must be at least 1") {
		t.Errorf("retention.backups 0: exit %d, %s", code, stderr)
	}
}

// Dumps: the newest retention.dumps stay (7 by default keeps all four, and
// the oldest moves the media horizon back); the others and the abandoned
// incomplete one go, dump.json first.
func TestPruneDumps(t *testing.T) {
	w, env := pruneWorld(t)
	w.AddDumps(t)
	d := w.Dumps
	code, stdout, stderr := runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"Dumps kept (4, the newest 7): " + d[0].ID + ", " + d[1].ID + ", " + d[2].ID + ", " + d[3].ID,
		"Incomplete dumps left alone (running, or not abandoned for 24h0m0s yet): " + w.DumpRunning,
		"Media and config kept as of: " + d[0].StartTime.UTC().Format(time.RFC3339),
		"  dump " + w.DumpAbandoned + "  incomplete  1 objects",
		"  media objects: 1 (",
		"  config objects: 0 (",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	env["SYNBAK_RETENTION_DUMPS"] = "2"
	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		Plan struct {
			KeptDumps   []string              `json:"kept_dumps"`
			DeleteDumps []struct{ ID string } `json:"delete_dumps"`
		} `json:"plan"`
		Result struct {
			Dumps int `json:"dumps"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	var del []string
	for _, x := range rep.Plan.DeleteDumps {
		del = append(del, x.ID)
	}
	if diff := cmp.Diff([]string{d[0].ID, w.DumpAbandoned, d[1].ID}, del); diff != "" || rep.Result.Dumps != 3 ||
		!cmp.Equal([]string{d[2].ID, d[3].ID}, rep.Plan.KeptDumps) {
		t.Errorf("plan: kept %v, %d deleted, deleted (-want +got):\n%s", rep.Plan.KeptDumps, rep.Result.Dumps, diff)
	}
	if !strings.Contains(stderr, "deleted dump") {
		t.Errorf("log lacks the deletions:\n%s", stderr)
	}
	for _, n := range w.Names(t) {
		for _, id := range []string{d[0].ID, d[1].ID, w.DumpAbandoned} {
			if strings.HasPrefix(n, "dumps/"+id+"/") {
				t.Errorf("%s left", n)
			}
		}
	}
	code, stdout, stderr = runCLI(t, env, "-c", "/dev/null", "--repo", w.Dir, "prune", "--dry-run")
	if code != 0 || !strings.Contains(stdout, "  dumps: none") || !strings.Contains(stdout, "total: 0 objects") {
		t.Errorf("second prune: exit %d, %s\n%s", code, stderr, stdout)
	}
}
