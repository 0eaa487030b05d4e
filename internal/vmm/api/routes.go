package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/thawvm/thaw/internal/fcapi"
)

// route is one entry of the routing table. handle runs with s.mu held and
// returns the value of a 200 answer, or nil for 204.
type route struct {
	Method string
	Path   string
	handle func(s *Server, ctx context.Context, r *http.Request, body []byte) (any, error)
}

var routes = []route{
	{http.MethodGet, "/", (*Server).getInstanceInfo},
	{http.MethodGet, "/version", (*Server).getVersion},
	{http.MethodGet, "/machine-config", (*Server).getMachineConfig},
	{http.MethodPut, "/machine-config", (*Server).putMachineConfig},
	{http.MethodPut, "/boot-source", (*Server).putBootSource},
	{http.MethodPut, "/drives/{drive_id}", (*Server).putDrive},
	{http.MethodPatch, "/drives/{drive_id}", (*Server).patchDrive},
	{http.MethodPut, "/vsock", (*Server).putVsock},
	{http.MethodPut, "/network-interfaces/{iface_id}", (*Server).putNetworkInterface},
	{http.MethodPut, "/actions", (*Server).putAction},
	{http.MethodPatch, "/vm", (*Server).patchVM},
	{http.MethodPut, "/snapshot/create", (*Server).putSnapshotCreate},
	{http.MethodPut, "/snapshot/load", (*Server).putSnapshotLoad},
}

// decode decodes a body strictly (see fcapi.Decode) into v, wrapping a
// failure in Firecracker's deserialization message.
func decode(body []byte, v any) error {
	if err := fcapi.Decode(body, v); err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	return nil
}

// pathID checks the {id} path segment against the id in the body.
func pathID(r *http.Request, name, fromBody string) error {
	id := r.PathValue(name)
	if err := fcapi.CheckID(id); err != nil {
		return badRequest("%s in the path: %v", name, err)
	}
	if id != fromBody {
		return badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, fromBody)
	}
	return nil
}

func (s *Server) getInstanceInfo(context.Context, *http.Request, []byte) (any, error) {
	return s.info, nil
}

func (s *Server) getVersion(context.Context, *http.Request, []byte) (any, error) {
	return fcapi.Version{FirecrackerVersion: s.info.VMMVersion}, nil
}

func (s *Server) getMachineConfig(context.Context, *http.Request, []byte) (any, error) {
	mc := s.m.MachineConfig()
	if mc.HugePages == "" {
		mc.HugePages = fcapi.HugePagesNone // Firecracker always reports it
	}
	return mc, nil
}

// preBootLocked admits a pre-boot configuration request: refused once the
// VM started or was restored, and marks the machine configured, which rules
// out a later snapshot load (Firecracker does this even when the request
// then fails).
func (s *Server) preBootLocked() error {
	if s.info.State != fcapi.StateNotStarted {
		return errPostBoot
	}
	s.configured = true
	return nil
}

func (s *Server) putMachineConfig(_ context.Context, _ *http.Request, body []byte) (any, error) {
	var mc fcapi.MachineConfig
	if err := decode(body, &mc); err != nil {
		return nil, err
	}
	return nil, s.setMachineConfigLocked(mc)
}

func (s *Server) setMachineConfigLocked(mc fcapi.MachineConfig) error {
	if err := s.preBootLocked(); err != nil {
		return err
	}
	if err := s.m.SetMachineConfig(mc); err != nil {
		return machineError("Machine config error", err)
	}
	return nil
}

func (s *Server) putBootSource(_ context.Context, _ *http.Request, body []byte) (any, error) {
	var b fcapi.BootSource
	if err := decode(body, &b); err != nil {
		return nil, err
	}
	return nil, s.setBootSourceLocked(b)
}

func (s *Server) setBootSourceLocked(b fcapi.BootSource) error {
	if err := s.preBootLocked(); err != nil {
		return err
	}
	if err := s.m.SetBootSource(b); err != nil {
		return machineError("Boot source error", err)
	}
	return nil
}

func (s *Server) putDrive(_ context.Context, r *http.Request, body []byte) (any, error) {
	var d fcapi.Drive
	if err := decode(body, &d); err != nil {
		return nil, err
	}
	if err := pathID(r, "drive_id", d.DriveID); err != nil {
		return nil, err
	}
	return nil, s.setDriveLocked(d)
}

// patchDrive is PATCH /drives/{drive_id}: post-boot only, as in
// Firecracker; a restored sandbox uses it before resuming to swap in its
// own disk.
func (s *Server) patchDrive(_ context.Context, r *http.Request, body []byte) (any, error) {
	var d fcapi.PartialDrive
	if err := decode(body, &d); err != nil {
		return nil, err
	}
	if err := pathID(r, "drive_id", d.DriveID); err != nil {
		return nil, err
	}
	if s.info.State == fcapi.StateNotStarted {
		return nil, errPreBoot
	}
	if err := s.m.UpdateDrive(d); err != nil {
		return nil, machineError("Unable to patch the block device", err)
	}
	return nil, nil
}

func (s *Server) setDriveLocked(d fcapi.Drive) error {
	if err := s.preBootLocked(); err != nil {
		return err
	}
	if d.IsRootDevice && s.rootDrive != "" && s.rootDrive != d.DriveID {
		return badRequest("Drive config error: A root block device already exists: drive %q; configure it with is_root_device false first, or make %q not a root device.", s.rootDrive, d.DriveID)
	}
	if err := s.m.SetDrive(d); err != nil {
		return machineError("Drive config error", err)
	}
	switch {
	case d.IsRootDevice:
		s.rootDrive = d.DriveID
	case s.rootDrive == d.DriveID: // the root drive was replaced by a non-root one
		s.rootDrive = ""
	}
	return nil
}

func (s *Server) putVsock(_ context.Context, _ *http.Request, body []byte) (any, error) {
	var v fcapi.Vsock
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	return nil, s.setVsockLocked(v)
}

func (s *Server) setVsockLocked(v fcapi.Vsock) error {
	if err := s.preBootLocked(); err != nil {
		return err
	}
	if err := s.m.SetVsock(v); err != nil {
		return machineError("Vsock config error", err)
	}
	return nil
}

func (s *Server) putNetworkInterface(_ context.Context, r *http.Request, body []byte) (any, error) {
	var n fcapi.NetworkInterface
	if err := decode(body, &n); err != nil {
		return nil, err
	}
	if err := pathID(r, "iface_id", n.IfaceID); err != nil {
		return nil, err
	}
	return nil, s.setNetworkInterfaceLocked(n)
}

// errNoNetworking answers network configuration: networking is its own open
// issue, and until it lands thaw-vmm says so instead of pretending.
var errNoNetworking = badRequest("Network config error: thaw-vmm does not implement network interfaces yet; configure the VM without one (use vsock for host-guest traffic).")

func (s *Server) setNetworkInterfaceLocked(fcapi.NetworkInterface) error {
	if err := s.preBootLocked(); err != nil {
		return err
	}
	return errNoNetworking
}

func (s *Server) putAction(ctx context.Context, _ *http.Request, body []byte) (any, error) {
	var a fcapi.InstanceActionInfo
	if err := decode(body, &a); err != nil {
		return nil, err
	}
	switch a.ActionType {
	case fcapi.ActionInstanceStart:
		return nil, s.startLocked(ctx)
	case fcapi.ActionSendCtrlAltDel:
		if s.info.State == fcapi.StateNotStarted {
			return nil, errPreBoot
		}
		if err := s.m.SendCtrlAltDel(); err != nil {
			return nil, machineError("Internal VMM error: sending Ctrl+Alt+Del", err)
		}
		return nil, nil
	default: // fcapi.ActionFlushMetrics; Decode admits no other value
		if s.info.State == fcapi.StateNotStarted {
			return nil, errPreBoot
		}
		return nil, badRequest("FlushMetrics: thaw-vmm has no metrics sink to flush (PUT /metrics is not implemented).")
	}
}

func (s *Server) startLocked(ctx context.Context) error {
	if s.info.State != fcapi.StateNotStarted {
		return errPostBoot
	}
	if err := s.m.Start(ctx); err != nil {
		return machineError("Start microvm error", err)
	}
	s.info.State = fcapi.StateRunning
	return nil
}

func (s *Server) patchVM(_ context.Context, _ *http.Request, body []byte) (any, error) {
	var v fcapi.VM
	if err := decode(body, &v); err != nil {
		return nil, err
	}
	switch {
	case s.info.State == fcapi.StateNotStarted:
		return nil, errPreBoot
	case v.State == fcapi.VMPaused && s.info.State == fcapi.StateRunning:
		if err := s.m.Pause(); err != nil {
			return nil, machineError("Internal VMM error: pausing the microVM", err)
		}
		s.info.State = fcapi.StatePaused
	case v.State == fcapi.VMResumed && s.info.State == fcapi.StatePaused:
		if err := s.m.Resume(); err != nil {
			return nil, machineError("Internal VMM error: resuming the microVM", err)
		}
		s.info.State = fcapi.StateRunning
	}
	// Asking for the state the VM is already in succeeds, as in Firecracker.
	return nil, nil
}

func (s *Server) putSnapshotCreate(ctx context.Context, _ *http.Request, body []byte) (any, error) {
	var p fcapi.SnapshotCreateParams
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	switch s.info.State {
	case fcapi.StateNotStarted:
		return nil, errPreBoot
	case fcapi.StateRunning:
		return nil, badRequest(`Create snapshot error: the microVM is running; pause it first with PATCH /vm {"state": "Paused"}.`)
	}
	if err := s.m.CreateSnapshot(ctx, p); err != nil {
		return nil, machineError("Create snapshot error", err)
	}
	return nil, nil
}

func (s *Server) putSnapshotLoad(ctx context.Context, _ *http.Request, body []byte) (any, error) {
	var p fcapi.SnapshotLoadParams
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	switch {
	case s.info.State != fcapi.StateNotStarted:
		return nil, errPostBoot
	case s.configured:
		return nil, badRequest("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	case len(p.NetworkOverrides) > 0:
		return nil, badRequest("Load snapshot error: network_overrides: thaw-vmm does not implement network interfaces yet, so there is none to override.")
	}
	p = p.Normalized()
	err := s.m.LoadSnapshot(ctx, p)
	if err == nil {
		s.info.State = fcapi.StatePaused
		if p.ResumeVM {
			if err = s.m.Resume(); err != nil {
				err = fmt.Errorf("resuming the restored microVM: %w", err)
			} else {
				s.info.State = fcapi.StateRunning
			}
		}
	}
	if err != nil {
		// Firecracker exits after a failed load: the process may hold a
		// half-restored VM. Refuse everything from now on and let Serve
		// return once this answer is out.
		err = machineError("Load snapshot error", err)
		s.failed = err
		select {
		case s.fatal <- err:
		default:
		}
		return nil, err
	}
	return nil, nil
}
