package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"go.yaml.in/yaml/v3"

	"github.com/synbak/synbak/internal/config"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/storage/s3"
)

// openBackend returns the storage backend the configuration names.
func openBackend(cfg *config.Config) (storage.Backend, error) {
	return openBackendCtx(context.Background(), cfg)
}

// s3CheckTimeout bounds the first contact with an S3 server.
const s3CheckTimeout = time.Minute

// openBackendCtx returns the storage backend the configuration names. An
// S3 bucket is contacted once (without retries), so that a missing bucket,
// refused credentials or an unreachable endpoint is a clear error at once;
// then every operation is retried on transient errors (storage.WithRetry).
func openBackendCtx(ctx context.Context, cfg *config.Config) (storage.Backend, error) {
	if err := cfg.RequireRepository(); err != nil {
		return nil, err
	}
	if cfg.Repository.URL != "" {
		return openS3(ctx, cfg)
	}
	b, err := local.New(cfg.Repository.Path)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	return b, nil
}

func openS3(ctx context.Context, cfg *config.Config) (storage.Backend, error) {
	bucket, prefix, err := cfg.Repository.S3Location()
	if err != nil {
		return nil, err
	}
	id, secret, err := cfg.Repository.S3Credentials(os.LookupEnv)
	if err != nil {
		return nil, err
	}
	s := cfg.Repository.S3
	log := newLogger(cfg, os.Stderr).With("component", "storage")
	b, err := s3.New(s3.Options{
		Endpoint:        s.Endpoint,
		Region:          s.Region,
		Bucket:          bucket,
		Prefix:          prefix,
		AccessKeyID:     id,
		SecretAccessKey: secret,
		Insecure:        s.Insecure,
		PathStyle:       s.PathStyle,
		RetryTimeout:    s.RetryTimeout.D(),
		Logger:          log,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrInvalid, err)
	}
	cctx, cancel := context.WithTimeout(ctx, s3CheckTimeout)
	defer cancel()
	if err := b.Check(cctx); err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	retryFor := s.RetryTimeout.D()
	if retryFor == 0 {
		retryFor = s3.DefaultRetryTimeout
	}
	return storage.WithRetry(b, storage.RetryOptions{
		// Outages up to repository.s3.retry_timeout cost time, not the
		// operation (a base backup, a WAL upload).
		MaxElapsed: retryFor,
		OnRetry: func(op, name string, attempt int, wait time.Duration, err error) {
			log.Warn("storage operation failed; retrying", "op", op, "object", name, "attempt", attempt, "wait", wait, "err", err)
		},
	}), nil
}

func repoOptions(cfg *config.Config) (repo.Options, error) {
	opts := repo.Options{Compression: cfg.Repository.Compression, ZstdLevel: cfg.Repository.ZstdLevel}
	enc := cfg.Repository.Encryption
	if len(enc.Recipients) > 0 {
		rs, err := age.ParseRecipients(strings.NewReader(strings.Join(enc.Recipients, "\n")))
		if err != nil {
			return opts, fmt.Errorf("%w: repository.encryption.recipients: %v (an age public key looks like age1...; make one with age-keygen)", config.ErrInvalid, err)
		}
		opts.Recipients = rs
	}
	if enc.IdentityFile != "" {
		ids, err := readIdentityFile(enc.IdentityFile)
		if err != nil {
			return opts, err
		}
		opts.Identities = ids
	}
	return opts, nil
}

// readIdentityFile parses an age identity file (age-keygen's output). Its
// content never appears in errors.
func readIdentityFile(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("repository.encryption.identity_file: %w", err)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("%w: repository.encryption.identity_file %s holds no valid age identity (a line AGE-SECRET-KEY-1..., as age-keygen writes)", config.ErrInvalid, path)
	}
	return ids, nil
}

// openRepo opens an existing repository; create makes a missing one.
func openRepo(ctx context.Context, cfg *config.Config, create bool) (*repo.Repo, error) {
	if !create && cfg.Repository.URL == "" && cfg.Repository.Path != "" {
		// Commands that only read never create the directory.
		if _, err := os.Stat(cfg.Repository.Path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("repository %s does not exist: check repository.path (or --repo); `synbak init`, the agent, `wal stream`, `backup` and `dump` create one", cfg.Repository.Path)
		}
	}
	b, err := openBackendCtx(ctx, cfg)
	if err != nil {
		return nil, err
	}
	opts, err := repoOptions(cfg)
	if err != nil {
		return nil, err
	}
	if create {
		r, _, err := repo.Init(ctx, b, opts)
		return r, err
	}
	return repo.Open(ctx, b, opts)
}

// walFetchRepoConfig is the repository section restore_command's wal-fetch
// needs, for repositories other than a local directory (restore.Options
// RepoConfig): the S3 location with the credentials resolved (wal-fetch runs
// as the server's OS user, which may not read the files or environment they
// came from). It holds the secret: the restore writes it 0600.
func walFetchRepoConfig(cfg *config.Config) (string, error) {
	if cfg.Repository.URL == "" {
		return "", nil
	}
	id, secret, err := cfg.Repository.S3Credentials(os.LookupEnv)
	if err != nil {
		return "", err
	}
	s := cfg.Repository.S3
	type s3Section struct {
		Endpoint        string `yaml:"endpoint"`
		Region          string `yaml:"region,omitempty"`
		AccessKeyID     string `yaml:"access_key_id,omitempty"`
		SecretAccessKey string `yaml:"secret_access_key,omitempty"`
		Insecure        bool   `yaml:"insecure"`
		PathStyle       bool   `yaml:"path_style"`
	}
	type repoSection struct {
		URL string    `yaml:"url"`
		S3  s3Section `yaml:"s3"`
	}
	b, err := yaml.Marshal(map[string]repoSection{"repository": {URL: cfg.Repository.URL, S3: s3Section{
		Endpoint: s.Endpoint, Region: s.Region, AccessKeyID: id, SecretAccessKey: secret, Insecure: s.Insecure, PathStyle: s.PathStyle,
	}}})
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// identityBytes is the identity file's content for restore_command (nil
// when none is configured).
func identityBytes(cfg *config.Config) ([]byte, error) {
	if cfg.Repository.Encryption.IdentityFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(cfg.Repository.Encryption.IdentityFile)
	if err != nil {
		return nil, fmt.Errorf("repository.encryption.identity_file: %w", err)
	}
	return b, nil
}

// fetchSettings is what restore_command's wal-fetch needs besides the
// repository itself (restore.Options / drill.Options RepoPath, RepoConfig,
// Identity).
type fetchSettings struct {
	path, config string
	identity     []byte
}

func walFetchSettings(cfg *config.Config) (fetchSettings, error) {
	repoCfg, err := walFetchRepoConfig(cfg)
	if err != nil {
		return fetchSettings{}, err
	}
	identity, err := identityBytes(cfg)
	if err != nil {
		return fetchSettings{}, err
	}
	return fetchSettings{path: cfg.Repository.Path, config: repoCfg, identity: identity}, nil
}
