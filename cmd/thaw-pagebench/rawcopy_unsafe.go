package main

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
	"github.com/thawvm/thaw/internal/uffd"
)

// rawCopy measures the kernel's bulk UFFDIO_COPY rate in this process: it
// registers a fresh anonymous region as large as the memory file and fills
// it from a fresh read-only mapping of the file with copies of chunk bytes
// (DONTWAKE: nobody is waiting). Nothing faults; this is the ceiling a page
// server can reach. With populate, the source mapping's page tables are
// filled before timing starts.
func rawCopy(path string, chunk int, populate bool) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := int(fi.Size())
	flags := unix.MAP_PRIVATE
	if populate {
		flags |= unix.MAP_POPULATE
	}
	src, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, flags)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(src)
	dst, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(dst)
	// Both mappings outlive every ioctl below; the kernel keeps no pointer.
	dstBase := uint64(uintptr(unsafe.Pointer(&dst[0])))
	srcBase := uint64(uintptr(unsafe.Pointer(&src[0])))
	u, err := uffd.Register([]uffd.Region{{BaseHostVirtAddr: dstBase, Size: uint64(size), PageSize: uffd.PageSize4K}})
	if err != nil {
		return 0, err
	}
	defer u.Close()
	rc, err := u.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cerr error
	var d time.Duration
	err = rc.Control(func(fd uintptr) {
		start := time.Now()
		for off := 0; off < size; off += chunk {
			c := abi.UffdioCopy{Dst: dstBase + uint64(off), Src: srcBase + uint64(off), Len: uint64(chunk), Mode: abi.UFFDIO_COPY_MODE_DONTWAKE}
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, abi.UFFDIO_COPY, uintptr(unsafe.Pointer(&c))); errno != 0 {
				cerr = fmt.Errorf("UFFDIO_COPY at offset %#x: %w", off, errno)
				return
			}
		}
		d = time.Since(start)
	})
	if err != nil {
		return 0, err
	}
	return d, cerr
}
