package basebackup

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestDecodeMessage(t *testing.T) {
	prog := make([]byte, 9)
	prog[0] = 'p'
	binary.BigEndian.PutUint64(prog[1:], 13<<30) // beyond int8 and int32
	tests := []struct {
		name string
		in   []byte
		want Message
	}{
		{"new base archive", []byte("nbase.tar\x00\x00"), Message{Kind: KindNewArchive, Archive: "base.tar"}},
		{"new tablespace archive", []byte("n16385.tar.zst\x00/srv/ts\x00"), Message{Kind: KindNewArchive, Archive: "16385.tar.zst", Path: "/srv/ts"}},
		{"data", []byte("dabc\x00def"), Message{Kind: KindData, Data: []byte("abc\x00def")}},
		{"empty data", []byte("d"), Message{Kind: KindData, Data: []byte{}}},
		{"progress", prog, Message{Kind: KindProgress, Progress: 13 << 30}},
		{"manifest", []byte("m"), Message{Kind: KindManifest}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeMessage(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tc.want.Kind || got.Archive != tc.want.Archive || got.Path != tc.want.Path ||
				got.Progress != tc.want.Progress || !bytes.Equal(got.Data, tc.want.Data) {
				t.Errorf("DecodeMessage(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "empty CopyData"},
		{"unknown type", "xhello", `unknown CopyData type byte 'x' (0x78)`},
		{"old protocol tar data", "\x00\x00\x00", "unknown CopyData type byte"},
		{"archive name unterminated", "nbase.tar", "archive name"},
		{"path unterminated", "nbase.tar\x00/srv", "tablespace path"},
		{"archive trailing bytes", "nbase.tar\x00\x00junk", "malformed"},
		{"archive empty name", "n\x00\x00", "malformed"},
		{"short progress", "p\x00\x01", "progress message of 2 bytes"},
		{"manifest with payload", "mx", "manifest message"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMessage([]byte(tc.in))
			if err == nil {
				t.Fatalf("DecodeMessage(%q) succeeded", tc.in)
			}
			if !IsProtocol(err) {
				t.Errorf("IsProtocol(%v) = false", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"16MB": 16 << 20, "1MB": 1 << 20, "1GB": 1 << 30, "8192": 8192, "64kB": 64 << 10} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := parseSize("big"); err == nil {
		t.Error("parseSize(big) succeeded")
	}
}

func TestSegments(t *testing.T) {
	b := Backup{Timeline: 1, EndTimeline: 1, SegmentSize: 1 << 20, StartLSN: 0x3000028, EndLSN: 0x5000000}
	segs := b.Segments()
	var names []string
	for _, s := range segs {
		names = append(names, s.Name())
	}
	// EndLSN at a segment boundary does not need the next segment.
	want := "000000010000000000000030 000000010000000000000031 000000010000000000000032 000000010000000000000033 000000010000000000000034 000000010000000000000035 000000010000000000000036 000000010000000000000037 000000010000000000000038 000000010000000000000039 00000001000000000000003A 00000001000000000000003B 00000001000000000000003C 00000001000000000000003D 00000001000000000000003E 00000001000000000000003F 000000010000000000000040 000000010000000000000041 000000010000000000000042 000000010000000000000043 000000010000000000000044 000000010000000000000045 000000010000000000000046 000000010000000000000047 000000010000000000000048 000000010000000000000049 00000001000000000000004A 00000001000000000000004B 00000001000000000000004C 00000001000000000000004D 00000001000000000000004E 00000001000000000000004F"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("Segments() = %s\nwant %s", got, want)
	}
}
