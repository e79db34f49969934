package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// hasClientTool reports whether Tool(name) is of this cluster's major or
// newer, so that it talks to this server (pg_basebackup, pg_dump and
// pg_waldump refuse newer servers or their WAL).
func (c *Cluster) hasClientTool(t testing.TB, name string) bool {
	t.Helper()
	p := c.Tool(name)
	if !filepath.IsAbs(p) {
		return false
	}
	m, err := serverMajor(filepath.Dir(p))
	if err != nil {
		return false // a client-only directory: no postgres to ask
	}
	return m >= c.Major(t)
}

// copyBackup makes dst's data directory a standby of c the low-level way:
// pg_backup_start, a copy of the data directory without the files
// pg_basebackup leaves out, pg_backup_stop's backup_label and
// tablespace_map, then standby.signal and primary_conninfo. The standby
// streams the WAL from the backup's start from c, which keeps it: the
// backup's checkpoint is its newest.
func (c *Cluster) copyBackup(dst *Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, "SELECT pg_backup_start('pgtest standby', true)"); err != nil {
		return fmt.Errorf("pg_backup_start: %w", err)
	}
	if err := copyDataDir(c.DataDir, dst.DataDir); err != nil {
		return err
	}
	var label, spcmap string
	if err := conn.QueryRow(ctx, "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)").Scan(&label, &spcmap); err != nil {
		return fmt.Errorf("pg_backup_stop: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dst.DataDir, "backup_label"), []byte(label), 0o600); err != nil {
		return err
	}
	if spcmap != "" {
		if err := os.WriteFile(filepath.Join(dst.DataDir, "tablespace_map"), []byte(spcmap), 0o600); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dst.DataDir, "standby.signal"), nil, 0o600); err != nil {
		return err
	}
	auto := filepath.Join(dst.DataDir, "postgresql.auto.conf")
	f, err := os.OpenFile(auto, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "primary_conninfo = 'host=127.0.0.1 port=%d user=postgres sslmode=disable'\n", c.Port)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return dst.user.chownTree(dst.DataDir)
}

// copyDataDir copies a running server's data directory as pg_basebackup
// would: pg_wal, pg_replslot, pg_stat_tmp and the like empty, no
// postmaster.pid; files that vanish meanwhile skipped.
func copyDataDir(src, dst string) error {
	emptyDirs := map[string]bool{"pg_wal": true, "pg_replslot": true, "pg_stat_tmp": true,
		"pg_dynshmem": true, "pg_notify": true, "pg_serial": true, "pg_snapshots": true, "pg_subtrans": true}
	skipFiles := map[string]bool{"postmaster.pid": true, "postmaster.opts": true, "backup_label": true,
		"tablespace_map": true, "standby.signal": true, "recovery.signal": true}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		top := strings.Split(rel, string(filepath.Separator))[0]
		if d.IsDir() {
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			if rel != top || !emptyDirs[top] {
				return nil
			}
			if top == "pg_wal" {
				for _, sub := range []string{"archive_status", "summaries"} {
					if _, err := os.Stat(filepath.Join(p, sub)); err != nil {
						continue
					}
					if err := os.Mkdir(filepath.Join(target, sub), 0o700); err != nil {
						return err
					}
				}
			}
			return filepath.SkipDir
		}
		if rel == top && skipFiles[rel] || strings.HasPrefix(d.Name(), "pgsql_tmp") {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s: tablespaces are not supported by the copy", p)
		}
		return copyFile(p, target)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}
