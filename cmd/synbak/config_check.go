package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/pgsource"
)

func newConfigCommand(st *rootState) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect synbak's configuration",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Print the resolved configuration (secrets redacted) and what was discovered from homeserver.yaml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runConfigCheck(cmd.OutOrStdout(), cfg)
		},
	})
	return cmd
}

// runConfigCheck prints the configuration and the discovery result. It
// fails (exit 2) when homeserver.yaml cannot be read, unless postgres.dsn
// makes it unnecessary for the database.
func runConfigCheck(w io.Writer, cfg *config.Config) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("synbak configuration\n")
	repoDesc := cfg.Repository.Path + " (local directory)"
	if cfg.Repository.URL != "" {
		repoDesc = cfg.Repository.URL
	}
	if cfg.Repository.Path == "" && cfg.Repository.URL == "" {
		repoDesc = "(not set: use --repo or repository.path)"
	}
	p("  repository:            %s\n", repoDesc)
	p("  compression:           %s (zstd level %d)\n", cfg.Repository.Compression, cfg.Repository.ZstdLevel)
	if enc := cfg.Repository.Encryption; len(enc.Recipients) > 0 {
		p("  encryption:            age, %d recipient(s); identity_file %s\n", len(enc.Recipients), identityOrNone(enc.IdentityFile))
	} else {
		p("  encryption:            none\n")
		p("  WARNING: the repository is not encrypted: config snapshots, the signing key and homeserver.yaml's\n" +
			"           database password are stored in clear. Set repository.encryption.recipients (age public keys)\n" +
			"           when creating a repository on storage others can read.\n")
	}
	p("  state_dir:             %s\n", cfg.StateDir)
	p("  postgres.slot:         %s\n", cfg.Postgres.Slot)
	if cfg.Postgres.DSN != "" {
		p("  postgres.dsn:          %s\n", pgsource.Redact(cfg.Postgres.DSN))
	}
	if cfg.Postgres.DSNFile != "" {
		p("  postgres.dsn_file:     %s\n", cfg.Postgres.DSNFile)
	}
	p("  wal:                   status every %s, partial segment stored every %s, synchronous %t\n",
		cfg.WAL.StatusInterval, cfg.WAL.PartialInterval, cfg.WAL.Synchronous)
	p("  basebackup.interval:   %s\n", cfg.Basebackup.Interval)
	p("  basebackup.full_interval: %s\n", cfg.Basebackup.FullInterval)
	keepDumps := fmt.Sprintf("the newest %d dumps", cfg.Retention.Dumps)
	if cfg.Retention.Dumps == 0 {
		keepDumps = "every dump"
	}
	p("  retention:             %d backups, window %s, %s\n", cfg.Retention.Backups, cfg.Retention.Window, keepDumps)
	if cfg.Dump.Interval.D() > 0 {
		p("  dump.interval:         %s (logical dumps with pg_dump, parts of %d MiB)\n", cfg.Dump.Interval, cfg.Dump.PartSizeMB)
	} else {
		p("  dump.interval:         0 (the agent takes no logical dumps; `synbak dump` takes one)\n")
	}
	p("  http.listen:           %s\n", cfg.HTTP.Listen)
	p("  log:                   %s, %s\n", cfg.Log.Level, cfg.Log.Format)

	hs, err := loadHomeserver(cfg)
	if err != nil {
		return err
	}
	p("\nSynapse (synapse.config %s, workdir %s)\n", strings.Join(cfg.Synapse.Config, ", "), cfg.Synapse.Workdir)
	p("  config files read:     %s\n", strings.Join(hs.Files, ", "))
	p("  server_name:           %s\n", hs.ServerName)
	for _, db := range hs.Databases {
		p("  database %-12s  %s (data stores: %s)\n", db.Name+":", db.Redacted(), strings.Join(db.DataStores, ", "))
	}
	src, err := postgresSource(cfg, hs)
	if err != nil {
		return err
	}
	p("  backup connects with:  %s (from %s)\n", src.Redacted(), src.Origin)
	if dumps, err := dumpSources(cfg, hs); err == nil {
		for _, d := range dumps {
			ci, _, err := pgsource.ToolArgs(d.Params)
			if err != nil {
				ci = err.Error()
			}
			p("  dump connects with:    %s (from %s; password through PGPASSWORD)\n", ci, d.Origin)
		}
	}
	p("  media_store_path:      %s\n", hs.MediaStorePath)
	thumbs := "local_thumbnails backed up"
	if hs.DynamicThumbnails {
		thumbs = "local_thumbnails skipped (dynamic_thumbnails: true)"
	}
	p("  media backed up:       local_content; %s\n", thumbs)
	for _, msp := range hs.MediaStorageProviders {
		p("  media storage provider: %s\n", msp.String())
	}
	if hs.SigningKeyInline {
		p("  signing key:           inline in homeserver.yaml (backed up with it)\n")
	} else {
		p("  signing key:           %s\n", hs.SigningKeyPath)
	}
	p("\nFiles backed up with each config snapshot\n")
	missing := 0
	for _, f := range hs.BackupFiles() {
		state := "present"
		if _, err := os.Stat(f.Path); err != nil {
			state = "MISSING"
			missing++
		}
		secret := ""
		if f.Secret {
			secret = " (secret)"
		}
		p("  %-8s %-28s %s%s\n", state, f.Role, f.Path, secret)
	}
	if missing > 0 {
		p("\n%d file(s) missing: they cannot be backed up until they exist.\n", missing)
	}
	return nil
}

func identityOrNone(s string) string {
	if s == "" {
		return "(none: restores and wal-fetch need one)"
	}
	return s
}
