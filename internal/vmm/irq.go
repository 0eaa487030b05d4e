package vmm

import (
	"fmt"

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
