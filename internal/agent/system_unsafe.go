package agent

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// addEntropy issues RNDADDENTROPY with b wrapped in a struct rand_pool_info.
func addEntropy(f *os.File, b []byte) error {
	info := randPoolInfo(b)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno error
	if err := rc.Control(func(fd uintptr) {
		// Safe: info is a Go slice kept alive by the reference below until
		// the syscall returns, and the kernel only reads 8+buf_size bytes
		// of it, which randPoolInfo allocated.
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(unix.RNDADDENTROPY), uintptr(unsafe.Pointer(&info[0])))
		if e != 0 {
			errno = e
		}
	}); err != nil {
		return err
	}
	if errno != nil {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	return nil
}
