package api

import (
	"context"
	"fmt"

	"github.com/thawvm/thaw/internal/fcapi"
)

// StartFromConfig configures the Machine from a --config-file document
// (fcapi.ParseConfigFile) and starts it, through the same state checks as
// the API routes, so that a server then serving the API reports "Running"
// and refuses pre-boot calls, as Firecracker does with --config-file and
// --api-sock together. Sections are applied in Firecracker's order:
// machine-config, boot-source, drives, network-interfaces, vsock.
func (s *Server) StartFromConfig(ctx context.Context, cfg *fcapi.VMConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cfg.MachineConfig != nil {
		if err := s.setMachineConfigLocked(*cfg.MachineConfig); err != nil {
			return fmt.Errorf("config file: machine-config: %w", err)
		}
	}
	if err := s.setBootSourceLocked(cfg.BootSource); err != nil {
		return fmt.Errorf("config file: boot-source: %w", err)
	}
	for _, d := range cfg.Drives {
		if err := s.setDriveLocked(d); err != nil {
			return fmt.Errorf("config file: drive %q: %w", d.DriveID, err)
		}
	}
	for _, n := range cfg.NetworkInterfaces {
		if err := s.setNetworkInterfaceLocked(n); err != nil {
			return fmt.Errorf("config file: network interface %q: %w", n.IfaceID, err)
		}
	}
	if cfg.Vsock != nil {
		if err := s.setVsockLocked(*cfg.Vsock); err != nil {
			return fmt.Errorf("config file: vsock: %w", err)
		}
	}
	if err := s.startLocked(ctx); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	return nil
}
