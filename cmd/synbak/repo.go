package main

import (
	"context"
	"fmt"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
)

// openBackend returns the storage backend the configuration names.
func openBackend(cfg *config.Config) (storage.Backend, error) {
	if err := cfg.RequireRepository(); err != nil {
		return nil, err
	}
	b, err := local.New(cfg.Repository.Path)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	return b, nil
}

func repoOptions(cfg *config.Config) repo.Options {
	return repo.Options{Compression: cfg.Repository.Compression, ZstdLevel: cfg.Repository.ZstdLevel}
}

// openRepo opens an existing repository; create makes a missing one.
func openRepo(ctx context.Context, cfg *config.Config, create bool) (*repo.Repo, error) {
	b, err := openBackend(cfg)
	if err != nil {
		return nil, err
	}
	if create {
		r, _, err := repo.Init(ctx, b, repoOptions(cfg))
		return r, err
	}
	return repo.Open(ctx, b, repoOptions(cfg))
}
