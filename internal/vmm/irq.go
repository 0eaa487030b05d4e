package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/vmm/kvm"
)

// irqLine raises an edge on one GSI of the in-kernel irqchip with
// KVM_IRQ_LINE (high, then low). The legacy devices use it; their
// interrupts are rare.
type irqLine struct {
	vm  *kvm.VM
	gsi uint32
}

// Trigger raises one edge.
func (l irqLine) Trigger() error {
	if err := l.vm.IRQLine(l.gsi, true); err != nil {
		return fmt.Errorf("raising irq %d: %w", l.gsi, err)
	}
	if err := l.vm.IRQLine(l.gsi, false); err != nil {
		return fmt.Errorf("lowering irq %d: %w", l.gsi, err)
	}
	return nil
}

// irqfd is an eventfd registered with KVM as an irqfd for one GSI: a write
// to it injects an edge without a trip through the VMM's KVM ioctls. Virtio
// devices use it (the virtio.Interrupt contract). It owns the eventfd.
type irqfd struct {
	f   *os.File
	gsi uint32
}

func newIRQFD(vm *kvm.VM, gsi uint32) (*irqfd, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("creating eventfd for irq %d: %w", gsi, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("irqfd:%d", gsi))
	if err := vm.RegisterIRQFD(f, gsi); err != nil {
		f.Close()
		return nil, err
	}
	return &irqfd{f: f, gsi: gsi}, nil
}

var one = binary.LittleEndian.AppendUint64(nil, 1)

// Trigger raises one edge. EAGAIN (the counter is saturated, so an
// injection is already pending) counts as success.
func (q *irqfd) Trigger() error {
	if _, err := q.f.Write(one); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("raising irq %d: %w", q.gsi, err)
	}
	return nil
}

// Close closes the eventfd; KVM drops the irqfd when the VM goes away.
func (q *irqfd) Close() error { return q.f.Close() }
