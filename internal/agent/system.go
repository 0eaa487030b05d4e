package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// System is the kernel state that post-restore init changes. HostSystem is
// the real one; tests substitute a recorder for the parts that would change
// the test host (its clock), and test the real calls where that is safe.
type System interface {
	// Hostname returns the current hostname.
	Hostname() (string, error)
	// SetHostname sets the hostname (sethostname(2)).
	SetHostname(name string) error
	// SetClock sets the realtime clock (clock_settime(CLOCK_REALTIME)).
	SetClock(t time.Time) error
	// AddEntropy credits b to the kernel's entropy pool (RNDADDENTROPY on
	// /dev/urandom) and then reseeds the CRNG (RNDRESEEDCRNG), so that
	// /dev/urandom and getrandom(2) output diverges at once between clones
	// restored from one snapshot.
	AddEntropy(b []byte) error
}

// HostSystem changes the kernel this process runs on. Everything but
// Hostname needs CAP_SYS_ADMIN (CAP_SYS_TIME for the clock).
type HostSystem struct{}

// Hostname implements System.
func (HostSystem) Hostname() (string, error) { return os.Hostname() }

// SetHostname implements System.
func (HostSystem) SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	return nil
}

// SetClock implements System.
func (HostSystem) SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}

// AddEntropy implements System.
func (HostSystem) AddEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := addEntropy(f, b); err != nil {
		return err
	}
	if err := ioctlNoArg(f, unix.RNDRESEEDCRNG); err != nil {
		return fmt.Errorf("RNDRESEEDCRNG: %w", err)
	}
	return nil
}

// nativeEndian is the byte order of the kernel's structs (amd64: little).
var nativeEndian = binary.NativeEndian

// randPoolInfo builds struct rand_pool_info (linux/random.h):
//
//	struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; };
//
// entropy_count is in bits; the host's bytes are credited as full entropy
// because they come from the host's CSPRNG.
func randPoolInfo(b []byte) []byte {
	words := (len(b) + 3) / 4
	out := make([]byte, 8+4*words)
	nativeEndian.PutUint32(out[0:], uint32(8*len(b)))
	nativeEndian.PutUint32(out[4:], uint32(len(b)))
	copy(out[8:], b)
	return out
}

func ioctlNoArg(f *os.File, req uint) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno error
	if err := rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), 0)
		if e != 0 {
			errno = e
		}
	}); err != nil {
		return err
	}
	return errno
}
