// Command thaw-shim supervises one VM: it owns the UFFD page server and the
// VMM (the builtin one, thaw-vmm's code running in this process, or a VMM
// binary as a child process), and answers thawd on a control socket.
// thawd starts it (see internal/shim.Start) in its own session with its
// output going to <dir>/shim.log; it is not meant to be run by hand.
//
// Usage:
//
//	thaw-shim --id ID --dir DIR --vmm builtin|/path/to/thaw-vmm|firecracker \
//	    [--pages none|serve|record] [--mem-file F] [--access-log F] [--prefetch=on] [--prefetch-rate R] [--procs N] \
//	    [--record-log F] [--settle-min D] [--settle-max D] [--ready-timeout D] \
//	    [--handshake-timeout D] [--stop-grace D] [--collect-timeout D] [--vmm-id ID] [--vmm-arg A]...
//
// SIGTERM or SIGINT makes it stop the VMM (SIGTERM or the builtin VMM's
// stop, then SIGKILL or its kill after the stop grace) and exit, leaving
// the final status in <dir>/shim-status.json.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/thawvm/thaw/internal/shim"
)

// maxProcs caps the shim's GOMAXPROCS (unless the environment sets it).
// Its work is one page-server goroutine (faults and prefetch in one loop)
// and rare control requests, so two Ps cover it, while the default, one
// P per host CPU, costs every sandbox memory on a large host (each P's
// caches and the threads that come with them; docs/benchmarks/thawd.md).
// One P (--procs 1, thawd's shim_procs) saves ~300 KiB more per shim,
// but then the VMM's Go code, a control request or the settle watcher
// can hold the only P when a fault arrives (measured with the builtin
// VMM: fault p99 and prefetch coverage worse, docs/benchmarks/thawd.md).
const maxProcs = 2

func main() {
	cfg, err := shim.ParseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "thaw-shim: %v\n", err)
		os.Exit(2)
	}
	// --procs fixes GOMAXPROCS for the process's life (shim.Start also
	// puts it in the environment, so that the runtime starts with that
	// many Ps: a P dropped here keeps the memory it took); else a
	// GOMAXPROCS in the environment does. Otherwise the shim starts with
	// at most maxProcs, and the builtin VMM sizes it to its VM (one P per
	// vCPU and one more), at most the runtime's default.
	vmmProcs := 0
	switch {
	case cfg.Procs > 0:
		if runtime.GOMAXPROCS(0) != cfg.Procs {
			runtime.GOMAXPROCS(cfg.Procs)
		}
	case os.Getenv("GOMAXPROCS") == "":
		vmmProcs = runtime.GOMAXPROCS(0)
		if vmmProcs > maxProcs {
			runtime.GOMAXPROCS(maxProcs)
		}
	}
	// stderr is <dir>/shim.log (Start arranges it), so panics land there too.
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// The session leader of a new session has no terminal, but a SIGHUP
	// sent to it must not end the VM.
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := shim.Run(ctx, cfg, log, builtinVMM(vmmProcs)); err != nil {
		log.Error("thaw-shim failed", "err", err)
		fmt.Fprintf(os.Stderr, "thaw-shim: %v\n", err)
		os.Exit(1)
	}
}
