package kvm

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// handle is a KVM file descriptor owned through an *os.File. Every ioctl
// runs inside the file's RawConn.Control, which holds a reference on the
// descriptor for the duration of the call: a concurrent Close cannot release
// the number and let the kernel reuse it under a running ioctl.
type handle struct {
	f  *os.File
	rc syscall.RawConn
}

func newHandle(f *os.File) (handle, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return handle{}, fmt.Errorf("getting raw conn of %s: %w", f.Name(), err)
	}
	return handle{f: f, rc: rc}, nil
}

// fileFromFD wraps an fd returned by an ioctl (KVM_CREATE_VM,
// KVM_CREATE_VCPU) in a handle that owns it.
func fileFromFD(fd uintptr, name string) (handle, error) {
	f := os.NewFile(fd, name)
	h, err := newHandle(f)
	if err != nil {
		f.Close()
		return handle{}, err
	}
	return h, nil
}

func (h handle) close() error { return h.f.Close() }

// ioctlOnce issues one ioctl with arg as its argument and no retry. arg may
// be nil. The pointer is converted to uintptr in the Syscall call
// expression, the form unsafe.Pointer rule 4 allows, so the GC keeps the
// pointee alive and in place for the call.
func (h handle) ioctlOnce(req uintptr, arg unsafe.Pointer) (uintptr, error) {
	var (
		r     uintptr
		errno syscall.Errno
	)
	if err := h.rc.Control(func(fd uintptr) {
		r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctl issues an ioctl with a pointer argument, retrying on EINTR.
func (h handle) ioctl(req uintptr, arg unsafe.Pointer) (uintptr, error) {
	for {
		r, err := h.ioctlOnce(req, arg)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return r, err
	}
}

// ioctlVal issues an ioctl whose argument is an integer, retrying on EINTR.
func (h handle) ioctlVal(req, val uintptr) (uintptr, error) {
	for {
		var (
			r     uintptr
			errno syscall.Errno
		)
		if err := h.rc.Control(func(fd uintptr) {
			r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, val)
		}); err != nil {
			return 0, err
		}
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlPtr issues an ioctl whose argument points at v, a fixed-size mirror
// of a kernel struct (its size is asserted in internal/abi/kvm, so the kernel
// reads or writes exactly *v), retrying on EINTR.
func ioctlPtr[T any](h handle, req uintptr, v *T) (uintptr, error) {
	return h.ioctl(req, unsafe.Pointer(v))
}
