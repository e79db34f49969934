// Package archtest enforces the package layering that docs/ARCHITECTURE.md
// describes, and keeps the doc's import graph generated from the code:
//
//	go test ./internal/archtest            # fails on a layering violation or a stale graph
//	go test ./internal/archtest -update    # rewrites the graph in docs/ARCHITECTURE.md
package archtest

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the import graph in docs/ARCHITECTURE.md")

const module = "github.com/synbak/synbak/"

// layers: a package may import synbak packages of strictly lower layers
// only. A new package must be given a layer here (and so a place in the
// architecture) before its first import is accepted.
var layers = map[string]int{
	// Foundations: no synbak imports.
	"internal/storage": 0, "internal/proc": 0, "internal/synapse": 0, "internal/pgsource": 0, "internal/config": 0,
	"internal/shutdown": 0, "internal/durable": 0,
	// Storage backends and the repository layer on top of them.
	"internal/storage/local": 1, "internal/storage/s3": 1, "internal/storage/storagetest": 1, "internal/storage/s3/versitygw": 1,
	"internal/repo": 2,
	// Domain packages, lowest first.
	"wal": 3, "mediawatch": 3, "confsnap": 3,
	"basebackup": 4,
	"restore":    5,
	"dump":       6, "drill": 6,
	"retention": 7, "verify": 7, "overview": 7,
	"agent":  8,
	"notify": 9,
	// The command line: the only package that exits, the only viper user.
	"cmd/synbak": 10,
}

// testOnly are imported from _test.go files only (and from each other and
// the benchmarks).
var testOnly = []string{"internal/pgtest", "internal/wait", "internal/golden", "internal/repo/repotest", "internal/storage/s3/s3test", "retention/retentiontest", "internal/storage/storagetest", "notify/matrixtest"}

// configFree may not import the configuration layer: domain packages take
// Options structs, a logger and their dependencies.
var configFree = []string{"internal/config", "github.com/spf13/viper", "github.com/spf13/cobra"}

type pkg struct {
	ImportPath string
	Imports    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		p.ImportPath = strings.TrimPrefix(p.ImportPath, module)
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func isBench(p string) bool { return p == "bench" || strings.HasPrefix(p, "bench/") }

func TestLayering(t *testing.T) {
	for _, p := range listPackages(t) {
		if isBench(p.ImportPath) || p.ImportPath == "internal/archtest" {
			continue
		}
		from, known := layers[p.ImportPath]
		if !known && !slices.Contains(testOnly, p.ImportPath) {
			t.Errorf("%s has no layer: give it one in internal/archtest (and a line in docs/ARCHITECTURE.md's package table)", p.ImportPath)
			continue
		}
		for _, imp := range p.Imports {
			if slices.Contains(configFree, strings.TrimPrefix(imp, module)) && p.ImportPath != "cmd/synbak" && !strings.HasPrefix(p.ImportPath, "internal/config") {
				t.Errorf("%s imports %s: only cmd/synbak reads the configuration; pass an Options struct instead", p.ImportPath, imp)
			}
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to := strings.TrimPrefix(imp, module)
			if slices.Contains(testOnly, to) {
				if !slices.Contains(testOnly, p.ImportPath) {
					t.Errorf("%s imports the test helper %s outside its tests", p.ImportPath, to)
				}
				continue
			}
			if slices.Contains(testOnly, p.ImportPath) {
				continue
			}
			if l, ok := layers[to]; ok && l >= from {
				t.Errorf("%s (layer %d) imports %s (layer %d): a package imports only lower layers (see docs/ARCHITECTURE.md, \"Who imports whom\")", p.ImportPath, from, to, l)
			}
		}
	}
}

// graph renders the synbak imports of every non-benchmark package.
func graph(pkgs []pkg) string {
	var lines []string
	width := 0
	for _, p := range pkgs {
		width = max(width, len(p.ImportPath))
	}
	for _, p := range pkgs {
		if isBench(p.ImportPath) || p.ImportPath == "internal/archtest" {
			continue
		}
		var deps []string
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module) {
				deps = append(deps, strings.TrimPrefix(imp, module))
			}
		}
		sort.Strings(deps)
		d := strings.Join(deps, ", ")
		if d == "" {
			d = "(no synbak package)"
		}
		layer := "test"
		if l, ok := layers[p.ImportPath]; ok && !slices.Contains(testOnly, p.ImportPath) {
			layer = fmt.Sprint(l)
		}
		lines = append(lines, fmt.Sprintf("%-*s  %-4s → %s", width, p.ImportPath, layer, d))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

const (
	beginMark = "<!-- imports:begin (generated: go test ./internal/archtest -update) -->\n```\n"
	endMark   = "```\n<!-- imports:end -->"
)

func TestArchitectureDocGraph(t *testing.T) {
	const doc = "../../docs/ARCHITECTURE.md"
	data, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the generated import graph between %q and %q", doc, beginMark, endMark)
	}
	want := graph(listPackages(t))
	got := s[i+len(beginMark) : j]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(doc, []byte(s[:i+len(beginMark)]+want+s[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("docs/ARCHITECTURE.md's import graph is stale: run go test ./internal/archtest -update\n--- doc\n%s--- code\n%s", got, want)
}
