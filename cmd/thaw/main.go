// Command thaw is Thaw's command line: Docker-like verbs that talk to thawd
// over its API, and "thaw daemon" to run thawd in the foreground. See
// internal/cli for the verbs.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/thawvm/thaw/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, LookupEnv: os.LookupEnv, Environ: os.Environ(), Stdin: os.Stdin})
	stop()
	os.Exit(code)
}
