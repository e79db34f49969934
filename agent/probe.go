package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// ProbeStatus is what the agent last saw of the database server.
type ProbeStatus struct {
	// Up is true when the last probe reached the server.
	Up bool `json:"up"`
	// LastOK is the time of the last successful probe.
	LastOK time.Time `json:"last_ok,omitzero"`
	// LastError is the last failed probe's message.
	LastError string `json:"last_error,omitempty"`
	// ServerLSN is the server's current WAL position (its receive position
	// on a standby); SlotLag is how far the slot's restart_lsn is behind
	// it, in bytes (-1 when the slot does not exist).
	ServerLSN pglogrepl.LSN `json:"server_lsn"`
	SlotLag   int64         `json:"slot_lag_bytes"`
}

// MarshalJSON writes the status with its LSN as X/X.
func (s ProbeStatus) MarshalJSON() ([]byte, error) {
	type plain ProbeStatus
	return json.Marshal(struct {
		plain
		ServerLSN string `json:"server_lsn"`
	}{plain(s), s.ServerLSN.String()})
}

// UnmarshalJSON reads what MarshalJSON writes, and the integer that agents
// before it wrote.
func (s *ProbeStatus) UnmarshalJSON(data []byte) error {
	type plain ProbeStatus
	v := struct {
		*plain
		ServerLSN json.RawMessage `json:"server_lsn"`
	}{plain: (*plain)(s)}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	s.ServerLSN = 0
	var text string
	var n uint64
	switch {
	case len(v.ServerLSN) == 0:
	case json.Unmarshal(v.ServerLSN, &n) == nil:
		s.ServerLSN = pglogrepl.LSN(n)
	case json.Unmarshal(v.ServerLSN, &text) == nil:
		lsn, err := pglogrepl.ParseLSN(text)
		if err != nil {
			return fmt.Errorf("server_lsn: %w", err)
		}
		s.ServerLSN = lsn
	default:
		return fmt.Errorf("server_lsn: %s is not an LSN", v.ServerLSN)
	}
	return nil
}

// Probe asks the server, every Interval, for its WAL position and the
// slot's lag: what the receiver cannot know by itself.
type Probe struct {
	// Connect opens an ordinary connection.
	Connect  func(ctx context.Context) (*pgconn.PgConn, error)
	Slot     string
	Interval time.Duration

	mu     sync.Mutex
	status ProbeStatus
}

// Status returns a snapshot.
func (p *Probe) Status() ProbeStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// Run probes until ctx is cancelled. Failures are recorded, not returned:
// a database that is down is a state to report, not a component failure.
func (p *Probe) Run(ctx context.Context) error {
	iv := p.Interval
	if iv <= 0 {
		iv = 10 * time.Second
	}
	for {
		p.once(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(iv):
		}
	}
}

const probeSQL = `select case when pg_is_in_recovery() then pg_last_wal_receive_lsn() else pg_current_wal_lsn() end,
 (select restart_lsn from pg_replication_slots where slot_name = '%s')`

func (p *Probe) once(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lsn, lag, err := p.query(cctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		p.status.Up, p.status.LastError = false, err.Error()
		return
	}
	p.status = ProbeStatus{Up: true, LastOK: time.Now(), ServerLSN: lsn, SlotLag: lag}
}

func (p *Probe) query(ctx context.Context) (pglogrepl.LSN, int64, error) {
	conn, err := p.Connect(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.Background())
	// The slot name is validated by config (lower-case letters, digits,
	// underscores), so it can be inlined.
	res := conn.ExecParams(ctx, fmt.Sprintf(probeSQL, p.Slot), nil, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, 0, res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		return 0, 0, fmt.Errorf("probe: unexpected answer")
	}
	cur, err := pglogrepl.ParseLSN(string(res.Rows[0][0]))
	if err != nil {
		return 0, 0, err
	}
	if res.Rows[0][1] == nil {
		return cur, -1, nil
	}
	restart, err := pglogrepl.ParseLSN(string(res.Rows[0][1]))
	if err != nil {
		return 0, 0, err
	}
	return cur, int64(cur) - int64(restart), nil
}
