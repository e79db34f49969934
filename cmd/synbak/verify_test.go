package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/synbak/synbak/basebackup"
	"github.com/synbak/synbak/confsnap"
	"github.com/synbak/synbak/internal/pgtest"
	"github.com/synbak/synbak/internal/repo"
	"github.com/synbak/synbak/internal/repo/repotest"
	"github.com/synbak/synbak/internal/storage/local"
	"github.com/synbak/synbak/internal/synapse"
	"github.com/synbak/synbak/mediawatch"
	"github.com/synbak/synbak/wal"
)

// verifyFixture is a real repository: WAL streamed from a standby that was
// then promoted (timelines 1 and 2, a history file), a base backup, media
// and a config snapshot.
type verifyFixture struct {
	repoDir  string
	backup   *basebackup.Backup
	midSeg   wal.Segment // a complete timeline-1 segment after the backup's end
	walSeg   wal.Segment // another one, for the flipped byte
	mediaSHA string
	cfgSHA   string
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	ctx := context.Background()
	conf := pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}}
	primary := pgtest.Start(t, conf)
	standby := pgtest.StartStandby(t, primary, pgtest.Options{Conf: conf.Conf})
	f := &verifyFixture{repoDir: filepath.Join(t.TempDir(), "repo")}
	r := newLocalRepo(t, f.repoDir)
	stop := streamInto(t, standby, r)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("receiver: %v", err)
		}
	}()
	var err error
	f.backup, err = basebackup.Take(ctx, primary.ReplicationConn(t), r, basebackup.Options{PartSize: 1 << 20, WALTimeout: 2 * time.Minute}, pgtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		primary.Exec(t, "postgres", "create table t"+string(rune('a'+i))+" as select generate_series(1, 5000) as i")
		primary.Exec(t, "postgres", "select pg_switch_wal()")
	}
	lsn := primary.Text(t, "postgres", "select pg_current_wal_insert_lsn()::text")
	waitFor(t, time.Minute, "standby replay", func() bool {
		return standby.Bool(t, "postgres", "select pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
	})
	standby.Promote(t)
	standby.Exec(t, "postgres", "create table after_promotion as select generate_series(1, 5000) as i")
	// The end of the segment the switch completed (the end-of-recovery
	// checkpoint may write into the next one).
	end, err := pglogrepl.ParseLSN(standby.Text(t, "postgres", "select pg_switch_wal()::text"))
	if err != nil {
		t.Fatal(err)
	}
	last := wal.SegmentAt(2, end-1, 1<<20)
	waitFor(t, time.Minute, "timeline 2 archived", func() bool { _, err := r.Stat(ctx, last.ObjectName()); return err == nil })

	endSeg := wal.SegmentAt(1, pglogrepl.LSN(f.backup.EndLSN), 1<<20)
	f.midSeg, f.walSeg = endSeg.Next(), endSeg.Next().Next()
	for _, s := range []wal.Segment{f.midSeg, f.walSeg} {
		if _, err := r.Stat(ctx, s.ObjectName()); err != nil {
			t.Fatalf("the fixture needs %s: %v", s.ObjectName(), err)
		}
	}

	media := t.TempDir()
	p := filepath.Join(media, "local_content", "ab", "cd", "efghijklmnopqrstuvwx")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Repeat("media bytes ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	os.Chtimes(p, old, old)
	if _, err := mediawatch.Sync(ctx, r, media, mediawatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mediawatch.ReadIndex(ctx, r, func(e mediawatch.Event) error { f.mediaSHA = e.SHA256; return nil }); err != nil || f.mediaSHA == "" {
		t.Fatalf("media index: %v", err)
	}
	hs := filepath.Join(t.TempDir(), "homeserver.yaml")
	if err := os.WriteFile(hs, []byte("server_name: test.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := confsnap.Snapshot(ctx, r, []synapse.File{{Path: hs, Role: "config", Secret: true}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := confsnap.ReadIndex(ctx, r, func(b confsnap.Batch) error { f.cfgSHA = b.Records[0].SHA256; return nil }); err != nil || f.cfgSHA == "" {
		t.Fatalf("config index: %v", err)
	}
	return f
}

// copyRepo gives a case its own copy of the fixture's repository.
func (f *verifyFixture) copyRepo(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", f.repoDir, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return dst
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x5a
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFindsEachProblem breaks a copy of a healthy repository in one
// way per case; verify must name the damage and exit 1 (and 0 on the
// healthy one).
func TestVerifyFindsEachProblem(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL (skipped with -short)")
	}
	f := newVerifyFixture(t)
	part := basebackup.PartName(f.backup.ID, f.backup.Archives[0].Name, 0)
	foreign := foreignSegment(t, f.walSeg)

	t.Run("list and status show the window and the sizes by kind", func(t *testing.T) {
		env := map[string]string{"SYNBAK_REPOSITORY_PATH": f.repoDir, "SYNBAK_STATE_DIR": t.TempDir(), "SYNBAK_HTTP_LISTEN": unusedAddr(t)}
		code, stdout, stderr := runCLI(t, env, "list", "--json")
		var l listing
		if code != 0 || json.Unmarshal([]byte(stdout), &l) != nil {
			t.Fatalf("list --json: exit %d\n%s%s", code, stdout, stderr)
		}
		kinds := map[string]kindSize{}
		for _, k := range l.Sizes {
			kinds[k.Kind] = k
		}
		for _, k := range []string{"backups", "wal", "media", "config"} {
			if kinds[k].Objects == 0 || kinds[k].Bytes == 0 {
				t.Errorf("list: size of %s: %+v", k, kinds[k])
			}
		}
		if l.RecoveryWindow == nil || !l.RecoveryWindow.To.After(l.RecoveryWindow.From) {
			t.Errorf("list: recovery window %+v", l.RecoveryWindow)
		}
		code, stdout, _ = runCLI(t, env, "status")
		for _, want := range []string{"Agent: none answering", "Recovery window: ", "Repository size: ", "wal "} {
			if !strings.Contains(stdout, want) {
				t.Errorf("status lacks %q:\n%s", want, stdout)
			}
		}
		if code != 1 {
			t.Errorf("status without an agent: exit %d, want 1", code)
		}
	})
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, dir string)
		want   []string // substrings of one problem line
		more   []string // substrings of another problem line
		quick  bool     // also found by --quick
		fetch  []string // segment files wal-fetch must refuse with 255
	}{
		{name: "healthy"},
		{name: "two WAL segment objects swapped", break_: func(t *testing.T, dir string) {
			a, b := filepath.Join(dir, f.midSeg.ObjectName()), filepath.Join(dir, f.walSeg.ObjectName())
			tmp := a + ".swap"
			for _, mv := range [][2]string{{a, tmp}, {b, a}, {tmp, b}} {
				if err := os.Rename(mv[0], mv[1]); err != nil {
					t.Fatal(err)
				}
			}
		}, want: []string{f.midSeg.ObjectName(), "corrupt", "binding", "restores that replay this WAL"},
			more: []string{f.walSeg.ObjectName(), "corrupt", "binding"}, quick: true,
			fetch: []string{f.midSeg.Name(), f.walSeg.Name()}},
		{name: "WAL segment of another cluster stored under the name", break_: func(t *testing.T, dir string) {
			// A well-formed object (checksum and binding valid), its
			// content from another cluster's pg_wal.
			r := openLocalRepo(t, dir)
			info, err := r.Stat(context.Background(), f.walSeg.ObjectName())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, f.walSeg.ObjectName())); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Put(context.Background(), f.walSeg.ObjectName(), bytes.NewReader(foreign), info.Attrs); err != nil {
				t.Fatal(err)
			}
		}, want: []string{f.walSeg.ObjectName(), "another cluster", "restores that replay this WAL"}, quick: true,
			fetch: []string{f.walSeg.Name()}},
		{name: "one bit of a WAL object's attributes", break_: func(t *testing.T, dir string) {
			p := filepath.Join(dir, f.walSeg.ObjectName())
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(b, []byte(`"start_lsn":"`))
			if i < 0 || i > 4096 {
				t.Fatalf("no start_lsn attribute in the header of %s", p)
			}
			b[i+len(`"start_lsn":"`)] ^= 1 // "0/..." -> "1/..."
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: []string{f.walSeg.ObjectName(), "corrupt", "binding"}, quick: true,
			fetch: []string{f.walSeg.Name()}},
		{name: "flipped byte in a WAL object", break_: func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, f.walSeg.ObjectName()))
		}, want: []string{f.walSeg.ObjectName(), "corrupt", "restores that replay this WAL"}},
		{name: "flipped byte in a base-backup part", break_: func(t *testing.T, dir string) {
			flipByte(t, filepath.Join(dir, part))
		}, want: []string{part, "corrupt", "backup " + f.backup.ID + " is unusable"}},
		{name: "missing WAL segment in the middle", break_: func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, f.midSeg.ObjectName()))
		}, want: []string{"impossible", f.midSeg.ObjectName(), "missing"}, quick: true},
		{name: "missing history file", break_: func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, wal.HistoryObjectName(2)))
		}, want: []string{"timeline 2", wal.HistoryObjectName(2)}, quick: true},
		{name: "media object that does not match its index", break_: func(t *testing.T, dir string) {
			// A valid object, but another one's content.
			b, err := os.ReadFile(filepath.Join(dir, confsnap.ObjectName(f.cfgSHA)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, mediawatch.ObjectName(f.mediaSHA)), b, 0o600); err != nil {
				t.Fatal(err)
			}
			// The binding of name and content catches it even with --quick.
		}, want: []string{mediawatch.ObjectName(f.mediaSHA), "binding", "media restores lack this file"}, quick: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := f.copyRepo(t)
			if tc.break_ != nil {
				tc.break_(t, dir)
			}
			modes := [][]string{{"verify"}}
			if tc.quick || tc.break_ == nil {
				modes = append(modes, []string{"verify", "--quick"})
			}
			for _, args := range modes {
				code, stdout, stderr := runCLI(t, map[string]string{"SYNBAK_REPOSITORY_PATH": dir, "SYNBAK_STATE_DIR": t.TempDir()}, args...)
				if tc.break_ == nil {
					if code != 0 || !strings.Contains(stdout, "OK: no problem found") {
						t.Errorf("%v on a healthy repository: exit %d\n%s%s", args, code, stdout, stderr)
					}
					continue
				}
				if code != 1 {
					t.Errorf("%v: exit %d, want 1\n%s%s", args, code, stdout, stderr)
				}
				found := false
				for _, l := range strings.Split(stdout, "\n") {
					ok := strings.HasPrefix(l, "PROBLEM: ")
					for _, w := range tc.want {
						ok = ok && strings.Contains(l, w)
					}
					found = found || ok
				}
				if !found {
					t.Errorf("%v: no problem line with %q in:\n%s%s", args, tc.want, stdout, stderr)
				}
				if tc.more != nil && !hasProblem(stdout, tc.more) {
					t.Errorf("%v: no problem line with %q in:\n%s%s", args, tc.more, stdout, stderr)
				}
			}
			for _, seg := range tc.fetch {
				dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
				code, _, stderr := runCLI(t, map[string]string{"SYNBAK_REPOSITORY_PATH": dir, "SYNBAK_STATE_DIR": t.TempDir()}, "wal-fetch", seg, dest)
				if code != 255 {
					t.Errorf("wal-fetch %s: exit %d, want 255\n%s", seg, code, stderr)
				}
				if _, err := os.Stat(dest); err == nil {
					t.Errorf("wal-fetch %s wrote a mismatching segment to DEST", seg)
				}
				// The real binary, as PostgreSQL runs it.
				cmd := exec.Command(pgtest.SynbakBinary(t), "wal-fetch", seg, dest)
				cmd.Env = append(os.Environ(), "SYNBAK_CONFIG=/dev/null", "SYNBAK_REPOSITORY_PATH="+dir, "SYNBAK_STATE_DIR="+t.TempDir())
				out, err := cmd.CombinedOutput()
				if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 255 {
					t.Errorf("synbak wal-fetch %s (binary): %v, want exit 255\n%s", seg, err, out)
				}
				if _, err := os.Stat(dest); err == nil {
					t.Errorf("synbak wal-fetch %s (binary) wrote a mismatching segment to DEST", seg)
				}
			}
		})
	}
}

func hasProblem(stdout string, want []string) bool {
	for _, l := range strings.Split(stdout, "\n") {
		ok := strings.HasPrefix(l, "PROBLEM: ")
		for _, w := range want {
			ok = ok && strings.Contains(l, w)
		}
		if ok {
			return true
		}
	}
	return false
}

func openLocalRepo(t *testing.T, dir string) *repo.Repo {
	t.Helper()
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), b, repotest.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// foreignSegment returns segment seg (its number, timeline 1) as another,
// new cluster wrote it into its pg_wal.
func foreignSegment(t *testing.T, seg wal.Segment) []byte {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{InitdbArgs: []string{"--wal-segsize=1"}, Conf: []string{"max_wal_size = '1GB'", "checkpoint_timeout = '1h'"}})
	name := wal.Segment{TLI: 1, No: seg.No, Size: seg.Size}.Name()
	for i := 0; ; i++ {
		cur := c.Text(t, "postgres", "select pg_walfile_name(pg_current_wal_insert_lsn())")
		if cur > name {
			break
		}
		if i > 1000 {
			t.Fatalf("the other cluster did not reach segment %s", name)
		}
		c.Exec(t, "postgres", fmt.Sprintf("create table foreign_%d ()", i))
		c.Exec(t, "postgres", "select pg_switch_wal()")
	}
	b, err := os.ReadFile(filepath.Join(c.PgWalDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(b)) != seg.Size {
		t.Fatalf("%s of the other cluster is %d bytes", name, len(b))
	}
	return b
}

// unusedAddr is a loopback address nothing listens on.
func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
