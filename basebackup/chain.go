package basebackup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/synbak/synbak/internal/repo"
)

// ErrChainBroken marks an incremental backup whose chain cannot be used: a
// member's backup.json is missing, or the members disagree about the chain.
var ErrChainBroken = errors.New("incremental backup chain is broken")

// ChainError says why backup ID's chain is unusable and which member is at
// fault. errors.Is(err, ErrChainBroken) holds for it.
type ChainError struct {
	// ID is the backup whose chain was loaded; Member the chain member at
	// fault (may equal ID when its own metadata is inconsistent).
	ID, Member string
	// Missing is true when Member's backup.json is not in the repository
	// (pruned, never completed, or deleted by hand).
	Missing bool
	// Reason describes an inconsistency when Missing is false.
	Reason string
	// Err is the underlying error (a repo.IsNotExist error when Missing).
	Err error
}

func (e *ChainError) Error() string {
	if e.Missing {
		return fmt.Sprintf("backup %s: %v: its chain member %s is missing (no backup.json in the repository)", e.ID, ErrChainBroken, e.Member)
	}
	s := fmt.Sprintf("backup %s: %v: member %s: %s", e.ID, ErrChainBroken, e.Member, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns ErrChainBroken and the underlying error.
func (e *ChainError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrChainBroken}
	}
	return []error{ErrChainBroken, e.Err}
}

// IsChainBroken reports whether err says that an incremental backup's
// chain is incomplete or inconsistent (see ChainError; errors.As gives the
// member at fault).
func IsChainBroken(err error) bool { return errors.Is(err, ErrChainBroken) }

// CheckChainMeta checks what b's own metadata says about its chain, without
// reading the repository: a full backup has no parent and no chain; an
// incremental one has a chain ending with its parent, without repetitions
// and without itself.
func CheckChainMeta(b Backup) error {
	bad := func(reason string) error { return &ChainError{ID: b.ID, Member: b.ID, Reason: reason} }
	switch b.Kind {
	case "", KindFull:
		if b.Parent != "" || len(b.Chain) != 0 {
			return bad(fmt.Sprintf("a full backup with parent %q and chain %v", b.Parent, b.Chain))
		}
		return nil
	case KindIncremental:
	default:
		return bad(fmt.Sprintf("unknown kind %q", b.Kind))
	}
	if b.Parent == "" || len(b.Chain) == 0 || b.Chain[len(b.Chain)-1] != b.Parent {
		return bad(fmt.Sprintf("parent %q is not the last of chain %v", b.Parent, b.Chain))
	}
	seen := map[string]bool{b.ID: true}
	for _, id := range b.Chain {
		if seen[id] {
			return bad(fmt.Sprintf("chain %v names %s twice or names the backup itself", b.Chain, id))
		}
		seen[id] = true
	}
	return nil
}

// LoadChain returns the backups b needs to be restored, oldest first: the
// full backup, the incrementals on top of it, b last. For a full backup it
// is just b. Every member's backup.json must exist (else a ChainError with
// Missing set, naming the member) and agree with b: the same system, the
// first member a full backup, each next one an incremental whose parent is
// the one before it, with the chain before it, started later.
func LoadChain(ctx context.Context, r *repo.Repo, b Backup) ([]Backup, error) {
	if err := CheckChainMeta(b); err != nil {
		return nil, err
	}
	out := make([]Backup, 0, len(b.Chain)+1)
	for _, id := range b.Chain {
		m, err := Load(ctx, r, id)
		if err != nil {
			if repo.IsNotExist(err) {
				return nil, &ChainError{ID: b.ID, Member: id, Missing: true, Err: err}
			}
			return nil, fmt.Errorf("backup %s: chain member %s: %w", b.ID, id, err)
		}
		out = append(out, m)
	}
	out = append(out, b)
	return out, CheckChain(out)
}

// CheckChain checks that chain (oldest first, as LoadChain returns it) is
// consistent; the error is a ChainError naming the first member at fault.
func CheckChain(chain []Backup) error {
	if len(chain) == 0 {
		return nil
	}
	last := chain[len(chain)-1]
	for i, m := range chain {
		bad := func(reason string) error { return &ChainError{ID: last.ID, Member: m.ID, Reason: reason} }
		if err := CheckChainMeta(m); err != nil {
			var ce *ChainError
			if errors.As(err, &ce) {
				ce.ID = last.ID
			}
			return err
		}
		if m.SystemID != last.SystemID {
			return bad(fmt.Sprintf("system %s, the chain's newest backup is of system %s", m.SystemID, last.SystemID))
		}
		if i == 0 {
			if m.Incremental() {
				return bad("the chain's first member is not a full backup")
			}
			continue
		}
		prev := chain[i-1]
		if !m.Incremental() || m.Parent != prev.ID || !slices.Equal(m.Chain, ids(chain[:i])) {
			return bad(fmt.Sprintf("its parent %q and chain %v do not match the chain %v", m.Parent, m.Chain, ids(chain[:i])))
		}
		if !m.StartTime.After(prev.StartTime) && m.StartLSN <= prev.StartLSN {
			return bad(fmt.Sprintf("started (%s, %s) before its parent %s (%s, %s)", m.StartTime.Format(time.RFC3339), m.StartLSN, prev.ID, prev.StartTime.Format(time.RFC3339), prev.StartLSN))
		}
		if m.PGVersion/10000 != prev.PGVersion/10000 {
			return bad(fmt.Sprintf("PostgreSQL %d, its parent %s is of PostgreSQL %d", m.PGVersion, prev.ID, prev.PGVersion))
		}
	}
	return nil
}

func ids(bs []Backup) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.ID
	}
	return out
}

// RefusedError says why an incremental backup was not taken (Take then
// takes a full one): the server is older than 17 or summarize_wal is off,
// the parent or a member of its chain is gone, or the server refused
// (another timeline, WAL summaries that no longer reach the parent).
type RefusedError struct {
	Parent string
	Reason string
	// Err is the server's error or the broken chain, when there is one.
	Err error
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("no incremental backup on top of %s: %s", e.Parent, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *RefusedError) Unwrap() error { return e.Err }

// IsIncrementalRefused reports whether err says that an incremental backup
// cannot be taken (see RefusedError).
func IsIncrementalRefused(err error) bool {
	var re *RefusedError
	return errors.As(err, &re)
}

// Dependents maps each backup ID to the IDs of the backups in all that
// depend on it (whose Chain names it: its incremental children and their
// descendants), in the order of all. Backups nobody depends on are absent.
func Dependents(all []Backup) map[string][]string {
	out := map[string][]string{}
	for _, b := range all {
		for _, id := range b.Chain {
			out[id] = append(out[id], b.ID)
		}
	}
	return out
}

// Needs returns the IDs of the backups b needs besides itself (its Chain),
// a copy the caller may keep.
func (b Backup) Needs() []string { return slices.Clone(b.Chain) }
