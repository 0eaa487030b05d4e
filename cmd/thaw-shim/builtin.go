package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/vmm/process"
)

// builtinVMM runs thaw-vmm's code (internal/vmm/process) inside the shim,
// configured as a thaw-vmm process would be: THAW_VMM_XSAVE and
// THAW_VMM_SHUTDOWN_DUMP from the environment (read at each start, so a
// bad value fails that VM's start with the variable named), its log at
// Info level next to the serial console in the VMM log. maxProcs is the
// GOMAXPROCS ceiling the instance sizes the process to once its VM is
// known (0 leaves GOMAXPROCS alone: --procs or the environment fixed
// it); it is at least 2 even on a one-CPU host, so that the page server
// has a P of its own more often (Go code in this process never waits on
// a guest-memory fault holding a P: see internal/vmm/memory).
func builtinVMM(maxProcs int) shim.Builtin {
	if maxProcs > 0 {
		maxProcs = max(maxProcs, process.StartProcs)
	}
	return func(cfg shim.BuiltinConfig) (shim.BuiltinInstance, error) {
		xsave, err := conf.EnvBool(process.XSAVEEnv, true)
		if err != nil {
			return nil, err
		}
		id := cfg.ID
		if id == "" {
			id = "anonymous-instance"
		}
		log := slog.New(slog.NewTextHandler(cfg.Output, nil)).With("vm", id)
		if !xsave {
			log.Info("hiding XSAVE and AVX from the guest", "env", process.XSAVEEnv)
		}
		in, err := process.Start(context.Background(), process.Config{
			APISocket: cfg.APISocket, ID: cfg.ID, Serial: cfg.Output,
			NoXSAVE: !xsave, ShutdownDump: os.Getenv(process.ShutdownDumpEnv), MaxProcs: maxProcs,
		}, log)
		if err != nil {
			return nil, err
		}
		return instance{in}, nil
	}
}

// instance adapts a process.Instance to shim.BuiltinInstance.
type instance struct{ *process.Instance }

func (i instance) End() (killed bool, err error) {
	e, _ := i.Wait(context.Background()) // Done is closed: it does not block
	return e.Killed, e.Err
}
