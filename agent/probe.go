package agent

import (
	"context"
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
	ServerLSN uint64 `json:"server_lsn"`
	SlotLag   int64  `json:"slot_lag_bytes"`
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

func (p *Probe) query(ctx context.Context) (uint64, int64, error) {
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
		return uint64(cur), -1, nil
	}
	restart, err := pglogrepl.ParseLSN(string(res.Rows[0][1]))
	if err != nil {
		return 0, 0, err
	}
	return uint64(cur), int64(cur) - int64(restart), nil
}
