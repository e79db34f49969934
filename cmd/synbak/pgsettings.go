package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/repo"
)

// postgresFiles follows PostgreSQL's own settings files (postgresql.conf,
// pg_hba.conf, pg_ident.conf and their includes, where they live outside
// the data directory, as on Debian) for config snapshots.
func postgresFiles(src pgsource.Source, r *repo.Repo, log *slog.Logger) *confsnap.PostgresFiles {
	return confsnap.NewPostgresFiles(serverSettings(src), r, log, 0)
}

// serverSettings returns a function asking the server where its settings
// files are, over an ordinary connection. The four settings are readable
// only by superusers and members of pg_read_all_settings; a refusal says
// what to grant.
func serverSettings(src pgsource.Source) func(ctx context.Context) (confsnap.ServerSettings, error) {
	return func(ctx context.Context) (confsnap.ServerSettings, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		conn, err := src.Connect(ctx, "")
		if err != nil {
			return confsnap.ServerSettings{}, err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		res := conn.ExecParams(ctx, "SELECT current_setting('config_file'), current_setting('hba_file'), current_setting('ident_file'), current_setting('data_directory')", nil, nil, nil, nil).Read()
		if res.Err != nil {
			var pgErr *pgconn.PgError
			if errors.As(res.Err, &pgErr) && pgErr.Code == "42501" {
				user := "<role>"
				if c, cerr := src.Config(); cerr == nil {
					user = `"` + c.User + `"`
				}
				return confsnap.ServerSettings{}, fmt.Errorf("%w: %s: the role may not read config_file, hba_file, ident_file and data_directory, so PostgreSQL's own settings files are not in the config snapshots: run `GRANT pg_read_all_settings TO %s;` as a superuser: %s",
					pgsource.ErrPrivilege, src.Origin, user, pgErr.Message)
			}
			return confsnap.ServerSettings{}, fmt.Errorf("%s: ask where PostgreSQL's settings files are: %w", src.Origin, res.Err)
		}
		if len(res.Rows) != 1 || len(res.Rows[0]) != 4 {
			return confsnap.ServerSettings{}, fmt.Errorf("%s: ask where PostgreSQL's settings files are: unexpected answer", src.Origin)
		}
		row := res.Rows[0]
		return confsnap.ServerSettings{ConfigFile: string(row[0]), HbaFile: string(row[1]), IdentFile: string(row[2]), DataDirectory: string(row[3])}, nil
	}
}
