package uffd

import (
	"testing"
	"unsafe"
)

// ioc is the kernel's _IOC formula (include/uapi/asm-generic/ioctl.h):
// dir in bits 30-31, size in bits 16-29, type in 8-15, nr in 0-7.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"UFFDIO_API", UFFDIO_API, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_API_NR, unsafe.Sizeof(UffdioApi{}))},
		{"UFFDIO_REGISTER", UFFDIO_REGISTER, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_REGISTER_NR, unsafe.Sizeof(UffdioRegister{}))},
		{"UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, ioc(iocRead, UFFDIO, UFFDIO_UNREGISTER_NR, unsafe.Sizeof(UffdioRange{}))},
		{"UFFDIO_WAKE", UFFDIO_WAKE, ioc(iocRead, UFFDIO, UFFDIO_WAKE_NR, unsafe.Sizeof(UffdioRange{}))},
		{"UFFDIO_COPY", UFFDIO_COPY, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_COPY_NR, unsafe.Sizeof(UffdioCopy{}))},
		{"UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_ZEROPAGE_NR, unsafe.Sizeof(UffdioZeropage{}))},
		{"UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_WRITEPROTECT_NR, unsafe.Sizeof(UffdioWriteprotect{}))},
		{"UFFDIO_CONTINUE", UFFDIO_CONTINUE, ioc(iocRead|iocWrite, UFFDIO, UFFDIO_CONTINUE_NR, unsafe.Sizeof(UffdioContinue{}))},
		{"USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW, ioc(iocNone, UFFDIO, 0x00, 0)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"uffd_msg", unsafe.Sizeof(UffdMsg{}), 32},
		{"uffdio_api", unsafe.Sizeof(UffdioApi{}), 24},
		{"uffdio_range", unsafe.Sizeof(UffdioRange{}), 16},
		{"uffdio_register", unsafe.Sizeof(UffdioRegister{}), 32},
		{"uffdio_copy", unsafe.Sizeof(UffdioCopy{}), 40},
		{"uffdio_zeropage", unsafe.Sizeof(UffdioZeropage{}), 32},
		{"uffdio_writeprotect", unsafe.Sizeof(UffdioWriteprotect{}), 24},
		{"uffdio_continue", unsafe.Sizeof(UffdioContinue{}), 32},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}
