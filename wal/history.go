package wal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/repo"
)

// ErrNoHistory: a timeline's history file is not in the repository (or
// cannot be read from it).
var ErrNoHistory = errors.New("no history file")

// TimelineSpan is one timeline of the history leading to a newer one: its
// WAL from Begin (0 for the first) to End, where the next timeline
// branched off (0 for the newest, which has no end).
type TimelineSpan struct {
	TLI        uint32
	Begin, End pglogrepl.LSN
}

// ReadHistory returns the timelines leading to tli, oldest first, from its
// history file in the repository (the receiver stores them; a single span
// for timeline 1). A missing or unreadable file is an error for which
// errors.Is(err, ErrNoHistory) is true.
func ReadHistory(ctx context.Context, r *repo.Repo, tli uint32) ([]TimelineSpan, error) {
	if tli <= 1 {
		return []TimelineSpan{{TLI: max(tli, 1)}}, nil
	}
	name := HistoryObjectName(tli)
	rd, err := r.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%w: timeline %d has no history file %s in the repository (%v)", ErrNoHistory, tli, name, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var spans []TimelineSpan
	var begin pglogrepl.LSN
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		parent, err1 := strconv.ParseUint(f[0], 10, 32)
		sw, err2 := pglogrepl.ParseLSN(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s: bad line %q", name, sc.Text())
		}
		spans = append(spans, TimelineSpan{TLI: uint32(parent), Begin: begin, End: sw})
		begin = sw
	}
	return append(spans, TimelineSpan{TLI: tli, Begin: begin}), nil
}
