package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DSN returns a libpq connection string for dbname over TCP as the
// superuser postgres.
func (c *Cluster) DSN(dbname string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable",
		c.Port, quoteConnValue(dbname))
}

// ReplicationDSN returns a connection string for a physical replication
// connection (replication=true: the walsender accepts IDENTIFY_SYSTEM,
// START_REPLICATION PHYSICAL, BASE_BACKUP, ...).
func (c *Cluster) ReplicationDSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable replication=true", c.Port)
}

// quoteConnValue quotes a conninfo value when it needs it.
func quoteConnValue(v string) string {
	plain := v != ""
	for _, r := range v {
		if r == ' ' || r == '\'' || r == '\\' || r == '=' {
			plain = false
		}
	}
	if plain {
		return v
	}
	out := []byte{'\''}
	for i := 0; i < len(v); i++ {
		if v[i] == '\'' || v[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, v[i])
	}
	return string(append(out, '\''))
}

// Conn opens a connection to dbname, closed when the test ends.
func (c *Cluster) Conn(t testing.TB, dbname string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(dbname))
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", dbname, err)
	}
	t.Cleanup(func() { closeConn(conn) })
	return conn
}

// ReplicationConn opens a physical replication connection, closed when the
// test ends.
func (c *Cluster) ReplicationConn(t testing.TB) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.ReplicationDSN())
	if err != nil {
		t.Fatalf("pgtest: replication connection: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// withConn runs fn on a short-lived connection to dbname.
func (c *Cluster) withConn(dbname string, fn func(ctx context.Context, conn *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(dbname))
	if err != nil {
		return fmt.Errorf("connect to %s on port %d: %w", dbname, c.Port, err)
	}
	defer closeConn(conn)
	return fn(ctx, conn)
}

// Exec runs sql on a fresh connection to dbname and fails the test on error.
func (c *Cluster) Exec(t testing.TB, dbname, sql string, args ...any) {
	t.Helper()
	err := c.withConn(dbname, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// queryValue returns the single value of a one-row, one-column query.
func queryValue[T any](t testing.TB, c *Cluster, dbname, sql string, args []any) T {
	t.Helper()
	var v T
	err := c.withConn(dbname, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, args...).Scan(&v)
	})
	if err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
	return v
}

// Int64 returns the single integer value of a query, e.g.
// "select count(*) from events".
func (c *Cluster) Int64(t testing.TB, dbname, sql string, args ...any) int64 {
	t.Helper()
	return queryValue[int64](t, c, dbname, sql, args)
}

// Text returns the single text value of a query.
func (c *Cluster) Text(t testing.TB, dbname, sql string, args ...any) string {
	t.Helper()
	return queryValue[string](t, c, dbname, sql, args)
}

// Bool returns the single boolean value of a query, e.g.
// "select pg_is_in_recovery()".
func (c *Cluster) Bool(t testing.TB, dbname, sql string, args ...any) bool {
	t.Helper()
	return queryValue[bool](t, c, dbname, sql, args)
}

// CreateDB creates database name the way Synapse wants it (UTF8, C
// collation, from template0).
func (c *Cluster) CreateDB(t testing.TB, name string) {
	t.Helper()
	c.Exec(t, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+
		" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
}

// SystemInfo is the answer to IDENTIFY_SYSTEM.
type SystemInfo struct {
	SystemID string
	Timeline int
	XLogPos  string
}

// IdentifySystem runs IDENTIFY_SYSTEM over a new replication connection.
func (c *Cluster) IdentifySystem(t testing.TB) SystemInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.ReplicationDSN())
	if err != nil {
		t.Fatalf("pgtest: replication connection: %v", err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatalf("pgtest: IDENTIFY_SYSTEM: %v", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		t.Fatalf("pgtest: IDENTIFY_SYSTEM: unexpected result %v", res)
	}
	row := res[0].Rows[0]
	tli, err := strconv.Atoi(string(row[1]))
	if err != nil {
		t.Fatalf("pgtest: IDENTIFY_SYSTEM: timeline %q: %v", row[1], err)
	}
	return SystemInfo{SystemID: string(row[0]), Timeline: tli, XLogPos: string(row[2])}
}

// Now is the server's clock (clock_timestamp()), in UTC with microseconds.
func (c *Cluster) Now(t testing.TB) time.Time {
	t.Helper()
	s := c.Text(t, "postgres", `select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`)
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

// CreatePasswordRole creates a LOGIN role with a password (plus attrs, e.g.
// "CREATEDB") and makes TCP connections as that role use scram-sha-256
// (pg_hba.conf line before the harness's trust lines; the configuration is
// reloaded). Other roles keep trust.
func (c *Cluster) CreatePasswordRole(t testing.TB, role, password string, attrs ...string) {
	t.Helper()
	c.Exec(t, "postgres", "SET password_encryption = 'scram-sha-256'; CREATE ROLE "+pgx.Identifier{role}.Sanitize()+
		" LOGIN "+strings.Join(attrs, " ")+" PASSWORD '"+strings.ReplaceAll(password, "'", "''")+"'")
	hbaPath := filepath.Join(c.DataDir, "pg_hba.conf")
	hba, err := os.ReadFile(hbaPath)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	line := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", role)
	if err := c.writeFile(hbaPath, append([]byte(line), hba...)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if c.Int64(t, "postgres", "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") != 0 {
		t.Fatalf("pgtest: pg_hba.conf has errors after adding %q", line)
	}
	c.Exec(t, "postgres", "SELECT pg_reload_conf()")
	// The postmaster rereads pg_hba.conf when it handles SIGHUP; new
	// connections see it from then on. Poll until one does.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable password=wrong-%d", c.Port, role, time.Now().UnixNano()))
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "28P01" { // invalid_password
				return
			}
		} else {
			closeConn(conn)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtest: %s can still log in without its password 30 s after the reload", role)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
