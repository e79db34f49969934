package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Target says where recovery stops. The zero Target recovers to the end of
// the archive (latest).
type Target struct {
	// Time is a recovery_target_time in a form PostgreSQL accepts.
	Time string
	// LSN is a recovery_target_lsn (X/X).
	LSN string
	// Immediate stops as soon as the backup is consistent.
	Immediate bool
}

func (t Target) settings() ([][2]string, error) {
	n := 0
	var out [][2]string
	if t.Time != "" {
		n++
		out = append(out, [2]string{"recovery_target_time", t.Time})
	}
	if t.LSN != "" {
		n++
		out = append(out, [2]string{"recovery_target_lsn", t.LSN})
	}
	if t.Immediate {
		n++
		out = append(out, [2]string{"recovery_target", "immediate"})
	}
	if n > 1 {
		return nil, fmt.Errorf("recovery target: set only one of time, LSN and immediate")
	}
	if n == 1 {
		out = append(out, [2]string{"recovery_target_inclusive", "on"})
	}
	out = append(out, [2]string{"recovery_target_timeline", "latest"}, [2]string{"recovery_target_action", "promote"})
	return out, nil
}

// WriteRecoveryConfig prepares an extracted data directory for archive
// recovery: it appends restore_command and the target's settings (with
// recovery_target_action = 'promote') to postgresql.auto.conf and creates
// an empty recovery.signal, and removes a standby.signal (a backup of a
// standby) along with its primary_conninfo. owner, when not nil, is given
// both files.
func WriteRecoveryConfig(pgdata, restoreCommand string, target Target, owner *Owner) error {
	if restoreCommand == "" {
		return fmt.Errorf("restore_command is empty")
	}
	settings, err := target.settings()
	if err != nil {
		return err
	}
	var sb strings.Builder
	sb.WriteString("\n# Added by synbak restore; remove after the restore.\n")
	sb.WriteString(setting("restore_command", restoreCommand))
	// A backup taken from a standby carries its primary_conninfo and a
	// standby.signal: in standby mode recovery never ends at the end of the
	// archive and the restored server would follow the old primary.
	sb.WriteString(setting("primary_conninfo", ""))
	sb.WriteString(setting("primary_slot_name", ""))
	for _, s := range settings {
		sb.WriteString(setting(s[0], s[1]))
	}
	x := &extractor{owner: owner}
	auto := filepath.Join(pgdata, "postgresql.auto.conf")
	f, err := os.OpenFile(auto, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("write recovery settings: %w", err)
	}
	if _, err := f.WriteString(sb.String()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", auto, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", auto, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := x.chown(auto); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(pgdata, "standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove standby.signal: %w", err)
	}
	signal := filepath.Join(pgdata, "recovery.signal")
	if err := x.writeFile(signal, nil, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", signal, err)
	}
	return nil
}

// setting renders one postgresql.conf line with a quoted value.
func setting(name, value string) string {
	return fmt.Sprintf("%s = '%s'\n", name, strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(value))
}
