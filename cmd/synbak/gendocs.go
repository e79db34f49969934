package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenDocsCommand writes the man pages and shell completions that the
// Debian package ships (packaging/build-deb.sh). Hidden: it is a build step,
// not something an admin runs.
func newGenDocsCommand(root *cobra.Command) *cobra.Command {
	var manDir, complDir string
	cmd := &cobra.Command{
		Use:    "gendocs --man DIR --completions DIR",
		Short:  "Write man pages and shell completions (packaging)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manDir == "" && complDir == "" {
				return usageError{fmt.Errorf("give --man DIR and/or --completions DIR")}
			}
			if manDir != "" {
				if err := os.MkdirAll(manDir, 0o755); err != nil {
					return err
				}
				hdr := &doc.GenManHeader{Title: "SYNBAK", Section: "1", Source: "synbak " + currentBuild().Version, Manual: "synbak manual"}
				root.DisableAutoGenTag = true
				if err := doc.GenManTree(root, hdr, manDir); err != nil {
					return fmt.Errorf("man pages: %w", err)
				}
			}
			if complDir != "" {
				if err := os.MkdirAll(complDir, 0o755); err != nil {
					return err
				}
				gens := map[string]func(string) error{
					"synbak.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
					"_synbak":     root.GenZshCompletionFile,
					"synbak.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
				}
				for name, gen := range gens {
					if err := gen(filepath.Join(complDir, name)); err != nil {
						return fmt.Errorf("completion %s: %w", name, err)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&manDir, "man", "", "directory for the section-1 man pages")
	cmd.Flags().StringVar(&complDir, "completions", "", "directory for bash, zsh and fish completions")
	return cmd
}
