// Package repotest creates repositories for tests: a local directory
// backend and repo.Init, failing the test on error. Tests only.
package repotest

import (
	"context"
	"testing"

	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/storage/local"
)

// New initializes a repository in dir (created if missing) with opts.
func New(t testing.TB, dir string, opts repo.Options) *repo.Repo {
	t.Helper()
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := repo.Init(context.Background(), b, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Zstd is the options most tests use: zstd at its fastest level.
var Zstd = repo.Options{Compression: "zstd", ZstdLevel: 1}
