package uffd

import (
	"unsafe"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
)

// The functions here take a raw fd and must be called inside
// (*os.File).SyscallConn().Control, which keeps the fd number from being
// closed and reused while the system call runs.
//
// Each passes a pointer to a Go value as the ioctl argument. That is safe:
// the conversion to uintptr happens in the Syscall argument list, which the
// compiler keeps alive and unmoved for the duration of the call, and the
// kernel does not retain the pointer after returning.

func ioctl(fd uintptr, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

func ioctlAPI(fd uintptr, a *abi.UffdioApi) error {
	return ioctl(fd, abi.UFFDIO_API, unsafe.Pointer(a))
}

func ioctlRegister(fd uintptr, r *abi.UffdioRegister) error {
	return ioctl(fd, abi.UFFDIO_REGISTER, unsafe.Pointer(r))
}

func ioctlUnregister(fd uintptr, r *abi.UffdioRange) error {
	return ioctl(fd, abi.UFFDIO_UNREGISTER, unsafe.Pointer(r))
}

func ioctlWake(fd uintptr, r *abi.UffdioRange) error {
	return ioctl(fd, abi.UFFDIO_WAKE, unsafe.Pointer(r))
}

// ioctlCopy issues UFFDIO_COPY. The kernel writes c.Copy: bytes copied, or a
// negated errno when nothing was.
func ioctlCopy(fd uintptr, c *abi.UffdioCopy) error {
	return ioctl(fd, abi.UFFDIO_COPY, unsafe.Pointer(c))
}

// ioctlZeropage issues UFFDIO_ZEROPAGE. The kernel writes z.Zeropage like
// UffdioCopy.Copy.
func ioctlZeropage(fd uintptr, z *abi.UffdioZeropage) error {
	return ioctl(fd, abi.UFFDIO_ZEROPAGE, unsafe.Pointer(z))
}

// newUffdIoctl creates a userfaultfd through /dev/userfaultfd's
// USERFAULTFD_IOC_NEW; the argument is a plain integer (the flags).
func newUffdIoctl(devfd uintptr, flags int) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, devfd, abi.USERFAULTFD_IOC_NEW, uintptr(flags))
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// readMsgs reads pending uffd_msg records into msgs with one read(2). The
// byte view covers exactly the slice's backing array, which stays alive for
// the call.
func readMsgs(fd uintptr, msgs []abi.UffdMsg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&msgs[0])), len(msgs)*int(unsafe.Sizeof(msgs[0])))
	n, err := unix.Read(int(fd), b)
	if err != nil {
		return 0, err
	}
	return n / int(unsafe.Sizeof(msgs[0])), nil
}

// addrOf returns the address of b's first byte for use as UFFDIO_COPY's
// source. Callers pass only slices of a Source, whose memory (an mmap
// outside the Go heap, or a buffer the Source keeps alive) stays valid and
// unmoved until the Source is closed.
func addrOf(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
