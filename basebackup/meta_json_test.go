package basebackup

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/golden"
	"github.com/synbak/synbak/internal/repo"
)

// TestBackupJSON: a backup.json written by earlier versions (LSNs as X/X
// text) loads into pglogrepl.LSN fields, and writing it again keeps every
// field it had, LSNs still as X/X.
func TestBackupJSON(t *testing.T) {
	old, err := os.ReadFile(filepath.Join("testdata", "backup-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var b Backup
	if err := json.Unmarshal(old, &b); err != nil {
		t.Fatal(err)
	}
	if b.StartLSN != pglogrepl.LSN(0x2000028) || b.EndLSN != pglogrepl.LSN(0x1_A0000100) {
		t.Errorf("LSNs %s, %s; want 0/2000028, 1/A0000100", b.StartLSN, b.EndLSN)
	}
	if b.ID != "20261124T100000Z-a1b2c3" || b.EndTimeline != 2 || b.SegmentSize != 16<<20 || len(b.Archives) != 2 ||
		b.Archives[1].TablespaceOID != 16385 || b.Manifest.Size != 181234 || b.Facts["server_name"] != "example.org" {
		t.Errorf("fields lost: %+v", b)
	}

	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "backup.golden.json", append(out, '\n'))
	// Every field of the old file survives a rewrite unchanged.
	var was, now map[string]any
	if err := json.Unmarshal(old, &was); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &now); err != nil {
		t.Fatal(err)
	}
	for k, v := range was {
		if d := cmp.Diff(v, now[k]); d != "" {
			t.Errorf("field %s changed on rewrite (-old +new):\n%s", k, d)
		}
	}
	var again Backup
	if err := json.Unmarshal(out, &again); err != nil || !cmp.Equal(again, b) {
		t.Errorf("round trip: %v\n%s", err, cmp.Diff(b, again))
	}

	for _, bad := range []string{`{"start_lsn":"x","end_lsn":"0/1"}`, `{"start_lsn":"0/1","end_lsn":12}`, `{"start_lsn":"0/1"}`} {
		if err := json.Unmarshal([]byte(bad), new(Backup)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	if !bytes.Contains(out, []byte(`"end_lsn": "1/A0000100"`)) {
		t.Errorf("LSN not written as X/X:\n%s", out)
	}
	if p := b.Archives[0].Parts[0]; p.SHA256 == "" || p.XXH3 != "" || !p.Valid() {
		t.Errorf("an earlier backup's part loads as %+v, want its sha256 alone", p)
	}
}

// TestPartJSON: a part stored as a version 3 object records "xxh3" and no
// "sha256", and loads back as the same checksum.
func TestPartJSON(t *testing.T) {
	p := Part{Size: 1 << 20, StoredSize: 4242, Checksum: repo.Checksum{XXH3: "06b05ab6733a618578af5f94892f3950"}}
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"size":1048576,"stored_size":4242,"xxh3":"06b05ab6733a618578af5f94892f3950"}`; string(out) != want {
		t.Errorf("part JSON %s, want %s", out, want)
	}
	var back Part
	if err := json.Unmarshal(out, &back); err != nil || back != p {
		t.Errorf("round trip: %+v, %v; want %+v", back, err, p)
	}
}
