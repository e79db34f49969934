package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestProbeStatusJSON: the server's LSN is written as X/X and read back;
// the integer of earlier agents still reads.
func TestProbeStatusJSON(t *testing.T) {
	st := ProbeStatus{Up: true, LastOK: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ServerLSN: 0x1_0200_0028, SlotLag: 4096}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"server_lsn":"1/2000028"`) || !strings.Contains(string(b), `"slot_lag_bytes":4096`) {
		t.Errorf("marshalled %s", b)
	}
	var back ProbeStatus
	if err := json.Unmarshal(b, &back); err != nil || back != st {
		t.Errorf("round trip %+v, %v", back, err)
	}
	var old ProbeStatus
	if err := json.Unmarshal([]byte(`{"up":true,"server_lsn":4328521768,"slot_lag_bytes":-1}`), &old); err != nil || old.ServerLSN != pglogrepl.LSN(4328521768) || old.SlotLag != -1 {
		t.Errorf("old form %+v, %v", old, err)
	}
	if err := json.Unmarshal([]byte(`{"server_lsn":"nope"}`), new(ProbeStatus)); err == nil {
		t.Error("a bad LSN was accepted")
	}
}
