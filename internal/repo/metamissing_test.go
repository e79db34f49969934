package repo

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitRefusesObjectsWithoutMetadata: Init never creates metadata where
// objects exist without it; Open says what happened instead of "run synbak
// init".
func TestInitRefusesObjectsWithoutMetadata(t *testing.T) {
	ctx := context.Background()
	r, b := initRepo(t, Options{})
	if _, err := r.Put(ctx, "wal/x", strings.NewReader("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(b.Dir(), "meta")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Init(ctx, b, Options{}); !IsMetadataMissing(err) || IsNotInitialized(err) {
		t.Fatalf("Init over objects without metadata: %v, want IsMetadataMissing", err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), "meta")); err == nil {
		t.Error("Init wrote metadata")
	}
	_, err := Open(ctx, b, Options{})
	if !IsMetadataMissing(err) || strings.Contains(err.Error(), "run synbak init") || !strings.Contains(err.Error(), "1 object but") {
		t.Errorf("Open: %v", err)
	}
	// Without any object, Init creates the repository.
	if err := os.Remove(filepath.Join(b.Dir(), "wal", "x")); err != nil {
		t.Fatal(err)
	}
	if _, created, err := Init(ctx, b, Options{}); err != nil || !created {
		t.Fatalf("Init of an empty directory: %v, %v", created, err)
	}
}
