package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/vmm/memory"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// DefaultServeTimeout bounds how long a Uffd load waits for the page server
// to accept the handshake and serve the first page.
const DefaultServeTimeout = 10 * time.Second

// LoadOptions tunes LoadMemory. Zero fields take the defaults.
type LoadOptions struct {
	// ServeTimeout bounds the Uffd backend's connect, handshake and first
	// served page [DefaultServeTimeout]. The caller's ctx may end it sooner.
	ServeTimeout time.Duration
}

// Loaded is guest memory restored from a snapshot. It owns the mappings
// and, for the Uffd backend, the VMM's userfaultfd and a pidfd of the page
// server, until Close.
type Loaded struct {
	Memory *memory.Memory
	// Backend is the backend the memory came from.
	Backend fcapi.MemBackendType
	// PageServerPID is the page server's pid (Uffd backend), 0 if unknown.
	PageServerPID int

	// uffdMu guards uffd, which ReleaseUFFD may close while the VM still
	// runs.
	uffdMu sync.Mutex
	uffd   *os.File // the VMM's copy: closing it would turn missing pages into zeros
	server *os.File // pidfd of the page server, or nil
	socket string
}

// ReleaseUFFD closes the VMM's copy of the userfaultfd, leaving guest
// memory mapped. Once the page server's copy is closed too, the kernel
// releases the userfaultfd: every thread blocked on a missing page wakes,
// and missing pages read as zeros from then on. It is how a forced stop
// frees threads blocked on guest memory that will never be served (a
// vCPU in KVM_RUN also wakes on a signal; Go code faulting in user mode
// does not). The guest's memory is garbage afterwards: only for a VM that
// is being torn down. Safe to call more than once and concurrently with
// Close.
func (l *Loaded) ReleaseUFFD() error {
	l.uffdMu.Lock()
	defer l.uffdMu.Unlock()
	if l.uffd == nil {
		return nil
	}
	err := l.uffd.Close()
	l.uffd = nil
	return err
}

// Close unmaps guest memory and releases the userfaultfd. The VM using the
// memory must be gone and no vCPU running.
func (l *Loaded) Close() error {
	var errs []error
	if l.Memory != nil {
		errs = append(errs, l.Memory.Close())
		l.Memory = nil
	}
	errs = append(errs, l.ReleaseUFFD())
	if l.server != nil {
		errs = append(errs, l.server.Close())
		l.server = nil
	}
	return errors.Join(errs...)
}

// ErrPageServerGone is returned (wrapped) when the Uffd backend's page
// server exits: guest memory that was not yet served can never arrive, so
// the VM cannot go on.
var ErrPageServerGone = errors.New("the page server exited")

// WatchPageServer blocks until ctx is done (returning nil) or the page
// server process exits (returning an error wrapping ErrPageServerGone). A
// vCPU touching a page that was never served would wait forever, so the
// VMM must run this for the VM's life and end, with the error, when it
// returns one. With the File backend, when the page server's process
// could not be identified, or when it is this process, it just waits for
// ctx.
func (l *Loaded) WatchPageServer(ctx context.Context) error {
	if l.server == nil {
		<-ctx.Done()
		return nil
	}
	// Sleep in poll(2) on the pidfd and an eventfd that the end of ctx
	// writes to: an idle VMM must not wake up periodically.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watching the page server: eventfd: %w", err)
	}
	wake := os.NewFile(uintptr(efd), "page-server-watch-wake")
	defer wake.Close()
	stop := context.AfterFunc(ctx, func() {
		// eventfd(2) adds a host-order uint64. After WatchPageServer
		// returned, this write fails on the closed file, harmlessly.
		_, _ = wake.Write(binary.NativeEndian.AppendUint64(nil, 1))
	})
	defer stop()
	var n int
	var perr error
	fds := make([]unix.PollFd, 2)
	for ctx.Err() == nil {
		err := withFDs([]*os.File{l.server, wake}, func(raw []uintptr) {
			for i, fd := range raw {
				fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
			}
			n, perr = unix.Poll(fds, -1)
		})
		if err == nil && perr != nil && !errors.Is(perr, unix.EINTR) {
			err = perr
		}
		if err != nil {
			return fmt.Errorf("watching the page server (pid %d): %w", l.PageServerPID, err)
		}
		if n > 0 && fds[0].Revents != 0 {
			return fmt.Errorf("%w (pid %d, socket %s): guest memory can no longer be served", ErrPageServerGone, l.PageServerPID, l.socket)
		}
	}
	return nil
}

// CheckLayout reports whether st's memory regions are the layout this
// build gives its memory size, which is what a restore maps.
func CheckLayout(st *vmstate.State) error {
	want, err := memory.Layout(st.MemSize())
	if err != nil {
		return fmt.Errorf("snapshot memory: %w", err)
	}
	if len(want) != len(st.Memory) {
		return fmt.Errorf("snapshot has %d memory regions, a %d MiB guest has %d here", len(st.Memory), st.MemSize()>>20, len(want))
	}
	for i, r := range st.Memory {
		w := want[i]
		if r.GuestPhysAddr != w.GPA || r.Size != w.Size || r.FileOffset != w.FileOffset {
			return fmt.Errorf("snapshot memory region %d is gpa %#x size %#x at file offset %#x; this build lays it out at gpa %#x size %#x offset %#x",
				i, r.GuestPhysAddr, r.Size, r.FileOffset, w.GPA, w.Size, w.FileOffset)
		}
	}
	return nil
}

// LoadMemory maps guest memory for the snapshot st from the backend b:
//   - File: a MAP_PRIVATE mapping of the memory file b.BackendPath, whose
//     size must be exactly the snapshot's memory size. Clean pages are the
//     page cache's, shared by every clone; writes stay private.
//   - Uffd: anonymous MAP_PRIVATE|MAP_NORESERVE memory registered with a
//     userfaultfd in MISSING mode, and Firecracker's handshake sent to the
//     page server listening on b.BackendPath. The page server must then
//     serve the first guest page within the timeout, so a server that
//     accepted the connection but will never serve fails the load instead
//     of hanging the vCPUs later.
func LoadMemory(ctx context.Context, st *vmstate.State, b fcapi.MemBackend, opt LoadOptions) (*Loaded, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if err := CheckLayout(st); err != nil {
		return nil, err
	}
	switch b.BackendType {
	case fcapi.MemBackendFile:
		return loadFile(st, b.BackendPath)
	case fcapi.MemBackendUffd:
		if opt.ServeTimeout <= 0 {
			opt.ServeTimeout = DefaultServeTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, opt.ServeTimeout)
		defer cancel()
		return loadUffd(ctx, st, b.BackendPath, opt.ServeTimeout)
	}
	return nil, fmt.Errorf("memory backend %q: want File or Uffd", b.BackendType)
}

func loadFile(st *vmstate.State, path string) (*Loaded, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening memory file: %w", err)
	}
	defer f.Close() // the mappings keep their own reference
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("memory file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("memory file %s is not a regular file (%v)", path, fi.Mode().Type())
	}
	if size := uint64(fi.Size()); size != st.MemSize() {
		return nil, fmt.Errorf("memory file %s is %d bytes, the snapshot's guest memory is %d bytes (truncated, or the vmstate of another VM)", path, size, st.MemSize())
	}
	mem, err := memory.New(st.MemSize(), memory.Backing{File: f})
	if err != nil {
		return nil, err
	}
	return &Loaded{Memory: mem, Backend: fcapi.MemBackendFile}, nil
}

func loadUffd(ctx context.Context, st *vmstate.State, socket string, timeout time.Duration) (_ *Loaded, err error) {
	// Userfault: Go code in this process (devices, the memory file
	// writer) then reaches guest memory only through pages faulted in
	// inside madvise(2), never through a user-mode fault that could starve
	// a page server sharing the process of Ps.
	mem, err := memory.New(st.MemSize(), memory.Backing{Userfault: true})
	if err != nil {
		return nil, err
	}
	l := &Loaded{Memory: mem, Backend: fcapi.MemBackendUffd, socket: socket}
	probing := false
	defer func() {
		if err != nil && !probing {
			l.Close()
		}
	}()
	var regions []uffd.Region
	for _, r := range mem.Regions() {
		regions = append(regions, uffd.Region{BaseHostVirtAddr: r.HostAddr(), Size: r.Size, Offset: r.FileOffset, PageSize: uffd.PageSize4K})
	}
	if l.uffd, err = uffd.Register(regions); err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to the page server at %s: %w (is it listening?)", socket, err)
	}
	conn := c.(*net.UnixConn)
	l.PageServerPID, l.server = peerPidfd(conn)
	if l.server != nil && l.PageServerPID == os.Getpid() {
		// The page server runs in this process (the builtin VMM inside
		// thaw-shim): it cannot exit while the VM runs, and a watch on
		// our own pidfd would only keep a thread blocked in poll(2).
		l.server.Close()
		l.server = nil
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	err = uffd.SendHandshake(conn, regions, l.uffd)
	conn.Close()
	if err != nil {
		return nil, err
	}
	// Touch the first guest page through the kernel, with a write(2) from
	// it into a private memfd: the copy faults and the page server must
	// answer. A kernel-side access rather than a load in Go code, because
	// if the server never answers the access stays blocked, and a
	// goroutine stuck in a user-mode fault could stall the Go runtime; a
	// memfd rather than a pipe, because pipe_write holds the pipe's mutex
	// while it faults, so closing the pipe would block too. The probe
	// reports through an eventfd, which this function owns and polls.
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("probing the page server: eventfd: %w", err)
	}
	done := os.NewFile(uintptr(ev), "eventfd")
	defer done.Close()
	sink, err := unix.MemfdCreate("thaw-uffd-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("probing the page server: memfd: %w", err)
	}
	// Regions().Host, not Slice: Slice would populate the page here, in
	// the load's goroutine, and wait in madvise(2) for a server that may
	// never answer. The probe goroutine's write(2) takes the fault inside
	// the kernel instead.
	first := mem.Regions()[0].Host[:1]
	go func() {
		// This goroutine ends when the write does: at once if the page is
		// served, else when the kernel wakes it (see below). Writing to
		// done after its Close fails harmlessly (os.ErrClosed).
		_, werr := unix.Write(sink, first)
		unix.Close(sink)
		status := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		if werr != nil {
			status[0] = 2
		}
		done.Write(status)
	}()
	served, err := waitProbe(ctx, done, l.server)
	if served {
		return l, nil
	}
	switch {
	case errors.Is(err, ErrPageServerGone):
		err = fmt.Errorf("%w (pid %d) after the handshake on %s, before serving the first guest page", ErrPageServerGone, l.PageServerPID, socket)
	case errors.Is(ctx.Err(), context.Canceled):
		err = fmt.Errorf("the load was cancelled (the VMM is stopping) before the page server at %s served the first guest page: %w", socket, ctx.Err())
	case ctx.Err() != nil:
		err = fmt.Errorf("the page server at %s took the handshake but served no page within %v: %w", socket, timeout, ctx.Err())
	default:
		err = fmt.Errorf("probing the page server at %s: %w", socket, err)
	}
	// The probe may still be blocked in the kernel on guest memory. Leave
	// the mappings in place (the process is about to end: a failed load is
	// fatal) and drop only the userfaultfd and pidfd: when the page server
	// drops its copy too, the kernel wakes the probe.
	probing = true
	l.ReleaseUFFD()
	if l.server != nil {
		l.server.Close()
	}
	return nil, err
}

// waitProbe waits until the probe reports through done (true if it read
// the page), the page server exits (ErrPageServerGone) or ctx ends. It
// polls in short slices so that a cancelled ctx is noticed.
func waitProbe(ctx context.Context, done, server *os.File) (bool, error) {
	files := []*os.File{done}
	if server != nil {
		files = append(files, server)
	}
	fds := make([]unix.PollFd, len(files))
	for ctx.Err() == nil {
		var n int
		var perr error
		status := make([]byte, 8)
		err := withFDs(files, func(raw []uintptr) {
			for i, fd := range raw {
				fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
			}
			n, perr = unix.Poll(fds, 50)
			if perr == nil && fds[0].Revents&unix.POLLIN != 0 {
				_, perr = unix.Read(int(raw[0]), status)
			}
		})
		if err != nil {
			return false, err
		}
		if errors.Is(perr, unix.EINTR) || n == 0 {
			continue
		}
		if perr != nil {
			return false, perr
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			if status[0] != 1 {
				return false, errors.New("reading the first guest page failed")
			}
			return true, nil
		}
		if len(fds) > 1 && fds[1].Revents != 0 {
			return false, ErrPageServerGone
		}
	}
	return false, ctx.Err()
}

// withFDs runs f with the raw descriptors of files held open (each
// file's RawConn.Control), so none can be closed and reused meanwhile.
func withFDs(files []*os.File, f func([]uintptr)) error {
	raw := make([]uintptr, 0, len(files))
	var run func(i int) error
	run = func(i int) error {
		if i == len(files) {
			f(raw)
			return nil
		}
		rc, err := files[i].SyscallConn()
		if err != nil {
			return err
		}
		var inner error
		if err := rc.Control(func(fd uintptr) {
			raw = append(raw, fd)
			inner = run(i + 1)
		}); err != nil {
			return err
		}
		return inner
	}
	return run(0)
}

// peerPidfd identifies the page server from the connection: its pid
// (SO_PEERCRED) and a pidfd (SO_PEERPIDFD on Linux 6.5+, else pidfd_open
// of that pid). Either may be missing (0, nil): the load still works, only
// WatchPageServer cannot notice the server's exit.
func peerPidfd(conn *net.UnixConn) (int, *os.File) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, nil
	}
	pid, pidfd := 0, -1
	rc.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = p
		}
	})
	if pidfd < 0 && pid > 0 {
		if p, err := unix.PidfdOpen(pid, 0); err == nil {
			pidfd = p
		}
	}
	if pidfd < 0 {
		return pid, nil
	}
	unix.CloseOnExec(pidfd)
	return pid, os.NewFile(uintptr(pidfd), "pidfd")
}
