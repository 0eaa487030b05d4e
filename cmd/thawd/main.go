// Command thawd is Thaw's host daemon. It loads its configuration (TOML file,
// THAW_ environment, flags; see docs/ARCHITECTURE-daemon.md), prepares the
// data directory, refuses to start on a filesystem that cannot reflink
// sandbox disks, opens the state store and serves the REST API on a unix
// socket (and on TCP with a bearer token, if configured) until SIGINT or
// SIGTERM.
//
// This build serves version, run-time settings, template and sandbox
// listing and inspection, and Prometheus metrics. Template builds, the
// sandbox lifecycle and shim re-attachment come with the sandbox manager.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/thawvm/thaw/internal/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, os.Args[1:], os.LookupEnv, os.Environ(), os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "thawd: %v\n", err)
		os.Exit(1)
	}
}
