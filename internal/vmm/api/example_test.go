package api_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/api"
)

// How cmd/thaw-vmm wires the server: --config-file boots before the API
// serves (GET / then reports "Running"), --api-sock serves until the
// process is told to stop, and a failed snapshot load ends the process.
func Example() {
	var (
		machine    api.Machine // internal/vmm's Machine
		apiSock    = "/run/thaw/vm1/api.sock"
		configFile = "" // --config-file, if given
		log        = slog.New(slog.NewTextHandler(os.Stderr, nil))
		ctx        = context.Background()
	)
	srv := api.NewServer(machine, fcapi.InstanceInfo{ID: "vm1", VMMVersion: "0.1.0"}, log)
	if configFile != "" {
		data, err := os.ReadFile(configFile)
		if err != nil {
			log.Error("reading the config file", "err", err)
			os.Exit(1)
		}
		cfg, err := fcapi.ParseConfigFile(data)
		if err != nil {
			log.Error("parsing the config file", "err", err)
			os.Exit(1)
		}
		if err := srv.StartFromConfig(ctx, cfg); err != nil {
			log.Error("booting from the config file", "err", err)
			os.Exit(1)
		}
	}
	l, err := api.Listen(apiSock)
	if err != nil {
		log.Error("listening", "err", err)
		os.Exit(1)
	}
	if err := srv.Serve(ctx, l); err != nil {
		log.Error("serving the API", "err", err)
		os.Exit(1)
	}
}
