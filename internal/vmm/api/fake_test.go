package api

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

// fakeMachine stands in for internal/vmm's Machine, which is written
// concurrently on another branch (its own e2e tests cover the real one). It
// records what the server asked for, fails on request, and checks that the
// server keeps the Machine contract: calls never overlap, and each comes in
// a state that allows it. Violations are reported by check, which every
// test runs in cleanup.
type fakeMachine struct {
	mu         sync.Mutex
	calls      []string
	violations []string
	inFlight   int
	state      fcapi.InstanceState
	configured bool

	mc      fcapi.MachineConfig
	boot    *fcapi.BootSource
	drives  map[string]fcapi.Drive
	vsock   *fcapi.Vsock
	created []fcapi.SnapshotCreateParams
	loaded  []fcapi.SnapshotLoadParams

	// fail maps a method name to the error it returns.
	fail map[string]error
	// block, when set, makes Start and LoadSnapshot wait for it or for
	// their context; blocked is closed when they start waiting.
	block   chan struct{}
	blocked chan struct{}
	// ctxErr is the context error Start or LoadSnapshot saw.
	ctxErr error
}

func newFakeMachine(t testing.TB) *fakeMachine {
	m := &fakeMachine{
		state:  fcapi.StateNotStarted,
		mc:     fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128},
		drives: map[string]fcapi.Drive{},
		fail:   map[string]error{},
	}
	t.Cleanup(func() { m.check(t) })
	return m
}

// check reports every contract violation seen.
func (m *fakeMachine) check(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range m.violations {
		t.Errorf("Machine contract violated: %s", v)
	}
}

// enter records a call, checks it is allowed in the fake's state, and
// returns the error to fail it with.
func (m *fakeMachine) enter(name string, allowed ...fcapi.InstanceState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inFlight++
	if m.inFlight > 1 {
		m.violations = append(m.violations, name+" called while another call was in flight")
	}
	m.calls = append(m.calls, name)
	ok := false
	for _, s := range allowed {
		ok = ok || s == m.state
	}
	if !ok {
		m.violations = append(m.violations, fmt.Sprintf("%s called in state %q", name, m.state))
	}
	return m.fail[name]
}

func (m *fakeMachine) leave(next fcapi.InstanceState, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inFlight--
	if err == nil && next != "" {
		m.state = next
	}
}

func (m *fakeMachine) preBoot(name string) error {
	err := m.enter(name, fcapi.StateNotStarted)
	m.mu.Lock()
	m.configured = true
	m.mu.Unlock()
	return err
}

func (m *fakeMachine) SetBootSource(b fcapi.BootSource) error {
	err := m.preBoot("SetBootSource")
	if err == nil {
		m.boot = &b
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) SetMachineConfig(mc fcapi.MachineConfig) error {
	err := m.preBoot("SetMachineConfig")
	if err == nil {
		m.mc = mc
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) MachineConfig() fcapi.MachineConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mc
}

func (m *fakeMachine) SetDrive(d fcapi.Drive) error {
	err := m.preBoot("SetDrive")
	if err == nil {
		m.drives[d.DriveID] = d
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) UpdateDrive(d fcapi.PartialDrive) error {
	err := m.enter("UpdateDrive", fcapi.StateRunning, fcapi.StatePaused)
	if err == nil {
		if o, ok := m.drives[d.DriveID]; ok {
			o.PathOnHost = d.PathOnHost
			m.drives[d.DriveID] = o
		} else {
			err = fmt.Errorf("drive %q: the machine has no such drive", d.DriveID)
		}
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) SetVsock(v fcapi.Vsock) error {
	err := m.preBoot("SetVsock")
	if err == nil {
		m.vsock = &v
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) wait(ctx context.Context) error {
	if m.block == nil {
		return nil
	}
	close(m.blocked)
	select {
	case <-m.block:
		return nil
	case <-ctx.Done():
		m.mu.Lock()
		m.ctxErr = ctx.Err()
		m.mu.Unlock()
		return ctx.Err()
	}
}

func (m *fakeMachine) Start(ctx context.Context) error {
	err := m.enter("Start", fcapi.StateNotStarted)
	if err == nil {
		err = m.wait(ctx)
	}
	m.leave(fcapi.StateRunning, err)
	return err
}

func (m *fakeMachine) SendCtrlAltDel() error {
	err := m.enter("SendCtrlAltDel", fcapi.StateRunning, fcapi.StatePaused)
	m.leave("", err)
	return err
}

func (m *fakeMachine) Pause() error {
	err := m.enter("Pause", fcapi.StateRunning)
	m.leave(fcapi.StatePaused, err)
	return err
}

func (m *fakeMachine) Resume() error {
	err := m.enter("Resume", fcapi.StatePaused)
	m.leave(fcapi.StateRunning, err)
	return err
}

func (m *fakeMachine) CreateSnapshot(_ context.Context, p fcapi.SnapshotCreateParams) error {
	err := m.enter("CreateSnapshot", fcapi.StatePaused)
	if err == nil {
		m.created = append(m.created, p)
	}
	m.leave("", err)
	return err
}

func (m *fakeMachine) LoadSnapshot(ctx context.Context, p fcapi.SnapshotLoadParams) error {
	err := m.enter("LoadSnapshot", fcapi.StateNotStarted)
	m.mu.Lock()
	if m.configured {
		m.violations = append(m.violations, "LoadSnapshot called after pre-boot configuration")
	}
	if p.MemBackend == nil || p.MemFilePath != "" || p.EnableDiffSnapshots {
		m.violations = append(m.violations, fmt.Sprintf("LoadSnapshot got unnormalized params %+v", p))
	}
	m.mu.Unlock()
	if err == nil {
		err = m.wait(ctx)
	}
	if err == nil {
		m.loaded = append(m.loaded, p)
	}
	m.leave(fcapi.StatePaused, err)
	return err
}

func (m *fakeMachine) callLog() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.calls...)
}
