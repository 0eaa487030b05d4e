package uffd

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
)

// Register is the VMM's side of userfaultfd set-up: it creates a
// non-blocking, close-on-exec userfaultfd, negotiates the API with
// UFFD_FEATURE_EVENT_REMOVE (so the page server learns about
// MADV_DONTNEED, e.g. from a balloon) and, for 2 MiB regions,
// UFFD_FEATURE_MISSING_HUGETLBFS, and registers every region in MISSING
// mode. The regions must already be mapped (anonymous, or hugetlbfs for 2
// MiB pages) and not yet touched. The caller owns the returned file; keep it
// open while the VM runs, because closing the last userfaultfd turns the
// regions back into plain memory that fills missing pages with zeros.
func Register(regions []Region) (*os.File, error) {
	if err := ValidateRegions(regions); err != nil {
		return nil, fmt.Errorf("registering userfaultfd: %w", err)
	}
	fd, err := newUffd()
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "userfaultfd")
	if err := registerRegions(f, regions); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// newUffd creates a userfaultfd that handles kernel-mode faults too (KVM
// touches guest memory from the kernel). The system call needs privilege or
// vm.unprivileged_userfaultfd=1; /dev/userfaultfd (Linux 6.1+) is the
// fallback governed by file permissions instead.
func newUffd() (int, error) {
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno == 0 {
		return int(fd), nil
	}
	dev, err := os.OpenFile("/dev/userfaultfd", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("creating userfaultfd: %w", errors.Join(fmt.Errorf("userfaultfd(2): %w", errno), err))
	}
	defer dev.Close()
	rc, err := dev.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("creating userfaultfd: %w", err)
	}
	var nfd int
	var nerr error
	if err := rc.Control(func(d uintptr) { nfd, nerr = newUffdIoctl(d, flags) }); err != nil {
		return -1, fmt.Errorf("creating userfaultfd: %w", err)
	}
	if nerr != nil {
		return -1, fmt.Errorf("creating userfaultfd through /dev/userfaultfd: %w", nerr)
	}
	return nfd, nil
}

func registerRegions(f *os.File, regions []Region) error {
	features := uint64(abi.UFFD_FEATURE_EVENT_REMOVE)
	for _, r := range regions {
		if r.PageSize == PageSize2M {
			features |= abi.UFFD_FEATURE_MISSING_HUGETLBFS
		}
	}
	return control(f, func(fd uintptr) error {
		api := abi.UffdioApi{Api: abi.UFFD_API, Features: features}
		if err := ioctlAPI(fd, &api); err != nil {
			return fmt.Errorf("UFFDIO_API with features %#x: %w (kernel too old?)", features, err)
		}
		const need = abi.UFFD_API_IOCTL_REGISTER | abi.UFFD_API_IOCTL_UNREGISTER
		if api.Ioctls&need != need {
			return fmt.Errorf("UFFDIO_API: kernel offers ioctls %#x, lacking register/unregister", api.Ioctls)
		}
		for i, r := range regions {
			reg := abi.UffdioRegister{
				Range: abi.UffdioRange{Start: r.BaseHostVirtAddr, Len: r.Size},
				Mode:  abi.UFFDIO_REGISTER_MODE_MISSING,
			}
			if err := ioctlRegister(fd, &reg); err != nil {
				return fmt.Errorf("registering region %d %v: %w (is it mapped, anonymous or hugetlbfs?)", i, r, err)
			}
			const rangeNeed = abi.UFFD_RANGE_IOCTL_COPY | abi.UFFD_RANGE_IOCTL_WAKE
			if reg.Ioctls&rangeNeed != rangeNeed {
				return fmt.Errorf("registering region %d %v: kernel offers range ioctls %#x, lacking copy/wake", i, r, reg.Ioctls)
			}
		}
		return nil
	})
}

// control runs op with f's descriptor held, so that the number cannot be
// closed and reused by another open while op runs.
func control(f *os.File, op func(fd uintptr) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = op(fd) }); err != nil {
		return err
	}
	return opErr
}
