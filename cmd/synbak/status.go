package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/synbak/synbak/agent"
	"github.com/synbak/synbak/internal/config"
)

func newStatusCommand(st *rootState) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "What the running agent (or the repository) says: lag, last backup, recovery window, health",
		Long: `status asks the running agent (its address is in state_dir/agent.addr, else
http.listen) for its /status and prints a summary: WAL streamed and archived,
lag behind the server, base backups, dumps, media, config snapshots, problems. It
always adds the repository's recovery window. When no agent answers it reports
from the repository alone.

Exit codes: 0 healthy; 1 unhealthy or no agent answering.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := st.load()
			if err != nil {
				return err
			}
			return runStatus(cmd.Context(), cfg, cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

// statusReport is what `synbak status --json` prints.
type statusReport struct {
	AgentAddr  string        `json:"agent_addr"`
	AgentError string        `json:"agent_error,omitempty"`
	Agent      *agent.Status `json:"agent,omitempty"`
	Repository *listing      `json:"repository,omitempty"`
	RepoError  string        `json:"repository_error,omitempty"`
	Healthy    bool          `json:"healthy"`
}

// agentAddr is where the agent listens: the address it recorded, else
// http.listen.
func agentAddr(cfg *config.Config) string {
	if b, err := os.ReadFile(agentAddrFile(cfg)); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s
		}
	}
	return cfg.HTTP.Listen
}

func fetchAgentStatus(ctx context.Context, cfg *config.Config, addr string) (*agent.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	setAgentAuth(cfg, req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: %s", resp.Status)
	}
	var st agent.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /status: %w", err)
	}
	return &st, nil
}

func runStatus(ctx context.Context, cfg *config.Config, out io.Writer, asJSON bool) error {
	rep := statusReport{AgentAddr: agentAddr(cfg)}
	st, err := fetchAgentStatus(ctx, cfg, rep.AgentAddr)
	if err != nil {
		rep.AgentError = err.Error()
	} else {
		rep.Agent = st
	}
	if r, err := openRepo(ctx, cfg, false); err != nil {
		rep.RepoError = err.Error()
	} else if l, err := buildListing(ctx, r); err != nil {
		rep.RepoError = err.Error()
	} else {
		rep.Repository = &l
	}
	rep.Healthy = rep.Agent != nil && rep.Agent.Healthy && rep.RepoError == ""
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printStatus(out, rep)
	}
	if !rep.Healthy {
		return withCode(1, errors.New("not healthy"))
	}
	return nil
}

func printStatus(out io.Writer, rep statusReport) {
	if rep.Agent == nil {
		fmt.Fprintf(out, "Agent: none answering at %s (%s)\n", rep.AgentAddr, rep.AgentError)
	} else {
		a := rep.Agent
		health := "healthy"
		if !a.Healthy {
			health = "NOT HEALTHY"
		}
		fmt.Fprintf(out, "Agent at %s: %s, up since %s\n", rep.AgentAddr, health, a.Started.UTC().Format(time.RFC3339))
		for _, p := range a.Problems {
			fmt.Fprintf(out, "  problem: %s\n", p)
		}
		if w := a.WAL; w != nil {
			state := "streaming"
			if !w.Streaming {
				state = "NOT streaming"
				if w.LastError != "" {
					state += " (" + w.LastError + ")"
				}
			}
			fmt.Fprintf(out, "WAL: %s on timeline %d; durable to %s, archived to %s", state, w.Timeline, w.Flushed, w.Archived)
			if a.Postgres != nil && a.Postgres.Up {
				fmt.Fprintf(out, "; %s behind the server", humanBytes(w.LagBytes))
			}
			fmt.Fprintln(out)
			if w.UnstoredBytes > 0 || w.Spooled > 0 || w.UploadError != "" {
				fmt.Fprintf(out, "  not yet in the repository: %s acknowledged (oldest %s ago), %d finished files in the spool",
					humanBytes(int64(w.UnstoredBytes)), (time.Duration(w.UnstoredSeconds * float64(time.Second))).Round(time.Second), w.Spooled)
				if w.UploadError != "" {
					fmt.Fprintf(out, "; last upload error: %s", w.UploadError)
				}
				fmt.Fprintln(out)
			}
		}
		if p := a.Postgres; p != nil {
			if p.Up {
				fmt.Fprintf(out, "PostgreSQL: up; slot %s behind\n", humanBytes(max(p.SlotLag, 0)))
			} else {
				fmt.Fprintf(out, "PostgreSQL: UNREACHABLE (%s)\n", p.LastError)
			}
		}
		if b := a.Backups; b != nil {
			// What the repository holds is printed below, read now; the
			// agent's part says what its schedule does.
			switch {
			case b.Running:
				fmt.Fprintf(out, "Base backup schedule: one running")
			case !b.Next.IsZero():
				fmt.Fprintf(out, "Base backup schedule: next at %s", b.Next.UTC().Format(time.RFC3339))
			default:
				fmt.Fprintf(out, "Base backup schedule: off (basebackup.interval is 0)")
			}
			if b.LastError != "" {
				fmt.Fprintf(out, "; last attempt failed: %s", b.LastError)
			}
			fmt.Fprintln(out)
		}
		if d := a.Dumps; d != nil {
			if d.Count == 0 {
				fmt.Fprintf(out, "Dumps: none yet")
			} else {
				fmt.Fprintf(out, "Dumps: %d; newest %s ended %s (%s, %.0f s)", d.Count, d.LastID, d.LastEnd.UTC().Format(time.RFC3339), humanBytes(d.LastSize), d.LastDuration)
			}
			if d.Running {
				fmt.Fprintf(out, "; one running")
			} else if !d.Next.IsZero() {
				fmt.Fprintf(out, "; next at %s", d.Next.UTC().Format(time.RFC3339))
			}
			if d.LastError != "" {
				fmt.Fprintf(out, "; LAST ATTEMPT FAILED: %s", d.LastError)
			}
			fmt.Fprintln(out)
		}
		if m := a.Media; m != nil {
			fmt.Fprintf(out, "Media: %d added, %d deleted since start (%s), %d pending\n", m.Added, m.Deleted, humanBytes(m.Bytes), m.Pending)
		}
		if c := a.Config; c != nil {
			fmt.Fprintf(out, "Config: %d files, last snapshot %s\n", c.Files, c.LastSnapshot.UTC().Format(time.RFC3339))
		}
	}
	switch {
	case rep.RepoError != "":
		fmt.Fprintf(out, "Repository: %s\n", rep.RepoError)
	case rep.Repository != nil:
		l := rep.Repository
		switch n := len(l.Backups); n {
		case 0:
			fmt.Fprintln(out, "Base backups: none complete")
		default:
			nb := l.Backups[n-1]
			fmt.Fprintf(out, "Base backups: %d complete, newest %s ended %s\n", n, nb.ID, nb.EndTime.UTC().Format(time.RFC3339))
		}
		if l.RecoveryWindow == nil {
			fmt.Fprintln(out, "Recovery window: none (a complete base backup and archived WAL are needed)")
		} else {
			fmt.Fprintf(out, "Recovery window: %s\n", l.RecoveryWindow.text())
		}
		printSizes(out, l.Sizes)
	}
}
