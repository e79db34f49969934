package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synbak/synbak/internal/storage"
	"github.com/synbak/synbak/internal/storage/s3"
	"github.com/synbak/synbak/internal/storage/s3/s3test"
)

// outage is how long TestOutageDuringLargePut keeps the server down:
// $SYNBAK_S3_OUTAGE (a Go duration; e.g. 65s to show a minute-long outage
// riding through), else 15s, which is already twice the retry budget synbak
// had before repository.s3.retry_timeout and keeps the suite fast.
func outage(t *testing.T) time.Duration {
	if v := os.Getenv("SYNBAK_S3_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SYNBAK_S3_OUTAGE: %v", err)
		}
		return d
	}
	return 15 * time.Second
}

// outageReader produces size pseudo-random bytes; after at bytes it stops
// the server (once), and then goes on: the parts after it are uploaded
// while the server is down.
type outageReader struct {
	rng   *rand.ChaCha8
	left  int64
	at    int64
	read  int64
	fired bool
	fire  func()
}

func (r *outageReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if !r.fired && r.read >= r.at {
		r.fired = true
		r.fire()
	}
	n := int(min(int64(len(p)), r.left))
	_, _ = r.rng.Read(p[:n])
	r.left -= int64(n)
	r.read += int64(n)
	return n, nil
}

// TestOutageDuringLargePut stops the S3 server in the middle of a large
// streamed Put (a base-backup part: multipart, not buffered by the retry
// layer) and a small one (buffered and retried whole), keeps it down for
// outage(t), and restarts it on the same port: both Puts complete with the
// right bytes, after the outage.
func TestOutageDuringLargePut(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	o := small(srv.Options(srv.NewBucket(t), "outage"))
	o.MaxRetries = 1
	retries := &countHandler{}
	o.Logger = slog.New(retries)
	raw, err := s3.New(o) // RetryTimeout 0: the default, 2 minutes
	if err != nil {
		t.Fatal(err)
	}
	// The backend knows the server (its conditional-write probe ran): the
	// outage starts in the middle of the multipart upload.
	if err := raw.Put(ctx, "warm-up", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	b := storage.WithRetry(raw, storage.RetryOptions{MaxElapsed: s3.DefaultRetryTimeout})
	down := outage(t)
	if down >= s3.DefaultRetryTimeout {
		t.Fatalf("an outage of %s is longer than the default retry budget %s", down, s3.DefaultRetryTimeout)
	}

	const size = 40 << 20
	var stopped, restarted atomic.Int64 // UnixNano
	smallDone := make(chan error, 1)
	smallData := bytes.Repeat([]byte("small object written during the outage\n"), 1000)
	rd := &outageReader{rng: rand.NewChaCha8([32]byte{9}), left: size, at: 28 << 20, fire: func() {
		srv.Stop()
		stopped.Store(time.Now().UnixNano())
		t.Logf("server stopped after 28 MiB of %d MiB; down for %s", size>>20, down)
		go func() { smallDone <- b.Put(ctx, "small", bytes.NewReader(smallData)) }()
		time.AfterFunc(down, func() {
			if err := srv.Restart(); err != nil {
				t.Error(err) // the Put then fails after its retry budget
				return
			}
			restarted.Store(time.Now().UnixNano())
		})
	}}
	start := time.Now()
	if err := b.Put(ctx, "base/part.0001", rd); err != nil {
		t.Fatalf("Put across a %s outage: %v", down, err)
	}
	if err := <-smallDone; err != nil {
		t.Fatalf("small Put during the outage: %v", err)
	}
	if stopped.Load() == 0 || restarted.Load() == 0 {
		t.Fatalf("the Put returned before the outage ended (stopped %v, restarted %v)", stopped.Load() != 0, restarted.Load() != 0)
	}
	t.Logf("large Put took %s, the outage %s; %d retries of multipart requests", time.Since(start).Round(time.Millisecond), time.Duration(restarted.Load()-stopped.Load()).Round(time.Millisecond), retries.n.Load())
	if retries.n.Load() == 0 {
		t.Error("no multipart request was retried: the outage missed the upload")
	}

	want := sha256.New()
	_, _ = io.Copy(want, &outageReader{rng: rand.NewChaCha8([32]byte{9}), left: size, at: -1, fired: true})
	rc, err := b.Get(ctx, "base/part.0001", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(got, rc)
	rc.Close()
	if err != nil || n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("read back %d bytes (%v), sha256 match %v", n, err, bytes.Equal(got.Sum(nil), want.Sum(nil)))
	}
	wantRead(t, b, "small", 0, -1, smallData)
}

// countHandler counts the backend's warnings (one per retried request).
type countHandler struct{ n atomic.Int64 }

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }
