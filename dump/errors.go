package dump

import "errors"

var (
	// ErrNoDump: the requested dump does not exist (or none does).
	ErrNoDump = errors.New("no such dump")
	// ErrTargetNotEmpty: the target database exists and has tables.
	ErrTargetNotEmpty = errors.New("the target database is not empty")
	// ErrTool: pg_dump or pg_restore is missing, too old, or failed.
	ErrTool = errors.New("PostgreSQL client tool")
)

// IsNoDump reports whether err says the requested dump does not exist.
func IsNoDump(err error) bool { return errors.Is(err, ErrNoDump) }

// IsTargetNotEmpty reports whether a restore was refused because its
// target database already has tables.
func IsTargetNotEmpty(err error) bool { return errors.Is(err, ErrTargetNotEmpty) }

// IsTool reports whether err is about pg_dump or pg_restore.
func IsTool(err error) bool { return errors.Is(err, ErrTool) }
