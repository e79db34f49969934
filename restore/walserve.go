package restore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synbak/synbak/wal"
)

// The restore serves PostgreSQL's restore_command itself: the restored
// server's OS user never reads the repository, its credentials or the age
// identity. restore_command runs `synbak wal-fetch --socket DIR %f %p`, a
// client that asks the restore over the Unix socket DIR/WALSocketName (DIR
// is the server's private socket directory, 0700, owned by the server's OS
// user) and writes what it gets to %p. The restore fetches every file
// through wal.Fetcher (checksum, decryption, decompression, and the
// Fetcher's checks of a segment against its name) before it hands it over,
// and prefetches the plan's segments ahead of replay.
//
// The protocol is one request per connection: the client sends
// "GET <file>\n"; the answer is "FD <size>\n" with the open staged file
// attached (SCM_RIGHTS; the client copies size bytes from it), or
// "NOTFOUND <message>\n" (the file is not in the archive: wal-fetch exits
// 1), or "ERR <message>\n" (anything else: wal-fetch exits 255).

// WALSocketName is the restore's WAL socket in the server's socket
// directory.
const WALSocketName = "synbak-wal.sock"

// walServer answers restore_command's requests and prefetches the plan.
type walServer struct {
	f  *wal.Fetcher
	ln *net.UnixListener
	// staging holds the fetched files (the restore's own directory).
	staging string
	log     *slog.Logger
	// allowed are the peer uids that may ask (the server's OS user and
	// this process's).
	allowed map[uint32]bool
	// owner, when not nil, is given each staged file, so that the client
	// can link it into place (see FetchViaSocket).
	owner *Owner

	plan  []string // segment names in replay order
	index map[string]int
	ahead int
	sem   chan struct{}

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu      sync.Mutex
	entries map[int]*prefetched
	next    int // the next plan index to prefetch
	seq     int
	// served are the files handed over, in order; notFound the plan's
	// files answered "not in the archive"; failed is the first
	// file whose fetch failed with something other than "not found".
	served    []string
	notFound  []string
	failed    string
	failedErr error
}

type prefetched struct {
	done chan struct{}
	path string
	err  error
	// dropped: replay moved past it before it was asked for; its file
	// is removed by whoever comes last.
	dropped bool
}

var errDropped = errors.New("prefetch dropped")

// newWALServer listens on sockDir/WALSocketName (given to owner, when not
// nil) and stages fetched files in staging (the restore's own directory,
// which the server's user cannot read; best on the data directory's file
// system, where restore_command links instead of copying). ahead is how
// many of the plan's segments are fetched ahead of the last one requested
// (0: none).
func newWALServer(f *wal.Fetcher, sockDir, staging string, owner *Owner, plan []string, ahead int, log *slog.Logger) (*walServer, error) {
	path := filepath.Join(sockDir, WALSocketName)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen for restore_command on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	allowed := map[uint32]bool{uint32(os.Geteuid()): true}
	if owner != nil {
		if err := os.Lchown(path, owner.UID, owner.GID); err != nil {
			ln.Close()
			return nil, err
		}
		allowed[uint32(owner.UID)] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &walServer{
		f: f, ln: ln, staging: staging, log: log, owner: owner, allowed: allowed,
		plan: plan, index: make(map[string]int, len(plan)), ahead: ahead,
		sem: make(chan struct{}, max(1, min(ahead, 4))), ctx: ctx, cancel: cancel,
		entries: map[int]*prefetched{},
	}
	for i, n := range plan {
		if _, dup := s.index[n]; !dup {
			s.index[n] = i
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.accept()
	}()
	return s, nil
}

// startPrefetch begins fetching the plan's first segments.
func (s *walServer) startPrefetch() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.schedule(-1)
}

// close stops serving, waits for the fetches in flight and removes what
// they staged.
func (s *walServer) close() {
	s.closeOnce.Do(s.shutdown)
}

func (s *walServer) shutdown() {
	s.cancel()
	s.ln.Close()
	s.wg.Wait()
	s.mu.Lock()
	for i, e := range s.entries {
		os.Remove(e.path)
		delete(s.entries, i)
	}
	s.mu.Unlock()
}

// lastFailure names the first file whose fetch failed for a reason other
// than "not in the archive".
func (s *walServer) lastFailure() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed, s.failedErr
}

// resetServed forgets what was served so far (the probe's fetch).
func (s *walServer) resetServed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.served, s.notFound = nil, nil
}

func (s *walServer) wasServed(file string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.served, file)
}

// notFoundInPlan are the plan's segments answered "not in the archive".
func (s *walServer) notFoundInPlan() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.notFound)
}

func (s *walServer) accept() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

func peerUID(c *net.UnixConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) { cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cred.Uid, nil
}

func validFileName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return name != "." && name != ".."
}

func (s *walServer) handle(c *net.UnixConn) {
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	defer stop()
	uid, err := peerUID(c)
	if err != nil || !s.allowed[uid] {
		fmt.Fprintf(c, "ERR this socket serves the restored server's OS user only\n")
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(c, 128).ReadString('\n')
	if err != nil {
		return
	}
	file, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "GET ")
	if !ok || !validFileName(file) {
		fmt.Fprintf(c, "ERR bad request\n")
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	path, cleanup, err := s.get(file)
	if err != nil {
		kind := "ERR"
		if wal.IsNotFound(err) {
			kind = "NOTFOUND"
			s.mu.Lock()
			if _, ok := s.index[file]; ok {
				s.notFound = append(s.notFound, file)
			}
			s.mu.Unlock()
		}
		fmt.Fprintf(c, "%s %s\n", kind, strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	defer cleanup()
	in, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		fmt.Fprintf(c, "ERR %v\n", err)
		return
	}
	// The open file goes to the client (SCM_RIGHTS), which links it into
	// place (or copies it in the kernel when the staging directory is on
	// another file system): no bytes through the socket. The client can
	// read that one file and nothing else of the restore's; once it has
	// it, the staged name is removed.
	if _, _, err := c.WriteMsgUnix(fmt.Appendf(nil, "FD %d\n", st.Size()), unix.UnixRights(int(in.Fd())), nil); err != nil {
		s.log.Warn("restore_command: handing over a WAL file failed", "file", file, "err", err)
		return
	}
	// Served once the client has it: it closes the connection.
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, _ = c.Read(make([]byte, 1))
	s.mu.Lock()
	s.served = append(s.served, file)
	s.mu.Unlock()
}

// get returns the staged copy of file and what removes it after serving.
func (s *walServer) get(file string) (string, func(), error) {
	s.mu.Lock()
	i, inPlan := s.index[file]
	var e *prefetched
	if inPlan {
		e = s.entries[i]
		// Replay moved on: what lies before i is not needed again (if it
		// is, it is fetched on demand).
		for j, old := range s.entries {
			if j < i {
				old.dropped = true
				os.Remove(old.path)
				delete(s.entries, j)
			}
		}
		s.schedule(i)
		delete(s.entries, i)
	}
	s.mu.Unlock()
	if e != nil {
		select {
		case <-e.done:
		case <-s.ctx.Done():
			return "", nil, s.ctx.Err()
		}
		if e.err == nil {
			return e.path, func() { os.Remove(e.path) }, nil
		}
		// Fetched again below: the error may have been passing.
	}
	s.mu.Lock()
	s.seq++
	base := fmt.Sprintf("get-%d-%s", s.seq, file)
	s.mu.Unlock()
	path, err := s.fetch(file, base)
	if err != nil {
		return "", nil, err
	}
	return path, func() { os.Remove(path) }, nil
}

// fetch stages file as base in the staging directory and returns where.
func (s *walServer) fetch(file, base string) (string, error) {
	path := filepath.Join(s.staging, base)
	err := s.f.Fetch(s.ctx, file, path)
	if err == nil && s.owner != nil {
		err = os.Chown(path, s.owner.UID, s.owner.GID)
	}
	if err != nil {
		os.Remove(path)
		os.Remove(path + ".synbak-tmp")
	}
	if err != nil && !wal.IsNotFound(err) && s.ctx.Err() == nil {
		s.mu.Lock()
		if s.failed == "" {
			s.failed, s.failedErr = file, err
		}
		s.mu.Unlock()
		s.log.Error("restore_command: fetching a WAL file failed", "file", file, "err", err)
	}
	return path, err
}

// schedule starts prefetches of the plan's segments after index i, up to
// s.ahead of them. s.mu is held.
func (s *walServer) schedule(i int) {
	if s.ahead <= 0 {
		return
	}
	s.next = max(s.next, i+1)
	for ; s.next < len(s.plan) && s.next <= i+s.ahead; s.next++ {
		n := s.next
		e := &prefetched{done: make(chan struct{})}
		s.entries[n] = e
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(e.done)
			select {
			case s.sem <- struct{}{}:
			case <-s.ctx.Done():
				e.err = s.ctx.Err()
				return
			}
			defer func() { <-s.sem }()
			s.mu.Lock()
			dropped := e.dropped
			s.mu.Unlock()
			if dropped {
				e.err = errDropped
				return
			}
			p, err := s.fetch(s.plan[n], "ahead-"+strconv.Itoa(n)+"-"+s.plan[n])
			s.mu.Lock()
			e.path, e.err = p, err
			if e.dropped {
				os.Remove(p)
			}
			s.mu.Unlock()
		}()
	}
}

// linked gives src, when it is size bytes long, the name tmp (a hard link
// through /proc/self/fd: no byte copied). It fails, and the caller copies,
// when tmp is on another file system than the restore's staging directory
// or src is not this user's.
func linked(src *os.File, size int64, tmp string) bool {
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil || st.Size != size || st.Nlink != 1 {
		return false
	}
	_ = os.Remove(tmp)
	err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", src.Fd()), unix.AT_FDCWD, tmp, unix.AT_SYMLINK_FOLLOW)
	return err == nil
}

// sendfile copies size bytes from src to out in the kernel (whatever
// file systems the two are on: the restore may stage on a tmpfs).
func sendfile(out, src *os.File, size int64) (int64, error) {
	var done int64
	for done < size {
		n, err := unix.Sendfile(int(out.Fd()), int(src.Fd()), nil, int(min(size-done, 1<<30)))
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			break
		}
		done += int64(n)
	}
	return done, nil
}

// readAnswer reads the restore's answer line and the file descriptor
// sent with it (-1 when none).
func readAnswer(c *net.UnixConn) (string, int, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	fd := -1
	var line []byte
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr == nil {
				for _, m := range msgs {
					if fds, err := unix.ParseUnixRights(&m); err == nil {
						for _, f := range fds {
							if fd < 0 {
								fd = f
							} else {
								unix.Close(f)
							}
						}
					}
				}
			}
		}
		line = append(line, buf[:n]...)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			return string(line[:i]), fd, nil
		}
		if err != nil || len(line) > 4096 {
			if fd >= 0 {
				unix.Close(fd)
			}
			if err == nil {
				err = errors.New("answer too long")
			}
			return "", -1, err
		}
	}
}

// FetchViaSocket is restore_command's client (`synbak wal-fetch --socket
// DIR FILE DEST`): it asks the restore serving DIR for file and writes it
// to dest atomically (a temp file renamed; not fsynced: PostgreSQL reads
// it once, and a crash of the recovery fetches it again). An error for
// which wal.IsNotFound is true means the file is not in the archive.
func FetchViaSocket(ctx context.Context, dir, file, dest string) error {
	if !validFileName(file) {
		return fmt.Errorf("wal-fetch: bad file name %q", file)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(dir, WALSocketName))
	if err != nil {
		return fmt.Errorf("reach the restore serving the WAL (is `synbak restore` still running?): %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(c, "GET %s\n", file); err != nil {
		return fmt.Errorf("ask the restore for %s: %w", file, err)
	}
	line, fd, err := readAnswer(c.(*net.UnixConn))
	if err != nil {
		return fmt.Errorf("read the restore's answer for %s: %w", file, err)
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	kind, rest, _ := strings.Cut(line, " ")
	switch kind {
	case "FD":
	case "NOTFOUND":
		return fmt.Errorf("%s: %w (%s)", file, wal.ErrNotFound, rest)
	case "ERR":
		return fmt.Errorf("the restore could not serve %s: %s", file, rest)
	default:
		return fmt.Errorf("the restore's answer for %s is garbled: %q", file, line)
	}
	size, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || size < 0 || fd < 0 {
		return fmt.Errorf("the restore's answer for %s is garbled: %q", file, line)
	}
	src := os.NewFile(uintptr(fd), file)
	fd = -1 // src closes it
	defer src.Close()
	// Renamed into place without an fsync (not internal/durable):
	// PostgreSQL reads the file at once and asks again after a crash, and
	// an fsync per segment would slow the replay.
	tmp := dest + ".synbak-tmp"
	if linked(src, size, tmp) {
		if err := os.Rename(tmp, dest); err != nil {
			os.Remove(tmp)
			return err
		}
		return nil
	}
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	n, err := sendfile(out, src, size)
	c.Close() // tells the restore it is served
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("the restore sent %d of %d bytes of %s", n, size, file)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
