// Package testenv decides whether a test may use the host's KVM, userfaultfd
// and root privileges. A test that needs one calls the matching Require
// function: it skips with the reason when the capability is missing, and
// fails instead when THAW_REQUIRE_KVM is true (CI sets it on machines with
// /dev/kvm), so a suite can never pass by skipping everything.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/conf"
)

// StrictEnv is the environment variable that turns missing capabilities into
// test failures.
const StrictEnv = "THAW_REQUIRE_KVM"

// Strict reports whether missing capabilities must fail tests. A malformed
// value is returned as an error so that a typo cannot silently relax CI.
func Strict() (bool, error) {
	return conf.EnvBool(StrictEnv, false)
}

// Missing skips t with why, or fails it when StrictEnv is set (or set to
// garbage). Tests whose prerequisite is something other than KVM,
// userfaultfd or root (a cached image, a kernel feature) call it directly.
func Missing(t testing.TB, why string) {
	t.Helper()
	strict, err := Strict()
	if err != nil {
		t.Fatalf("%v", err)
	}
	if strict {
		t.Fatalf("%s (and %s=1 forbids skipping)", why, StrictEnv)
	}
	t.Skip(why)
}

// RequireRoot skips or fails t unless the process runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "test needs root: run it as root")
	}
}

// RequireKVM skips or fails t unless /dev/kvm can be opened read-write.
func RequireKVM(t testing.TB) {
	t.Helper()
	if err := kvmErr(); err != nil {
		Missing(t, fmt.Sprintf("test needs /dev/kvm: %v", err))
	}
}

// RequireUFFD skips or fails t unless this process can create a userfaultfd.
func RequireUFFD(t testing.TB) {
	t.Helper()
	if err := uffdErr(); err != nil {
		Missing(t, fmt.Sprintf("test needs userfaultfd: %v", err))
	}
}

// HaveKVM reports whether /dev/kvm can be opened read-write.
func HaveKVM() bool { return kvmErr() == nil }

// KVMIsPVM reports whether /dev/kvm is provided by kvm_pvm, the paravirtual
// hypervisor that runs only PVM-built guest kernels and freestanding guests.
func KVMIsPVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

var (
	probeOnce sync.Once
	kvmProbe  error
	uffdProbe error
)

func probe() {
	probeOnce.Do(func() {
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
			kvmProbe = err
		} else {
			f.Close()
		}
		uffdProbe = probeUFFD()
	})
}

func kvmErr() error  { probe(); return kvmProbe }
func uffdErr() error { probe(); return uffdProbe }

// probeUFFD tries the userfaultfd(2) system call first and falls back to
// /dev/userfaultfd, which kernels since 6.1 offer when the sysctl
// vm.unprivileged_userfaultfd forbids the system call.
func probeUFFD() error {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno == 0 {
		unix.Close(int(fd))
		return nil
	}
	f, err := os.OpenFile("/dev/userfaultfd", os.O_RDWR, 0)
	if err != nil {
		return errors.Join(fmt.Errorf("userfaultfd(2): %w", errno), err)
	}
	f.Close()
	return nil
}
