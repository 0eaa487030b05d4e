package process

import (
	"context"
	"runtime"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm"
)

// procsMachine sizes GOMAXPROCS to the VM once it is known: the vCPU
// goroutines need a P to handle their exits in Go, plus one for the
// devices and the API, never more than ceiling.
type procsMachine struct {
	*vmm.Machine
	ceiling int
}

func (p procsMachine) size() {
	runtime.GOMAXPROCS(ProcsFor(p.ceiling, p.Machine.Config().VCPUs))
}

// ProcsFor is the GOMAXPROCS for a VM of vcpus when at most ceiling Ps
// are wanted (the runtime's default: the host's CPUs).
func ProcsFor(ceiling, vcpus int) int { return min(ceiling, max(vcpus+1, StartProcs)) }

func (p procsMachine) Start(ctx context.Context) error {
	p.size()
	return p.Machine.Start(ctx)
}

func (p procsMachine) LoadSnapshot(ctx context.Context, params fcapi.SnapshotLoadParams) error {
	if err := p.Machine.LoadSnapshot(ctx, params); err != nil {
		return err
	}
	p.size()
	return nil
}
