package main

import (
	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/pgsource"
	"github.com/synbak/synbak/internal/synapse"
)

// loadHomeserver reads the Synapse configuration synapse.config names.
func loadHomeserver(cfg *config.Config) (*synapse.Homeserver, error) {
	return synapse.Load(cfg.Synapse.Config, cfg.Synapse.Workdir)
}

// postgresSource decides how to reach the database: postgres.dsn when set,
// else the main database of homeserver.yaml (hs may be nil when postgres.dsn
// is set and homeserver.yaml could not be read).
func postgresSource(cfg *config.Config, hs *synapse.Homeserver) (pgsource.Source, error) {
	dsn, err := cfg.ResolveDSN()
	if err != nil {
		return pgsource.Source{}, err
	}
	if dsn != "" {
		origin := "postgres.dsn"
		if cfg.Postgres.DSNFile != "" {
			origin = "postgres.dsn_file " + cfg.Postgres.DSNFile
		}
		return pgsource.Source{ConnString: dsn, Origin: origin}, nil
	}
	if hs == nil {
		var err error
		if hs, err = loadHomeserver(cfg); err != nil {
			return pgsource.Source{}, err
		}
	}
	db := hs.MainDatabase()
	return pgsource.Source{ConnString: db.ConnString(), Origin: "homeserver.yaml database " + db.Name}, nil
}

// homeserverSource reads homeserver.yaml when it can and finds the
// database: hs is nil (and hsErr says why) when homeserver.yaml is
// unreadable but postgres.dsn makes it unnecessary for the database; the
// error is the reason no database can be found.
func homeserverSource(cfg *config.Config) (hs *synapse.Homeserver, hsErr error, src pgsource.Source, err error) {
	hs, hsErr = loadHomeserver(cfg)
	if hsErr != nil {
		hs = nil
	}
	src, err = postgresSource(cfg, hs)
	if err != nil && hsErr != nil {
		err = hsErr
	}
	return hs, hsErr, src, err
}
