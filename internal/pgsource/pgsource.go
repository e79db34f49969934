// Package pgsource turns "where is the Synapse database" — postgres.dsn or the
// database section of homeserver.yaml — into PostgreSQL connections, and
// turns the server's refusals into errors that say what to do.
package pgsource

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Source is a PostgreSQL connection string and where it came from.
type Source struct {
	// ConnString is a libpq conninfo (keyword=value) or URL.
	ConnString string
	// Origin names where ConnString came from, for messages
	// ("postgres.dsn", "homeserver.yaml database master").
	Origin string
}

var kvPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Redacted returns the connection string with any password replaced.
func (s Source) Redacted() string { return Redact(s.ConnString) }

// Redact replaces the password in a conninfo or URL.
func Redact(cs string) string {
	if strings.HasPrefix(cs, "postgres://") || strings.HasPrefix(cs, "postgresql://") {
		u, err := url.Parse(cs)
		if err != nil {
			return "(unparseable URL, not shown)"
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "REDACTED")
			}
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(cs, "${1}REDACTED")
}

// Config parses the connection string for an ordinary connection.
func (s Source) Config() (*pgconn.Config, error) {
	c, err := pgconn.ParseConfig(s.ConnString)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid connection settings: %s", s.Origin, Redact(err.Error()))
	}
	return c, nil
}

// ReplicationConfig parses the connection string for a physical
// replication connection with the given application_name.
func (s Source) ReplicationConfig(appName string) (*pgconn.Config, error) {
	c, err := s.Config()
	if err != nil {
		return nil, err
	}
	c.RuntimeParams["replication"] = "true"
	// Replication streams are bulk data (WAL, base backups): read the
	// socket in big chunks. pgproto3 alone reads at most what its
	// 8 KiB-to-one-message buffer holds, about 16 KiB a read(2) on a
	// BASE_BACKUP stream.
	c.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, replicationReadBuffer), w)
	}
	if appName != "" {
		c.RuntimeParams["application_name"] = appName
	}
	return c, nil
}

// replicationReadBuffer is the read buffer of a replication connection.
const replicationReadBuffer = 256 << 10

// ConnectReplication opens a physical replication connection.
func (s Source) ConnectReplication(ctx context.Context, appName string) (*pgconn.PgConn, error) {
	c, err := s.ReplicationConfig(appName)
	if err != nil {
		return nil, err
	}
	conn, err := pgconn.ConnectConfig(ctx, c)
	if err != nil {
		return nil, s.explain(err, c, true)
	}
	if err := CheckVersion(conn.ParameterStatus("server_version")); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("%s (host=%s port=%d): %w", s.Origin, c.Host, c.Port, err)
	}
	return conn, nil
}

// MinMajor is the oldest PostgreSQL major version synbak works with: its
// WAL receiver needs READ_REPLICATION_SLOT and its base backups the
// BASE_BACKUP options, both of PostgreSQL 15.
const MinMajor = 15

// ErrUnsupportedVersion marks a server older than MinMajor; reconnecting
// does not help.
var ErrUnsupportedVersion = errors.New("unsupported PostgreSQL version")

// IsUnsupportedVersion reports whether err is a refusal of the server's
// version.
func IsUnsupportedVersion(err error) bool { return errors.Is(err, ErrUnsupportedVersion) }

// CheckVersion refuses a server_version (as the server reports it, e.g.
// "14.23", "16.4 (Debian 16.4-1)", "18beta1") older than MinMajor. A
// version it cannot read passes: the commands that need 15 fail on their
// own.
func CheckVersion(v string) error {
	i := 0
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		i++
	}
	major, err := strconv.Atoi(v[:i])
	if err != nil || major >= MinMajor {
		return nil
	}
	return fmt.Errorf("%w: the server runs PostgreSQL %s; synbak needs PostgreSQL %d or later: upgrade the server (pg_upgrade, or a dump and restore)",
		ErrUnsupportedVersion, v, MinMajor)
}

// Connect opens an ordinary connection (to dbname when not empty).
func (s Source) Connect(ctx context.Context, dbname string) (*pgconn.PgConn, error) {
	c, err := s.Config()
	if err != nil {
		return nil, err
	}
	if dbname != "" {
		c.Database = dbname
	}
	conn, err := pgconn.ConnectConfig(ctx, c)
	if err != nil {
		return nil, s.explain(err, c, false)
	}
	return conn, nil
}

// ErrPrivilege marks a refusal the admin must fix in PostgreSQL (role
// attributes, pg_hba.conf).
var ErrPrivilege = errors.New("not allowed by PostgreSQL")

// IsPrivilege reports whether err is a refusal fixed by granting something.
func IsPrivilege(err error) bool { return errors.Is(err, ErrPrivilege) }

// explain turns connection errors into advice.
func (s Source) explain(err error, c *pgconn.Config, replication bool) error {
	var pgErr *pgconn.PgError
	where := fmt.Sprintf("%s (host=%s port=%d user=%s)", s.Origin, c.Host, c.Port, c.User)
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "42501" && replication:
			return fmt.Errorf("%w: connect for replication as %s: role %q lacks the REPLICATION attribute: run `ALTER ROLE %s REPLICATION;` as a superuser, or set postgres.dsn to a dedicated role with REPLICATION: %s",
				ErrPrivilege, where, c.User, quoteIdent(c.User), pgErr.Message)
		case pgErr.Code == "28000" && replication && strings.Contains(pgErr.Message, "replication"):
			return fmt.Errorf("%w: connect for replication as %s: pg_hba.conf has no line allowing replication connections: add `host replication %s <this host>/32 scram-sha-256` to pg_hba.conf and reload PostgreSQL (SELECT pg_reload_conf()): %s",
				ErrPrivilege, where, c.User, pgErr.Message)
		case pgErr.Code == "28000":
			return fmt.Errorf("%w: connect as %s: pg_hba.conf refuses this connection: %s", ErrPrivilege, where, pgErr.Message)
		case pgErr.Code == "28P01":
			return fmt.Errorf("connect as %s: password authentication failed: check the password in homeserver.yaml or postgres.dsn", where)
		}
		return fmt.Errorf("connect as %s: %s (SQLSTATE %s)", where, pgErr.Message, pgErr.Code)
	}
	return fmt.Errorf("connect as %s: %s", where, Redact(err.Error()))
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
