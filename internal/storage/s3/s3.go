// Package s3 implements storage.Backend on an S3-compatible object store
// (AWS S3, MinIO, Ceph RGW, Garage, versitygw) with minio-go.
//
// Objects are stored under Options.Prefix in one bucket. A Put never
// overwrites different content: it writes with the conditional header
// If-None-Match: * and, when the server answers 412 Precondition Failed,
// reads the existing object and compares its sha256 and size with what was
// sent. Objects up to Options.PartSize are sent with one PUT; longer streams
// become multipart uploads driven through minio.Core, part by part with
// bounded memory, and the condition is sent with CompleteMultipartUpload,
// where servers check it (minio-go's own PutObject sends it only when the
// upload is initiated, so a multipart PutObject could silently overwrite).
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/synbak/synbak/internal/storage"
)

const (
	// DefaultPartSize is the size of a multipart upload's parts (the first
	// 2,000; see partSizeFor) and the largest object sent with a single
	// PUT. 8 MiB: base-backup archives are split into objects of 1 GiB by
	// default (128 parts), and memory is about Parallel parts.
	DefaultPartSize = 8 << 20
	// DefaultParallel is how many parts of one object are in memory at
	// once: uploading, or one of them being filled.
	DefaultParallel = 2
	// minPartSize is S3's minimum for every part but the last.
	minPartSize = 5 << 20
	// maxParts is S3's limit on the parts of one upload.
	maxParts = 10000
	// abortTimeout bounds the clean-up of a failed multipart upload.
	abortTimeout = 30 * time.Second
	// conflictRetries bounds the retries of a write that the server refused
	// with 409 ConditionalRequestConflict (a concurrent conditional write
	// in progress).
	conflictRetries = 8
)

// ErrNoBucket says that the bucket does not exist. Create it first (synbak
// never creates buckets: that needs more permissions than backups do).
var ErrNoBucket = errors.New("bucket does not exist")

// IsNoBucket reports whether err says that the bucket does not exist.
func IsNoBucket(err error) bool { return errors.Is(err, ErrNoBucket) }

// Options configure a Backend.
type Options struct {
	// Endpoint is the server: host[:port], or a URL http://host[:port] or
	// https://host[:port] (the scheme then decides Insecure).
	Endpoint string
	// Region is the bucket's region ("us-east-1" when empty).
	Region string
	// Bucket is the bucket name; Prefix the key prefix of every object
	// (without leading or trailing slashes; "" for the whole bucket).
	Bucket string
	Prefix string
	// AccessKeyID and SecretAccessKey are the credentials.
	AccessKeyID     string
	SecretAccessKey string
	// Insecure selects plain HTTP instead of HTTPS (test servers only).
	Insecure bool
	// PathStyle addresses the bucket as https://endpoint/bucket/key (what
	// IP endpoints and most self-hosted servers need); false selects
	// virtual-hosted addressing, https://bucket.endpoint/key.
	PathStyle bool
	// PartSize is the size of multipart parts (DefaultPartSize when 0,
	// at least 5 MiB; parts after the 2,000th are larger, see
	// partSizeFor). Memory per Put is at most about Parallel*PartSize (a
	// part being filled holds one of the Parallel slots),
	// and an object up to PartSize takes only its own size (see Put).
	PartSize int
	// Parallel is how many parts of one object are uploaded at once
	// (DefaultParallel when 0).
	Parallel int
	// MaxRetries is how often minio-go retries one request on transient
	// errors (connection resets, 5xx, throttling) before giving up: 3 when
	// 0. Whole operations are retried by storage.WithRetry.
	MaxRetries int
	// RetryTimeout is how long the pieces of a multipart upload (which
	// storage.WithRetry cannot repeat: the stream is read once) are retried
	// while the server is unreachable or failing, from the first failure
	// of each piece (DefaultRetryTimeout when 0; negative: no retries
	// beyond minio-go's).
	RetryTimeout time.Duration
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
	// Logger receives the one warning about a server without conditional
	// writes (nil: discarded, like every package's logger).
	Logger *slog.Logger
}

// Backend stores objects in an S3 bucket.
type Backend struct {
	core     minio.Core
	bucket   string
	prefix   string // "" or ending in "/"
	endpoint string // scheme://host[:port], for messages
	partSize int
	parallel int
	logger   *slog.Logger
	retryFor time.Duration // Options.RetryTimeout

	condMu      sync.Mutex
	condKnown   bool // the probe ran
	conditional bool // the server honours If-None-Match: *
	// ignoreCondition makes the backend behave as if the server ignored
	// If-None-Match (tests of the fallback).
	ignoreCondition bool
}

// probePrefix starts the names of the objects that test whether the server
// honours conditional writes; List never shows them.
const probePrefix = ".synbak-probe-"

var _ storage.Backend = (*Backend)(nil)

// New returns a Backend. It does not contact the server; Check does.
func New(opts Options) (*Backend, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3 repository: no bucket")
	}
	host, secure, err := parseEndpoint(opts.Endpoint, opts.Insecure)
	if err != nil {
		return nil, fmt.Errorf("s3 repository s3://%s: %w", opts.Bucket, err)
	}
	region := opts.Region
	if region == "" {
		region = "us-east-1"
	}
	lookup := minio.BucketLookupDNS
	if opts.PathStyle {
		lookup = minio.BucketLookupPath
	}
	retries := opts.MaxRetries
	if retries <= 0 {
		retries = 3
	}
	partSize := opts.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < minPartSize {
		return nil, fmt.Errorf("s3 repository s3://%s: part size %d is below S3's minimum of 5 MiB", opts.Bucket, partSize)
	}
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	scheme := "https"
	if !secure {
		scheme = "http"
	}
	c, err := minio.New(host, &minio.Options{
		Creds:        credentials.NewStaticV4(opts.AccessKeyID, opts.SecretAccessKey, ""),
		Secure:       secure,
		Transport:    opts.Transport,
		Region:       region,
		BucketLookup: lookup,
		MaxRetries:   retries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 repository s3://%s at %s://%s: %w", opts.Bucket, scheme, host, err)
	}
	b := &Backend{
		core:     minio.Core{Client: c},
		bucket:   opts.Bucket,
		prefix:   strings.Trim(opts.Prefix, "/"),
		endpoint: scheme + "://" + host,
		partSize: partSize,
		parallel: parallel,
	}
	if b.prefix != "" {
		b.prefix += "/"
	}
	b.logger = opts.Logger
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	b.retryFor = opts.RetryTimeout
	if b.retryFor == 0 {
		b.retryFor = DefaultRetryTimeout
	}
	return b, nil
}

// DefaultRetryTimeout is Options.RetryTimeout's default: outages of the S3
// server up to two minutes do not fail an upload.
const DefaultRetryTimeout = 2 * time.Minute

// retry runs fn (which returns errors wrapped by b.wrap) until it succeeds,
// fails permanently, ctx ends, or fn has failed for longer than
// b.retryFor, waiting 250ms doubling to 10s (jittered) between tries.
func (b *Backend) retry(ctx context.Context, what string, fn func() error) error {
	wait := 250 * time.Millisecond
	var first time.Time
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || storage.IsPermanent(err) || ctx.Err() != nil || b.retryFor < 0 {
			return err
		}
		if first.IsZero() {
			first = time.Now()
		}
		left := b.retryFor - time.Since(first)
		if left <= 0 {
			// Permanent: storage.WithRetry must not spend its own
			// budget on top of this one.
			return storage.Permanent(fmt.Errorf("%w (gave up after retrying for %s)", err, time.Since(first).Round(time.Second)))
		}
		d := min(wait/2+mrand.N(wait/2+1), left)
		b.logger.Warn("S3 request failed; retrying", "op", what, "attempt", attempt, "wait", d, "err", err)
		sleepCtx(ctx, d)
		wait = min(2*wait, 10*time.Second)
	}
}

// parseEndpoint accepts host[:port] or an http(s) URL without a path.
func parseEndpoint(ep string, insecure bool) (host string, secure bool, err error) {
	if ep == "" {
		return "", false, errors.New("no endpoint (host[:port] of the S3 server)")
	}
	if !strings.Contains(ep, "://") {
		if strings.ContainsAny(ep, "/?#@") {
			// Not echoed: it may hold credentials.
			return "", false, errors.New("endpoint: want host[:port] or http(s)://host[:port]")
		}
		return ep, !insecure, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", false, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Host == "" {
		return "", false, fmt.Errorf("endpoint %q: want host[:port] or http(s)://host[:port]", u.Redacted())
	}
	switch u.Scheme {
	case "https":
		if insecure {
			return "", false, fmt.Errorf("endpoint %q is https but insecure (plain HTTP) is set", ep)
		}
		return u.Host, true, nil
	case "http":
		return u.Host, false, nil
	}
	return "", false, fmt.Errorf("endpoint %q: scheme must be http or https", u.Redacted())
}

// String returns s3://bucket/prefix at the endpoint.
func (b *Backend) String() string {
	return "s3://" + b.bucket + "/" + strings.TrimSuffix(b.prefix, "/") + " at " + b.endpoint
}

func (b *Backend) where() string { return b.String() }

func (b *Backend) key(name string) string { return b.prefix + name }

// Check contacts the server and answers whether the bucket is usable: a
// missing bucket (IsNoBucket), refused credentials (storage.IsAccess) and an
// unreachable endpoint (storage.IsUnreachable) are distinct errors.
func (b *Backend) Check(ctx context.Context) error {
	return b.checkBucket(ctx, "check bucket")
}

// checkBucket lists at most one key under the prefix. Unlike HEAD bucket,
// whose answers have no body (some servers answer 404 to an unknown access
// key), a listing's error names its cause; and listing is the permission
// that opening a repository needs anyway.
func (b *Backend) checkBucket(ctx context.Context, op string) error {
	opts := minio.ListObjectsOptions{Prefix: b.prefix, Recursive: true, MaxKeys: 1, FetchOwner: new(bool)}
	for oi := range b.core.ListObjectsIter(ctx, b.bucket, opts) {
		if oi.Err != nil {
			return b.wrap(op, "", oi.Err)
		}
		break
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s in %s: %w", op, b.where(), err)
	}
	return nil
}

func (b *Backend) noBucket(op string) error {
	return storage.Permanent(fmt.Errorf("%s: bucket %q does not exist at %s (create it first, e.g. mc mb or aws s3 mb): %w",
		op, b.bucket, b.endpoint, ErrNoBucket))
}

// wrap turns a minio-go error into one that names the operation, the
// object and the repository, and wraps the matching storage sentinel.
func (b *Backend) wrap(op, name string, err error) error {
	what := op
	if name != "" {
		what = op + " " + name
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s in %s: %w", what, b.where(), err)
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		msg := resp.Code
		if resp.Message != "" {
			msg += ": " + resp.Message
		}
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		switch {
		case resp.Code == minio.NoSuchBucket:
			return b.noBucket(what)
		case accessCodes[resp.Code] || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("%s in %s: %s (check repository.s3.access_key_id, the secret key and the bucket policy): %w",
				what, b.where(), msg, storage.ErrAccess)
		case resp.Code == minio.NoSuchKey || resp.Code == "NotFound" || (resp.StatusCode == http.StatusNotFound && resp.Code == ""):
			return fmt.Errorf("%s in %s: %w", what, b.where(), storage.ErrNotExist)
		case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusRequestTimeout &&
			resp.StatusCode != http.StatusConflict && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != 499:
			return storage.Permanent(fmt.Errorf("%s in %s: %s (HTTP %d)", what, b.where(), msg, resp.StatusCode))
		}
		return fmt.Errorf("%s in %s: %s (HTTP %d)", what, b.where(), msg, resp.StatusCode)
	}
	var ue *url.Error
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) || errors.As(err, &ue) || errors.As(err, &ne) {
		return fmt.Errorf("%s in %s: cannot reach the S3 server (check repository.s3.endpoint and insecure, and that the server is up): %w: %w",
			what, b.where(), storage.ErrUnreachable, err)
	}
	return fmt.Errorf("%s in %s: %w", what, b.where(), err)
}

// accessCodes are the S3 error codes of refused credentials or permissions
// (XAdminUserNotFound: versitygw's answer, with status 404, to an unknown
// access key).
var accessCodes = map[string]bool{
	"InvalidAccessKeyId": true, "SignatureDoesNotMatch": true, "AccessDenied": true,
	"InvalidToken": true, "ExpiredToken": true, "XAdminUserNotFound": true,
	"InvalidClientTokenId": true, "AllAccessDisabled": true,
}

func isStatus(err error, code int, s3codes ...string) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	return resp.StatusCode == code || slices.Contains(s3codes, resp.Code)
}

// isPreconditionFailed: the object exists (If-None-Match: *).
func isPreconditionFailed(err error) bool {
	return isStatus(err, http.StatusPreconditionFailed, "PreconditionFailed")
}

// isConditionalConflict: a concurrent conditional write is in progress
// (AWS answers 409 ConditionalRequestConflict; try again).
func isConditionalConflict(err error) bool {
	return isStatus(err, http.StatusConflict, "ConditionalRequestConflict")
}

// isConnReset reports a connection the server closed while the request body
// was still being sent: servers (versitygw) answer a conditional PUT that
// fails with 412 before reading the body, and close. Repeating the
// conditional PUT is safe: it gets its 412 and the content is compared.
func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Put implements storage.Backend.
//
// Memory: a seekable reader of at most a part (storage.WithRetry's buffer,
// an in-memory object) is sent as it is, without a copy: hashed in a first
// pass, sent in a second. Other readers are read into pooled chunks
// (storage.Buffer) as the bytes come, so memory follows the object's size
// up to a part; longer streams hold at most Parallel+1 parts. A request
// body never reads its bytes after the request returned (see fenced), so
// the chunks are reused at once.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader) error {
	if err := storage.ValidName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	var cond bool
	err := b.retry(ctx, "probe conditional writes", func() error {
		var err error
		cond, err = b.conditionalWrites(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if rs, ok := r.(io.ReadSeeker); ok {
		if done, err := b.putSeeker(ctx, name, rs, cond); done {
			return err
		}
	}
	return b.putStream(ctx, name, r, cond)
}

// putSeeker sends the rest of a seekable reader of at most one part with
// one PUT, reading it twice (to hash, to send) instead of copying it, and
// leaves it at its end as a Put that read everything. done is false, and
// the reader where it stood, when the reader cannot tell its size or is
// longer than a part. The reader must not change during the Put (as for
// storage.WithRetry, which seeks back to send it again).
func (b *Backend) putSeeker(ctx context.Context, name string, rs io.ReadSeeker, cond bool) (done bool, err error) {
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return false, nil
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if _, serr := rs.Seek(start, io.SeekStart); serr != nil {
		return true, fmt.Errorf("put %s: seek: %w", name, serr)
	}
	size := end - start
	if err != nil || size < 0 || size > int64(b.partSize) {
		return false, nil
	}
	h := sha256.New()
	m, err := copyCtx(ctx, h, io.LimitReader(rs, size))
	if err != nil {
		return true, fmt.Errorf("put %s: %w", name, err)
	}
	if m != size {
		return true, fmt.Errorf("put %s: read %d of %d bytes: %w", name, m, size, io.ErrUnexpectedEOF)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	err = b.putSingle(ctx, name, rs, start, size, sum, cond)
	if _, serr := rs.Seek(end, io.SeekStart); serr != nil && err == nil {
		err = fmt.Errorf("put %s: seek: %w", name, serr)
	}
	return true, err
}

// putStream reads r in parts: one part and its end go in one PUT, more in a
// multipart upload.
func (b *Backend) putStream(ctx context.Context, name string, r io.Reader, cond bool) error {
	h := sha256.New()
	first := new(storage.Buffer)
	eof, err := first.Fill(ctx, r, int64(b.partSize))
	if err != nil {
		first.Release()
		return fmt.Errorf("put %s: %w", name, err)
	}
	first.Each(func(p []byte) { h.Write(p) })
	if !eof {
		// Exactly one full part and then the end is still a single PUT:
		// one more byte decides.
		next := new(storage.Buffer)
		if _, err := next.Fill(ctx, r, 1); err != nil {
			first.Release()
			next.Release()
			return fmt.Errorf("put %s: %w", name, err)
		}
		if next.Len() > 0 {
			// putMultipart releases both buffers.
			return b.putMultipart(ctx, name, r, h, first, next, cond)
		}
		next.Release()
	}
	defer first.Release()
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return b.putSingle(ctx, name, first.Reader(), 0, first.Len(), sum, cond)
}

// smallBufs are copyCtx's buffers.
var smallBufs = sync.Pool{New: func() any { s := make([]byte, smallSize); return &s }}

const smallSize = 256 << 10

// errFenced is what a request body answers once its request returned.
var errFenced = errors.New("request body read after its request returned")

// fenced is a request body: size bytes of rs from start. net/http may
// still read a request's body after the request returned (when the server
// answered before reading all of it, as with an early 412), so every
// request gets its own fenced body, closed when the request returns: a
// late read then fails without touching rs, whose bytes (pooled chunks,
// the caller's reader) may already serve another Put or another attempt.
type fenced struct {
	mu     sync.Mutex
	rs     io.ReadSeeker
	start  int64
	size   int64
	pos    int64
	closed bool
}

func (f *fenced) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, errFenced
	}
	if f.pos >= f.size {
		return 0, io.EOF
	}
	if int64(len(p)) > f.size-f.pos {
		p = p[:f.size-f.pos]
	}
	n, err := f.rs.Read(p)
	f.pos += int64(n)
	if err == io.EOF {
		err = nil
		if n == 0 {
			err = io.ErrUnexpectedEOF // shorter than it said
		}
	}
	return n, err
}

func (f *fenced) Seek(offset int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, errFenced
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += f.pos
	case io.SeekEnd:
		offset += f.size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if offset < 0 || offset > f.size {
		return 0, fmt.Errorf("seek to %d outside 0..%d", offset, f.size)
	}
	if _, err := f.rs.Seek(f.start+offset, io.SeekStart); err != nil {
		return 0, err
	}
	f.pos = offset
	return offset, nil
}

// close ends the body: it waits for a Read in progress and fails later
// ones.
func (f *fenced) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

// putSingle sends size bytes of rs from start with one PUT.
func (b *Backend) putSingle(ctx context.Context, name string, rs io.ReadSeeker, start, size int64, sum [sha256.Size]byte, cond bool) error {
	key := b.key(name)
	if !cond {
		// Check before write; a concurrent writer can slip in between.
		if _, err := b.Stat(ctx, name); err == nil {
			return b.compareExisting(ctx, name, size, sum)
		} else if !storage.IsNotExist(err) {
			return fmt.Errorf("put %s: %w", name, err)
		}
	}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
		var opts minio.PutObjectOptions
		if cond {
			opts.SetMatchETagExcept("*")
		}
		body := &fenced{rs: rs, start: start, size: size}
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("put %s: seek: %w", name, err)
		}
		_, err := b.core.PutObject(ctx, b.bucket, key, body, size, "", hex.EncodeToString(sum[:]), opts)
		body.close()
		switch {
		case err == nil:
			return nil
		case isPreconditionFailed(err):
			return b.compareExisting(ctx, name, size, sum)
		case (isConditionalConflict(err) || isConnReset(err)) && attempt < conflictRetries:
			sleepCtx(ctx, time.Duration(attempt+1)*50*time.Millisecond)
			continue
		}
		return b.wrap("put", name, err)
	}
}

// conditionalWrites reports whether the server honours If-None-Match: * on
// PUT, finding out with a probe the first time: a small object is written
// twice under a random name; the second write must be refused.
func (b *Backend) conditionalWrites(ctx context.Context) (bool, error) {
	b.condMu.Lock()
	defer b.condMu.Unlock()
	if b.condKnown {
		return b.conditional, nil
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	key := b.key(probePrefix + hex.EncodeToString(rnd[:]))
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		_ = b.core.RemoveObject(dctx, b.bucket, key, minio.RemoveObjectOptions{})
	}()
	put := func(data string) error {
		var opts minio.PutObjectOptions
		if !b.ignoreCondition {
			opts.SetMatchETagExcept("*")
		}
		_, err := b.core.PutObject(ctx, b.bucket, key, strings.NewReader(data), int64(len(data)), "", "", opts)
		return err
	}
	supported := true
	if err := put("1"); err != nil {
		if !isStatus(err, http.StatusNotImplemented, "NotImplemented") {
			return false, b.wrap("probe conditional writes", "", err)
		}
		supported = false
	} else {
		switch err := put("2"); {
		case err == nil:
			supported = false
		case isPreconditionFailed(err):
		case isStatus(err, http.StatusNotImplemented, "NotImplemented"):
			supported = false
		default:
			return false, b.wrap("probe conditional writes", "", err)
		}
	}
	b.condKnown, b.conditional = true, supported
	if !supported {
		b.logger.Warn("the S3 server does not honour conditional writes (If-None-Match); synbak checks before each write instead, which a concurrent writer of the same name can race: run one writer per repository or upgrade the server",
			"repository", b.where())
	}
	return supported, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// compareExisting decides a Put that found the name taken: nil when the
// stored object has the same size and sha256, else a conflict.
func (b *Backend) compareExisting(ctx context.Context, name string, size int64, sum [sha256.Size]byte) error {
	oi, err := b.Stat(ctx, name)
	if err != nil {
		if storage.IsNotExist(err) {
			// Deleted between the refusal and now: a retry may succeed.
			return fmt.Errorf("put %s in %s: the object existed, then vanished: %w", name, b.where(), err)
		}
		return fmt.Errorf("put %s: compare with existing object: %w", name, err)
	}
	if oi.Size != size {
		return fmt.Errorf("put %s in %s: %w", name, b.where(), storage.ErrConflict)
	}
	rc, err := b.Get(ctx, name, 0, -1)
	if err != nil {
		return fmt.Errorf("put %s: compare with existing object: %w", name, err)
	}
	defer rc.Close()
	h := sha256.New()
	m, err := io.Copy(h, rc)
	if err != nil {
		return b.wrap("put "+name+": compare with existing object", "", err)
	}
	var got [sha256.Size]byte
	h.Sum(got[:0])
	if m != size || got != sum {
		return fmt.Errorf("put %s in %s: %w", name, b.where(), storage.ErrConflict)
	}
	return nil
}

// partSizeFor returns the size of part num (from 1): Options.PartSize for
// the first 2,000 parts, doubling every 2,000 parts after, so that S3's
// 10,000 parts hold about 31×2,000 parts' worth (496 GiB with 8 MiB parts)
// while objects of up to 2,000 parts (the usual) keep the memory of small
// parts.
func (b *Backend) partSizeFor(num int) int64 {
	return int64(b.partSize) << min((num-1)/2000, 4)
}

// putMultipart uploads the first part (first, already read and hashed) and
// next (the start of the second part, not hashed) and the rest of r as a
// multipart upload, and completes it with If-None-Match: *. It releases
// both buffers.
func (b *Backend) putMultipart(ctx context.Context, name string, r io.Reader, h hash.Hash, first, next *storage.Buffer, cond bool) (err error) {
	key := b.key(name)
	// An existing object makes the upload pointless: compare instead.
	serr := b.retry(ctx, "stat "+name, func() error { _, err := b.Stat(ctx, name); return err })
	if serr == nil {
		size := first.Len() + next.Len()
		next.Each(func(p []byte) { h.Write(p) })
		first.Release()
		next.Release()
		m, err := copyCtx(ctx, h, r)
		if err != nil {
			return fmt.Errorf("put %s: %w", name, err)
		}
		size += m
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		return b.compareExisting(ctx, name, size, sum)
	} else if !storage.IsNotExist(serr) {
		first.Release()
		next.Release()
		return fmt.Errorf("put %s: %w", name, serr)
	}

	var uploadID string
	err = b.retry(ctx, "start multipart upload "+name, func() error {
		var err error
		if uploadID, err = b.core.NewMultipartUpload(ctx, b.bucket, key, minio.PutObjectOptions{}); err != nil {
			return b.wrap("put "+name+": start multipart upload", "", err)
		}
		return nil
	})
	if err != nil {
		first.Release()
		next.Release()
		return err
	}
	completed := false
	defer func() {
		if !completed {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
			defer cancel()
			if aerr := b.core.AbortMultipartUpload(actx, b.bucket, key, uploadID); aerr != nil && err != nil {
				err = fmt.Errorf("%w (and aborting the multipart upload %s failed: %v)", err, uploadID, b.wrap("abort", name, aerr))
			}
		}
	}()

	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		parts    []minio.CompletePart
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, b.parallel)
		size     int64
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return firstErr != nil }
	upload := func(num int, buf *storage.Buffer) {
		defer wg.Done()
		defer func() { <-sem }()
		defer buf.Release()
		var p minio.ObjectPart
		err := b.retry(uctx, fmt.Sprintf("put %s: part %d", name, num), func() error {
			// A new body each try: the last one may still be read.
			body := &fenced{rs: buf.Reader(), size: buf.Len()}
			var err error
			p, err = b.core.PutObjectPart(uctx, b.bucket, key, uploadID, num, body, buf.Len(), minio.PutObjectPartOptions{})
			body.close()
			if err != nil {
				return b.wrap(fmt.Sprintf("put %s: part %d", name, num), "", err)
			}
			return nil
		})
		if err != nil {
			fail(err)
			return
		}
		mu.Lock()
		parts = append(parts, minio.CompletePart{PartNumber: num, ETag: p.ETag})
		mu.Unlock()
	}
	// A part holds one of the parallel slots from before it is filled
	// until its upload returns, so that at most b.parallel parts are in
	// memory (one filling while the others upload), not one more.
	acquire := func() bool {
		select {
		case sem <- struct{}{}:
			return true
		case <-uctx.Done():
			return false
		}
	}
	// start uploads a part in the slot its caller holds.
	start := func(num int, buf *storage.Buffer) {
		size += buf.Len()
		wg.Add(1)
		go upload(num, buf)
	}
	num := 1
	ok := acquire()
	if ok {
		start(num, first)
	} else {
		first.Release()
	}
	eof := false
	cur := next
	for ok && !eof && !failed() {
		num++
		if num > maxParts {
			cur.Release()
			fail(fmt.Errorf("put %s in %s: more than %d parts (%d bytes so far): split the object", name, b.where(), maxParts, size))
			break
		}
		if ok = acquire(); !ok {
			cur.Release()
			break
		}
		e, rerr := cur.Fill(uctx, r, b.partSizeFor(num))
		if rerr != nil {
			<-sem
			cur.Release()
			if ctx.Err() != nil {
				rerr = ctx.Err()
			}
			if !failed() {
				fail(fmt.Errorf("put %s: %w", name, rerr))
			}
			break
		}
		eof = e
		if cur.Len() == 0 {
			<-sem
			cur.Release()
			break
		}
		cur.Each(func(p []byte) { h.Write(p) })
		start(num, cur)
		cur = new(storage.Buffer)
	}
	// The empty buffer after the last part started, or next when part 1
	// never did (a buffer handed to start is never cur).
	cur.Release()
	wg.Wait()
	if firstErr != nil {
		if ctx.Err() != nil && !errors.Is(firstErr, ctx.Err()) {
			return fmt.Errorf("put %s: %w", name, ctx.Err())
		}
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	var firstFail time.Time
	wait := 250 * time.Millisecond
	for attempt := 0; ; attempt++ {
		var opts minio.PutObjectOptions
		if cond {
			opts.SetMatchETagExcept("*")
		}
		_, err := b.core.CompleteMultipartUpload(ctx, b.bucket, key, uploadID, parts, opts)
		switch {
		case err == nil:
			completed = true
			return nil
		case isPreconditionFailed(err):
			// The upload stays open; the deferred abort removes it.
			return b.compareExisting(ctx, name, size, sum)
		case isConditionalConflict(err) && attempt < conflictRetries:
			sleepCtx(ctx, time.Duration(attempt+1)*50*time.Millisecond)
			continue
		case !firstFail.IsZero() && isNoSuchUpload(err):
			// An earlier try completed the upload but its answer was
			// lost: the object is there if it holds these bytes.
			completed = true
			return b.compareExisting(ctx, name, size, sum)
		}
		werr := b.wrap("put "+name+": complete multipart upload", "", err)
		if storage.IsPermanent(werr) || ctx.Err() != nil || b.retryFor < 0 {
			return werr
		}
		if firstFail.IsZero() {
			firstFail = time.Now()
		}
		left := b.retryFor - time.Since(firstFail)
		if left <= 0 {
			return storage.Permanent(fmt.Errorf("%w (gave up after retrying for %s)", werr, time.Since(firstFail).Round(time.Second)))
		}
		d := min(wait/2+mrand.N(wait/2+1), left)
		b.logger.Warn("S3 request failed; retrying", "op", "complete multipart upload "+name, "err", werr, "wait", d)
		sleepCtx(ctx, d)
		wait = min(2*wait, 10*time.Second)
	}
}

// isNoSuchUpload reports whether err says the multipart upload is gone
// (completed or aborted).
func isNoSuchUpload(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && resp.Code == "NoSuchUpload"
}

// copyCtx copies r to w, checking ctx between reads.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := r.Read(buf)
		if m > 0 {
			w.Write(buf[:m])
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read: %w", err)
		}
	}
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := storage.ValidName(name); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", name, offset)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if length == 0 {
		if _, err := b.Stat(ctx, name); err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		_ = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		_ = opts.SetRange(offset, 0)
	}
	rc, _, _, err := b.core.GetObject(ctx, b.bucket, b.key(name), opts)
	if err != nil {
		if isStatus(err, http.StatusRequestedRangeNotSatisfiable, "InvalidRange") {
			// offset at or past the end: an empty read, as from a file.
			if _, serr := b.Stat(ctx, name); serr != nil {
				return nil, serr
			}
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, b.wrap("get", name, err)
	}
	return &body{rc: rc, b: b, name: name}, nil
}

// body wraps read errors of a Get with the object and repository.
type body struct {
	rc   io.ReadCloser
	b    *Backend
	name string
}

func (r *body) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF {
		err = r.b.wrap("read", r.name, err)
	}
	return n, err
}

func (r *body) Close() error { return r.rc.Close() }

// Stat implements storage.Backend. A missing object in a missing bucket is
// a missing bucket, not a missing object (HEAD answers 404 to both).
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := storage.ValidName(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	oi, err := b.core.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if err != nil {
		werr := b.wrap("stat", name, err)
		if storage.IsNotExist(werr) {
			if berr := b.checkBucket(ctx, "stat "+name); berr != nil {
				return storage.ObjectInfo{}, berr
			}
		}
		return storage.ObjectInfo{}, werr
	}
	return storage.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// List implements storage.Backend. S3 lists keys in lexical order of their
// UTF-8 bytes, which is the order the interface promises.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", b.where(), err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true, FetchOwner: new(bool)}
	last := ""
	for oi := range b.core.ListObjectsIter(lctx, b.bucket, opts) {
		if oi.Err != nil {
			return b.wrap("list", prefix, oi.Err)
		}
		name := strings.TrimPrefix(oi.Key, b.prefix)
		if strings.HasSuffix(name, "/") || storage.ValidName(name) != nil || strings.HasPrefix(name, probePrefix) {
			continue // a directory marker, a key synbak did not write, a probe
		}
		if name <= last && last != "" {
			return fmt.Errorf("list %s: the server listed %q after %q, not in lexical order", b.where(), name, last)
		}
		last = name
		if err := fn(storage.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", b.where(), err)
	}
	return nil
}

// Delete implements storage.Backend. S3 answers success for a missing key.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := storage.ValidName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	err := b.core.RemoveObject(ctx, b.bucket, b.key(name), minio.RemoveObjectOptions{})
	if err != nil {
		werr := b.wrap("delete", name, err)
		if storage.IsNotExist(werr) && !IsNoBucket(werr) {
			return nil
		}
		return werr
	}
	return nil
}
