// Package uffd mirrors the userfaultfd user-space ABI of
// include/uapi/linux/userfaultfd.h: event and feature bits, ioctl numbers and
// the structs those ioctls and read(2) exchange. It holds no logic; the page
// server in internal/uffd uses it. Every struct size is asserted at compile
// time and every ioctl number is checked against the _IOC formula in a test.
package uffd

// API version and ioctl type, from include/uapi/linux/userfaultfd.h.
const (
	UFFD_API = 0xAA // the only API version; goes in UffdioApi.Api
	UFFDIO   = 0xAA // ioctl type byte
)

// Ioctl command numbers (the _UFFDIO_* "nr" values).
const (
	UFFDIO_REGISTER_NR     = 0x00
	UFFDIO_UNREGISTER_NR   = 0x01
	UFFDIO_WAKE_NR         = 0x02
	UFFDIO_COPY_NR         = 0x03
	UFFDIO_ZEROPAGE_NR     = 0x04
	UFFDIO_MOVE_NR         = 0x05
	UFFDIO_WRITEPROTECT_NR = 0x06
	UFFDIO_CONTINUE_NR     = 0x07
	UFFDIO_POISON_NR       = 0x08
	UFFDIO_API_NR          = 0x3F
)

// Ioctl request numbers: _IOWR/_IOR(UFFDIO, nr, struct). The test recomputes
// each from the _IOC formula and the struct size.
const (
	UFFDIO_API          = 0xc018aa3f // _IOWR(UFFDIO, 0x3F, struct uffdio_api)
	UFFDIO_REGISTER     = 0xc020aa00 // _IOWR(UFFDIO, 0x00, struct uffdio_register)
	UFFDIO_UNREGISTER   = 0x8010aa01 // _IOR(UFFDIO, 0x01, struct uffdio_range)
	UFFDIO_WAKE         = 0x8010aa02 // _IOR(UFFDIO, 0x02, struct uffdio_range)
	UFFDIO_COPY         = 0xc028aa03 // _IOWR(UFFDIO, 0x03, struct uffdio_copy)
	UFFDIO_ZEROPAGE     = 0xc020aa04 // _IOWR(UFFDIO, 0x04, struct uffdio_zeropage)
	UFFDIO_WRITEPROTECT = 0xc018aa06 // _IOWR(UFFDIO, 0x06, struct uffdio_writeprotect)
	UFFDIO_CONTINUE     = 0xc020aa07 // _IOWR(UFFDIO, 0x07, struct uffdio_continue)
)

// USERFAULTFD_IOC_NEW creates a userfaultfd from /dev/userfaultfd
// (include/uapi/linux/userfaultfd.h, Linux 6.1+): _IO(UFFDIO, 0x00). Its
// argument is the flags userfaultfd(2) takes.
const USERFAULTFD_IOC_NEW = 0xaa00

// UFFD_USER_MODE_ONLY is the userfaultfd(2) flag restricting handling to
// faults raised from user mode. A VMM must not set it: KVM and device
// emulation touch guest memory from kernel mode.
const UFFD_USER_MODE_ONLY = 1

// Events in UffdMsg.Event.
const (
	UFFD_EVENT_PAGEFAULT = 0x12
	UFFD_EVENT_FORK      = 0x13
	UFFD_EVENT_REMAP     = 0x14
	UFFD_EVENT_REMOVE    = 0x15
	UFFD_EVENT_UNMAP     = 0x16
)

// Page fault flags in the pagefault arm of UffdMsg.
const (
	UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
	UFFD_PAGEFAULT_FLAG_WP    = 1 << 1
	UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2
)

// Feature bits in UffdioApi.Features.
const (
	UFFD_FEATURE_PAGEFAULT_FLAG_WP  = 1 << 0
	UFFD_FEATURE_EVENT_FORK         = 1 << 1
	UFFD_FEATURE_EVENT_REMAP        = 1 << 2
	UFFD_FEATURE_EVENT_REMOVE       = 1 << 3
	UFFD_FEATURE_MISSING_HUGETLBFS  = 1 << 4
	UFFD_FEATURE_MISSING_SHMEM      = 1 << 5
	UFFD_FEATURE_EVENT_UNMAP        = 1 << 6
	UFFD_FEATURE_SIGBUS             = 1 << 7
	UFFD_FEATURE_THREAD_ID          = 1 << 8
	UFFD_FEATURE_MINOR_HUGETLBFS    = 1 << 9
	UFFD_FEATURE_MINOR_SHMEM        = 1 << 10
	UFFD_FEATURE_EXACT_ADDRESS      = 1 << 11
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
	UFFD_FEATURE_WP_UNPOPULATED     = 1 << 13
	UFFD_FEATURE_POISON             = 1 << 14
	UFFD_FEATURE_WP_ASYNC           = 1 << 15
	UFFD_FEATURE_MOVE               = 1 << 16
)

// Register modes in UffdioRegister.Mode.
const (
	UFFDIO_REGISTER_MODE_MISSING = 1 << 0
	UFFDIO_REGISTER_MODE_WP      = 1 << 1
	UFFDIO_REGISTER_MODE_MINOR   = 1 << 2
)

// Copy and zeropage modes.
const (
	UFFDIO_COPY_MODE_DONTWAKE     = 1 << 0
	UFFDIO_COPY_MODE_WP           = 1 << 1
	UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
)

// UffdMsg mirrors struct uffd_msg, the 32-byte record read(2) returns. The
// kernel's union is flattened: Arg holds the union's 24 bytes and the
// accessors in internal/uffd decode the arm that Event selects:
//
//	pagefault: flags u64 @0, address u64 @8, ptid u32 @16
//	fork:      ufd u32 @0
//	remap:     from u64 @0, to u64 @8, len u64 @16
//	remove:    start u64 @0, end u64 @8
//	unmap:     start u64 @0, end u64 @8
type UffdMsg struct {
	Event     uint8
	Reserved1 uint8
	Reserved2 uint16
	Reserved3 uint32
	Arg       [24]byte
}

// UffdioApi mirrors struct uffdio_api.
type UffdioApi struct {
	Api      uint64
	Features uint64
	Ioctls   uint64
}

// UffdioRange mirrors struct uffdio_range.
type UffdioRange struct {
	Start uint64
	Len   uint64
}

// UffdioRegister mirrors struct uffdio_register.
type UffdioRegister struct {
	Range  UffdioRange
	Mode   uint64
	Ioctls uint64
}

// UffdioCopy mirrors struct uffdio_copy. Copy is written by the kernel: the
// number of bytes copied, or a negated errno.
type UffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

// UffdioZeropage mirrors struct uffdio_zeropage.
type UffdioZeropage struct {
	Range    UffdioRange
	Mode     uint64
	Zeropage int64
}

// UffdioWriteprotect mirrors struct uffdio_writeprotect.
type UffdioWriteprotect struct {
	Range UffdioRange
	Mode  uint64
}

// UffdioContinue mirrors struct uffdio_continue.
type UffdioContinue struct {
	Range  UffdioRange
	Mode   uint64
	Mapped int64
}

// Bits of the ioctls masks returned by UFFDIO_API and UFFDIO_REGISTER: bit n
// set means ioctl nr n is available.
const (
	UFFD_API_IOCTL_REGISTER   = 1 << UFFDIO_REGISTER_NR
	UFFD_API_IOCTL_UNREGISTER = 1 << UFFDIO_UNREGISTER_NR
	UFFD_API_IOCTL_API        = 1 << UFFDIO_API_NR
	UFFD_RANGE_IOCTL_WAKE     = 1 << UFFDIO_WAKE_NR
	UFFD_RANGE_IOCTL_COPY     = 1 << UFFDIO_COPY_NR
	UFFD_RANGE_IOCTL_ZEROPAGE = 1 << UFFDIO_ZEROPAGE_NR
)
