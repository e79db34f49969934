package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/wal"
)

// fakeSegment is segSize bytes of compressible noise whose first page
// has a long header matching seg (system identifier 1).
func fakeSegment(seg wal.Segment, segSize uint64, rng *rand.Rand) []byte {
	b := make([]byte, segSize)
	words := []string{"event_id", "room_id", "sender", "content", "origin_server_ts", "type", "m.room.message", "body"}
	for i := 40; i < len(b); {
		w := words[rng.IntN(len(words))]
		i += copy(b[i:], w)
		if i < len(b) {
			b[i] = byte(rng.IntN(256))
			i++
		}
	}
	binary.LittleEndian.PutUint16(b[0:], 0xD110)
	binary.LittleEndian.PutUint16(b[2:], 0x0002)
	binary.LittleEndian.PutUint32(b[4:], seg.TLI)
	binary.LittleEndian.PutUint64(b[8:], uint64(seg.StartLSN()))
	binary.LittleEndian.PutUint64(b[24:], 1)
	binary.LittleEndian.PutUint32(b[32:], uint32(segSize))
	binary.LittleEndian.PutUint32(b[36:], 8192)
	return b
}

// TestWALServer serves a repository's segments to `synbak wal-fetch
// --socket` the way restore_command calls it: each byte-identical, exit 1
// for a file not in the archive, 255 for a bad name and once the restore is
// gone; prefetching keeps a bounded number of segments staged. It logs the
// cost of one call served from the prefetched segments against cp of a
// plain segment file.
func TestWALServer(t *testing.T) {
	ctx := context.Background()
	const segSize = 16 << 20
	const n, ahead = 8, 3
	bin := pgtest.SynbakBinary(t)
	dir := t.TempDir()
	r := repotest.New(t, filepath.Join(dir, "repo"), repotest.Zstd)
	if _, err := r.Put(ctx, "wal/settings.json", bytes.NewReader(fmt.Appendf(nil, `{"system_id":"1","segment_size":%d}`, segSize)), nil); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var names []string
	for i := range n {
		seg := wal.SegmentAt(1, pglogrepl.LSN(uint64(i+1)*segSize), segSize)
		data := fakeSegment(seg, segSize, rng)
		if _, err := r.Put(ctx, seg.ObjectName(), bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plain, seg.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, seg.Name())
	}
	f, err := wal.NewFetcher(ctx, r, "", 0, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	sock, staging, out := t.TempDir(), t.TempDir(), t.TempDir()
	ws, err := newWALServer(f, sock, staging, nil, names, ahead, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.close()
	ws.startPrefetch()

	fetch := func(file string) int {
		t.Helper()
		err := exec.Command(bin, "wal-fetch", "--socket", sock, file, filepath.Join(out, "RECOVERYXLOG")).Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	var served, copied time.Duration
	for i, name := range names {
		// Measure a call served from the prefetched copy: wait for it.
		ws.mu.Lock()
		e := ws.entries[i]
		ws.mu.Unlock()
		if i > 0 && e == nil {
			t.Fatalf("segment %d (%s) was not being prefetched", i, name)
		}
		if e != nil {
			<-e.done
		}
		// PostgreSQL removes the previous RECOVERYXLOG before it asks.
		os.Remove(filepath.Join(out, "RECOVERYXLOG"))
		os.Remove(filepath.Join(out, "cp"))
		start := time.Now()
		if code := fetch(name); code != 0 {
			t.Fatalf("wal-fetch --socket %s: exit %d", name, code)
		}
		served += time.Since(start)
		got, err := os.ReadFile(filepath.Join(out, "RECOVERYXLOG"))
		want, _ := os.ReadFile(filepath.Join(plain, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: served content differs (%v)", name, err)
		}
		start = time.Now()
		if err := exec.Command("cp", filepath.Join(plain, name), filepath.Join(out, "cp")).Run(); err != nil {
			t.Fatal(err)
		}
		copied += time.Since(start)
		if staged, _ := os.ReadDir(staging); len(staged) > ahead+1 {
			t.Errorf("after %s: %d files staged, want at most %d", name, len(staged), ahead+1)
		}
	}
	// The same served in this process (no process start), again from
	// prefetched copies.
	var inProc time.Duration
	staging2 := t.TempDir()
	ws2, err := newWALServer(f, t.TempDir(), staging2, nil, names, n, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ws2.startPrefetch()
	for i, name := range names {
		ws2.mu.Lock()
		e := ws2.entries[i]
		ws2.mu.Unlock()
		if e != nil {
			<-e.done
		}
		os.Remove(filepath.Join(out, "inproc"))
		start := time.Now()
		if err := FetchViaSocket(ctx, filepath.Dir(ws2.ln.Addr().String()), name, filepath.Join(out, "inproc")); err != nil {
			t.Fatal(err)
		}
		inProc += time.Since(start)
	}
	ws2.close()
	t.Logf("per call in this process (no process start): %v", inProc/n)
	t.Logf("per call, %d segments of %d MiB: wal-fetch --socket from the prefetched copy %v, cp of a plain file %v",
		n, segSize>>20, served/n, copied/n)

	next := wal.SegmentAt(1, pglogrepl.LSN(uint64(n+1)*segSize), segSize).Name()
	if code := fetch(next); code != 1 {
		t.Errorf("a segment after the archive: exit %d, want 1", code)
	}
	if code := fetch("00000002.history"); code != 1 {
		t.Errorf("a history file not archived: exit %d, want 1", code)
	}
	if code := fetch("../../etc/passwd"); code != 255 {
		t.Errorf("a bad file name: exit %d, want 255", code)
	}
	ws.close()
	if code := fetch(names[0]); code != 255 {
		t.Errorf("the restore gone: exit %d, want 255", code)
	}
	if staged, _ := os.ReadDir(staging); len(staged) != 0 {
		t.Errorf("closed server left %d staged files", len(staged))
	}
}
