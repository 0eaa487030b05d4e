// Package api is thaw-vmm's HTTP API server: the subset of Firecracker's API
// described in api/firecracker.yaml, served on a unix socket around a
// Machine. The server owns the instance state machine (Not started, Running,
// Paused) and answers calls made in the wrong state, bad bodies and unknown
// routes the way Firecracker does: 400 with {"fault_message": ...}. The
// Machine only ever sees validated requests in a state that allows them.
package api

import (
	"context"

	"github.com/thawvm/thaw/internal/fcapi"
)

// Machine is what the API server drives; internal/vmm implements it. The
// server calls it with one request at a time (never concurrently), only
// with bodies that passed fcapi validation, and only in a state that allows
// the call:
//   - SetBootSource, SetMachineConfig, SetDrive, SetVsock and Start only
//     before the VM started and when no snapshot was loaded;
//   - LoadSnapshot only on a fresh machine: nothing configured, not started;
//   - SendCtrlAltDel, Pause, Resume only after Start or LoadSnapshot; Pause
//     only when running and Resume only when paused;
//   - CreateSnapshot only when paused;
//   - UpdateDrive only after Start or LoadSnapshot (running or paused).
//
// A Machine rejects values it cannot honour (more vCPUs or memory than it
// supports, a Diff snapshot, huge pages, ...) with an error saying so; the
// server returns that error's text to the client as a 400.
//
// To fail where Firecracker fails, a Machine checks host resources when they
// are configured, not at Start: SetBootSource opens the kernel and initrd,
// SetDrive opens the backing file (read-only when IsReadOnly), SetVsock
// binds the unix socket uds_path (an existing path is an error).
type Machine interface {
	SetBootSource(fcapi.BootSource) error
	SetMachineConfig(fcapi.MachineConfig) error
	// MachineConfig returns the current machine configuration (the default
	// one before any SetMachineConfig, the snapshot's after LoadSnapshot).
	MachineConfig() fcapi.MachineConfig
	// SetDrive adds the drive, or replaces the one with the same DriveID.
	// The server keeps Firecracker's rule of at most one root drive.
	SetDrive(fcapi.Drive) error
	SetVsock(fcapi.Vsock) error
	// UpdateDrive switches an existing drive to another backing file
	// (PATCH /drives/{drive_id}); an unknown drive is an error.
	UpdateDrive(fcapi.PartialDrive) error
	// Start boots the configured VM (InstanceStart); when it returns nil the
	// vCPUs are running.
	Start(ctx context.Context) error
	SendCtrlAltDel() error
	Pause() error
	Resume() error
	CreateSnapshot(ctx context.Context, p fcapi.SnapshotCreateParams) error
	// LoadSnapshot restores the VM from p, which the server has normalized
	// (MemBackend always set, deprecated fields folded in), and leaves it
	// paused whatever p.ResumeVM says: the server calls Resume afterwards
	// when p.ResumeVM is set. If LoadSnapshot or that Resume fails, the
	// server answers 400 and Serve returns the error, so the process exits,
	// as Firecracker's does.
	LoadSnapshot(ctx context.Context, p fcapi.SnapshotLoadParams) error
}
