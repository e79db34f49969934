package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/wal"
)

func newInitCommand(st *rootState) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the repository (idempotent); bind it to the PostgreSQL cluster when reachable",
		Long: `init creates the repository. Running it again is harmless. When PostgreSQL is
reachable (homeserver.yaml or postgres.dsn), the repository is bound to the
cluster's system identifier, and a repository that belongs to another cluster
is refused. agent, wal stream and backup create a missing repository
themselves.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runInit(cmd.Context(), cmd.OutOrStdout(), cfg)
		},
	}
}

func runInit(ctx context.Context, w io.Writer, cfg *config.Config) error {
	b, err := openBackend(cfg)
	if err != nil {
		return err
	}
	opts, err := repoOptions(cfg)
	if err != nil {
		return err
	}
	r, created, err := repo.Init(ctx, b, opts)
	if err != nil {
		return err
	}
	how := "not encrypted"
	if r.Meta().Encrypted {
		how = "encrypted with age"
	}
	if created {
		fmt.Fprintf(w, "created repository %s (%s)\n", b, how)
	} else {
		fmt.Fprintf(w, "repository %s already exists (%s)\n", b, how)
	}
	src, err := postgresSource(cfg, nil)
	if err != nil {
		fmt.Fprintf(w, "PostgreSQL not configured (%s): the repository will be bound to the cluster on first connection\n", oneLine(err))
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := src.ConnectReplication(cctx, cfg.Postgres.Slot)
	if err != nil {
		fmt.Fprintf(w, "PostgreSQL not reachable (%s): the repository will be bound to the cluster on first connection\n", oneLine(err))
		return nil
	}
	defer conn.Close(context.Background())
	sysid, err := wal.BindRepository(cctx, conn, r)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "repository bound to PostgreSQL system identifier %s\n", sysid)
	return nil
}
