// Command thaw-shim supervises one VM: it owns the UFFD page server and the
// VMM process, and answers thawd on a control socket. thawd starts it (see
// internal/shim.Start) in its own session with its output going to
// <dir>/shim.log; it is not meant to be run by hand.
//
// Usage:
//
//	thaw-shim --id ID --dir DIR --vmm /path/to/thaw-vmm|firecracker \
//	    [--pages none|serve|record] [--mem-file F] [--access-log F] [--prefetch=on] \
//	    [--record-log F] [--settle-min D] [--settle-max D] [--ready-timeout D] \
//	    [--handshake-timeout D] [--stop-grace D] [--collect-timeout D] [--vmm-id ID] [--vmm-arg A]...
//
// SIGTERM or SIGINT makes it stop the VMM (SIGTERM, then SIGKILL after the
// stop grace) and exit, leaving the final status in <dir>/shim-status.json.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/thawvm/thaw/internal/shim"
)

func main() {
	cfg, err := shim.ParseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "thaw-shim: %v\n", err)
		os.Exit(2)
	}
	// stderr is <dir>/shim.log (Start arranges it), so panics land there too.
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// The session leader of a new session has no terminal, but a SIGHUP
	// sent to it must not end the VM.
	signal.Ignore(syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := shim.Run(ctx, cfg, log); err != nil {
		log.Error("thaw-shim failed", "err", err)
		fmt.Fprintf(os.Stderr, "thaw-shim: %v\n", err)
		os.Exit(1)
	}
}
