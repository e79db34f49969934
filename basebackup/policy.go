package basebackup

import (
	"context"
	"fmt"
	"time"

	"github.com/synbak/synbak/internal/repo"
)

// Mode says which kind of backup the caller wants.
type Mode int

const (
	// ModeAuto: incremental on top of the newest complete backup while
	// the full backup its chain starts with is younger than the full
	// interval; full otherwise (the agent's rule, and `synbak backup`'s
	// without --full or --incremental).
	ModeAuto Mode = iota
	// ModeFull: always a full backup (`synbak backup --full`).
	ModeFull
	// ModeIncremental: incremental on top of the newest complete backup
	// whatever its age (`synbak backup --incremental`).
	ModeIncremental
)

// ChooseParent picks the parent of the next backup: the newest complete
// backup in r, when mode and fullInterval (0: every backup is full in
// ModeAuto) allow an incremental one and its chain is complete. It returns
// nil and the reason when the next backup should be full (the reason is
// empty for ModeFull). Take may still refuse the parent (the server is
// older than 17, summarize_wal is off ...) and take a full backup.
func ChooseParent(ctx context.Context, r *repo.Repo, mode Mode, fullInterval time.Duration, now time.Time) (*Backup, string, error) {
	if mode == ModeFull {
		return nil, "", nil
	}
	if mode == ModeAuto && fullInterval <= 0 {
		return nil, "basebackup.full_interval is 0: every backup is full", nil
	}
	all, err := List(ctx, r)
	if err != nil {
		return nil, "", err
	}
	if len(all) == 0 {
		return nil, "no complete backup to build on yet", nil
	}
	newest := all[len(all)-1]
	chain, err := LoadChain(ctx, r, newest)
	if err != nil {
		if IsChainBroken(err) {
			return nil, fmt.Sprintf("the newest backup cannot be a parent: %v", err), nil
		}
		return nil, "", err
	}
	full := chain[0]
	if mode == ModeAuto && now.Sub(full.StartTime) >= fullInterval {
		return nil, fmt.Sprintf("the newest full backup %s is older than basebackup.full_interval (%s)", full.ID, fullInterval), nil
	}
	return &newest, "", nil
}
