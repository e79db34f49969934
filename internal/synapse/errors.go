package synapse

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinels for the problems Load reports. Every error Load returns is an
// *Error that matches exactly one of them with errors.Is, and IsInvalid is true
// for all of them.
var (
	// ErrNotFound: a config path does not exist, or a directory holds no *.yaml file.
	ErrNotFound = errors.New("synapse config not found")
	// ErrUnreadable: a config path exists but cannot be read (permissions, I/O).
	ErrUnreadable = errors.New("synapse config unreadable")
	// ErrSyntax: a config file is not valid YAML.
	ErrSyntax = errors.New("synapse config syntax error")
	// ErrType: a setting synbak reads has the wrong type, or a file's top
	// level is not a mapping.
	ErrType = errors.New("synapse config setting has the wrong type")
	// ErrNoServerName: no file sets server_name.
	ErrNoServerName = errors.New("synapse config has no server_name")
	// ErrSQLite: the homeserver uses SQLite (explicitly, by default, or
	// through database_path), which continuous backup cannot follow.
	ErrSQLite = errors.New("synapse uses sqlite3")
	// ErrEngine: database.name is neither psycopg2 (psycopg) nor sqlite3.
	ErrEngine = errors.New("unsupported synapse database engine")
	// ErrDatabase: the database settings are inconsistent (both database and
	// databases, no entry holding main or state, an args key that is not a
	// libpq keyword, ...).
	ErrDatabase = errors.New("invalid synapse database settings")
	// ErrConflict: two settings that exclude each other are both set
	// (backup_media_store_path and media_storage_providers).
	ErrConflict = errors.New("conflicting synapse settings")
)

// Error is a problem in Synapse's configuration. Its message names the file
// (and line, when known), the setting, the problem and the fix. It never holds
// a setting's value, so no password can leak through it.
type Error struct {
	// Kind is one of the package's sentinels (ErrNotFound, ErrSQLite, ...).
	Kind error
	// File is the config file (or path given) the problem is in; may be "".
	File string
	// Line is the 1-based line in File; 0 when unknown.
	Line int
	// Key is the dotted setting name (database.args.port); may be "".
	Key string
	// Problem says what is wrong.
	Problem string
	// Fix says what to do about it.
	Fix string
	// Err is the underlying cause (an *fs.PathError), if any.
	Err error
}

// Error formats the problem as "file:line: key: problem; fix".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

// Unwrap gives errors.Is/As access to the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// IsInvalid reports whether err comes from reading Synapse's configuration
// (any of this package's errors): the homeserver configuration is missing or
// invalid, which the command line reports with exit code 2.
func IsInvalid(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// IsNotExist reports whether err says that a config path does not exist.
func IsNotExist(err error) bool { return errors.Is(err, ErrNotFound) }

// IsSQLite reports whether err says that the homeserver uses SQLite.
func IsSQLite(err error) bool { return errors.Is(err, ErrSQLite) }
