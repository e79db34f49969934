package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time by packaging/build-deb.sh (and any release build):
//
//	go build -ldflags "-X main.version=0.9.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/synbak
//
// A plain `go build` leaves them empty; then the module version and the VCS
// stamp Go records (when built with -buildvcs) stand in.
var (
	version = ""
	commit  = ""
)

// buildInfo is what `synbak version` and the synbak_build_info metric report.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func currentBuild() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func newVersionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print synbak's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printVersion(cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}

func printVersion(w io.Writer, asJSON bool) error {
	b := currentBuild()
	if asJSON {
		return printJSON(w, b)
	}
	mod := ""
	if b.Modified {
		mod = " (modified)"
	}
	_, err := fmt.Fprintf(w, "synbak %s\ncommit: %s%s\ngo: %s %s\n", b.Version, b.Commit, mod, b.GoVersion, b.Platform)
	return err
}
