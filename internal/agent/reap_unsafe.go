package agent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfo_t for SIGCHLD (asm-generic/siginfo.h, amd64): after signo, errno and
// code (3 int32s) and 4 bytes of padding comes the union, whose _sigchld
// member is { pid_t pid; uid_t uid; int status; ... }.
const (
	siginfoPidOff    = 16
	siginfoStatusOff = 24
)

// Safe: unix.Siginfo is 128 bytes (asserted in the test), so both offsets
// plus 4 stay inside it.
func siginfoPid(si *unix.Siginfo) int32 {
	return *(*int32)(unsafe.Add(unsafe.Pointer(si), siginfoPidOff))
}

// siginfoStatus converts waitid's siginfo into a wait4-style status.
func siginfoStatus(si *unix.Siginfo) unix.WaitStatus {
	status := *(*int32)(unsafe.Add(unsafe.Pointer(si), siginfoStatusOff))
	switch si.Code {
	case cldExited:
		return unix.WaitStatus(uint32(status&0xff) << 8)
	case cldDumped:
		return unix.WaitStatus(uint32(status&0x7f) | 0x80)
	case cldKilled:
		return unix.WaitStatus(uint32(status & 0x7f))
	}
	// WEXITED reports nothing else; treat anything unexpected as a kill by
	// the signal in status rather than inventing an exit code.
	return unix.WaitStatus(uint32(status & 0x7f))
}

// si_code values for SIGCHLD (asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// sizeofSiginfo is the kernel's siginfo_t size (SI_MAX_SIZE).
const sizeofSiginfo = 128

var _ [sizeofSiginfo - unsafe.Sizeof(unix.Siginfo{})]byte
var _ [unsafe.Sizeof(unix.Siginfo{}) - sizeofSiginfo]byte
