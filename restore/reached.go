package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/wal"
)

// checkReached proves that recovery replayed what the plan planned:
// PostgreSQL stops replay at the first invalid or missing WAL and, without
// a target, promotes as if the archive had ended there. A time or LSN
// target must have been reached (the server logs where it stopped); the
// latest point (or the end of the archive, for a target after it) must
// reach the plan's last segment.
func (s *server) checkReached(ctx context.Context, p Plan, endOfArchive bool, ws *walServer) error {
	conn, err := s.connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("connect to the restored server: %w", err)
	}
	var text *string
	err = conn.QueryRow(ctx, "select pg_last_wal_replay_lsn()::text").Scan(&text)
	_ = conn.Close(context.Background())
	if err != nil {
		return fmt.Errorf("read the replayed position: %w", err)
	}
	var reached pglogrepl.LSN
	if text != nil {
		if reached, err = pglogrepl.ParseLSN(*text); err != nil {
			return fmt.Errorf("read the replayed position %q: %w", *text, err)
		}
	}
	logText, _ := os.ReadFile(s.logFile)
	if !p.Target.Latest && !endOfArchive {
		if p.Target.LSN != 0 && reached >= p.Target.LSN {
			return nil
		}
		if strings.Contains(string(logText), "LOG:  recovery stopping ") {
			return nil
		}
		return fmt.Errorf("replay stopped at %s in WAL segment %s before the target %s was reached; the server said: %s",
			reached, p.segmentAt(reached), p.Target, stopMessage(string(logText), s.logFile, ws))
	}
	if len(p.segments) == 0 {
		return nil
	}
	lastName := p.segments[len(p.segments)-1]
	last, err := wal.ParseSegmentName(lastName, p.segSize)
	if err != nil {
		return err
	}
	// Replay read the last segment (a segment ending exactly where the
	// next begins leaves reached at its start without reading it).
	if reached >= last.StartLSN() && ws.wasServed(lastName) {
		return nil
	}
	// The newest partial may hold no complete record (the end of one that
	// began in the segment before): PostgreSQL read it and stopped there.
	if p.lastPartial && uint64(reached)/p.segSize+1 == last.No && ws.wasServed(lastName) {
		return nil
	}
	return fmt.Errorf("replay stopped early: the restored server promoted at %s in WAL segment %s, but the plan replays the archive to %s (segment %s); the server said: %s (the archive changed or is damaged since planning: run synbak verify)",
		reached, p.segmentAt(reached), p.ArchiveEndLSN, lastName, stopMessage(string(logText), s.logFile, ws))
}

// segmentAt names the plan's segment that holds lsn.
func (p Plan) segmentAt(lsn pglogrepl.LSN) string {
	if p.segSize == 0 || len(p.segments) == 0 {
		return "?"
	}
	first, err := wal.ParseSegmentName(p.segments[0], p.segSize)
	if err != nil {
		return "?"
	}
	no := uint64(lsn) / p.segSize
	if no >= first.No && no-first.No < uint64(len(p.segments)) {
		return p.segments[no-first.No]
	}
	return wal.SegmentAt(p.Timeline, lsn, p.segSize).Name()
}

// stopMessage finds the server's reason for ending replay: the last
// message before "redo done" that is not about a restored file, and what
// restore_command answered "not in the archive" for.
func stopMessage(log, logFile string, ws *walServer) string {
	lines := strings.Split(log, "\n")
	end := len(lines)
	for i, l := range lines {
		if strings.Contains(l, "LOG:  redo done at") {
			end = i
			break
		}
	}
	msg := ""
	for i := end - 1; i >= 0 && msg == ""; i-- {
		_, m, ok := strings.Cut(lines[i], "LOG:  ")
		if !ok {
			continue
		}
		for _, w := range []string{"invalid", "unexpected", "incorrect", "wrong", "checksum", "contrecord", "out-of-sequence", "missing"} {
			if strings.Contains(m, w) {
				msg = fmt.Sprintf("%q", m)
				break
			}
		}
	}
	if nf := slices.Compact(ws.notFoundInPlan()); len(nf) > 0 {
		if msg != "" {
			msg += "; "
		}
		msg += fmt.Sprintf("restore_command found %s not in the archive", strings.Join(nf, ", "))
	}
	if msg == "" {
		msg = "nothing about it (see " + logFile + ")"
	}
	return msg
}

// dropRecoverySettings ends the restore's part in a server left running:
// postgresql.auto.conf keeps the backup's content and the private
// settings, without restore_command and the recovery target, and the
// server reloads it.
func (s *server) dropRecoverySettings(ctx context.Context) error {
	auto := filepath.Join(s.pgdata, "postgresql.auto.conf")
	x := &extractor{owner: s.owner}
	if err := x.writeFile(auto, append(append([]byte(nil), s.autoConf...), s.private...), 0o600); err != nil {
		return fmt.Errorf("remove restore_command from %s: %w", auto, err)
	}
	_ = os.Remove(filepath.Join(s.pgdata, "recovery.signal"))
	conn, err := s.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "select pg_reload_conf()")
	return err
}
