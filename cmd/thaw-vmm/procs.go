package main

import (
	"context"
	"os"
	"runtime"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm"
)

// startProcs is thaw-vmm's GOMAXPROCS until its VM starts: the API and a
// snapshot load need no more, and each P costs the VMM memory (its caches
// and the threads that come with it), which adds up on a host with many
// CPUs and many VMs (docs/benchmarks/thawd.md).
const startProcs = 2

// procsMachine sizes GOMAXPROCS to the VM once it is known: the vCPU
// goroutines need a P to handle their exits in Go, plus one for the
// devices and the API, never more than the runtime's default (the host's
// CPUs). GOMAXPROCS set in the environment is left alone.
type procsMachine struct {
	*vmm.Machine
	max int // the runtime's default, 0 when the environment sets it
}

func newProcsMachine(m *vmm.Machine) procsMachine {
	p := procsMachine{Machine: m}
	if os.Getenv("GOMAXPROCS") == "" {
		p.max = runtime.GOMAXPROCS(0)
		runtime.GOMAXPROCS(min(p.max, startProcs))
	}
	return p
}

func (p procsMachine) size() {
	if p.max > 0 {
		runtime.GOMAXPROCS(procsFor(p.max, p.Machine.Config().VCPUs))
	}
}

// procsFor is the GOMAXPROCS for a VM of vcpus when the runtime's default
// is def.
func procsFor(def, vcpus int) int { return min(def, max(vcpus+1, startProcs)) }

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
