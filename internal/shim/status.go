package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/uffd"
)

// State is the shim's view of its VM.
type State string

// The states. Starting → Running → VMMExited, or Failed from anywhere.
const (
	// StateStarting: the VMM is starting; its API does not answer yet.
	StateStarting State = "starting"
	// StateRunning: the VMM's API answers.
	StateRunning State = "running"
	// StateVMMExited: the VMM exited on its own or was stopped; Exit says how.
	StateVMMExited State = "vmm-exited"
	// StateFailed: the shim gave up on the VM (the VMM did not start or
	// its API never answered, or page serving failed) and killed the VMM;
	// Reason says why, Exit how the VMM ended (nil if it never started).
	StateFailed State = "failed"
)

// Status is what the shim knows about its VM. It is the answer of most
// control calls and the content of the status file.
type Status struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	// Reason says why the state is failed.
	Reason string `json:"reason,omitempty"`
	// ShimPID and VMMPID are the processes' ids (VMMPID 0 before the VMM
	// starts or when it could not).
	ShimPID int `json:"shim_pid"`
	VMMPID  int `json:"vmm_pid,omitempty"`
	// Exit is how the VMM ended, once it has been reaped.
	Exit *ExitStatus `json:"exit,omitempty"`
	// Done is true once the VMM is gone (reaped, or never started) and the
	// page server has stopped: nothing but collection changes after that.
	Done bool `json:"done"`
	// Stopped is true when the VMM's end was asked for through stop.
	Stopped bool `json:"stopped,omitempty"`
	// Collected is true once thawd has acknowledged the final status.
	Collected bool `json:"collected,omitempty"`
	// Handshake is the page server's verdict.
	Handshake Verdict `json:"handshake"`
	// Settle is the recording's progress (record mode only).
	Settle *SettleStatus `json:"settle,omitempty"`
	// Updated is when the status last changed.
	Updated time.Time `json:"updated"`
}

// ExitStatus is how a process ended: an exit code, or a signal.
type ExitStatus struct {
	// Code is the exit code when the process exited (Signal == 0).
	Code int `json:"code"`
	// Signal is the signal that killed it, 0 when it exited.
	Signal     int    `json:"signal,omitempty"`
	SignalName string `json:"signal_name,omitempty"`
	CoreDumped bool   `json:"core_dumped,omitempty"`
}

func exitStatusOf(ws syscall.WaitStatus) *ExitStatus {
	if ws.Signaled() {
		sig := ws.Signal()
		return &ExitStatus{Signal: int(sig), SignalName: signalName(sig), CoreDumped: ws.CoreDump()}
	}
	return &ExitStatus{Code: ws.ExitStatus()}
}

func (e *ExitStatus) String() string {
	if e == nil {
		return "not exited"
	}
	if e.Signal != 0 {
		s := fmt.Sprintf("killed by %s", e.SignalName)
		if e.CoreDumped {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("exited with code %d", e.Code)
}

// Verdict states.
const (
	// VerdictPending: no handshake yet.
	VerdictPending = "pending"
	// VerdictOK: a valid handshake arrived and the page server serves it.
	VerdictOK = "ok"
	// VerdictFailed: the handshake did not arrive in time, was malformed,
	// or did not fit the memory file. A snapshot load that succeeded
	// despite this has a VM whose memory nobody serves: a failed restore.
	VerdictFailed = "failed"
	// VerdictNone: the shim runs no page server (pages none).
	VerdictNone = "none"
)

// Verdict is the outcome of the UFFD handshake. Firecracker's handshake
// has no answer, so a VMM's /snapshot/load can succeed while the page
// server rejected the handshake; this verdict is how thawd learns that.
type Verdict struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Regions is the number of guest memory regions and PeerPID the pid
	// that sent the handshake (when OK).
	Regions int `json:"regions,omitempty"`
	PeerPID int `json:"peer_pid,omitempty"`
}

// Err returns nil for an OK verdict and an error naming the reason for a
// failed one; pending and none are errors too, since thawd asks only when
// it loaded with the Uffd backend.
func (v Verdict) Err() error {
	switch v.State {
	case VerdictOK:
		return nil
	case VerdictFailed:
		return fmt.Errorf("UFFD handshake failed: %s", v.Reason)
	case VerdictNone:
		return errors.New("UFFD handshake: this shim runs no page server (started with pages none)")
	}
	return fmt.Errorf("UFFD handshake still %s", v.State)
}

// SettleStatus is a recording run's progress.
type SettleStatus struct {
	// Settled is true once the settle detector (or the maximum time) said
	// the fault rate has converged; Reason is uffd.SettleConverged or
	// uffd.SettleMaxTime, After the time since the handshake.
	Settled bool          `json:"settled"`
	Reason  string        `json:"reason,omitempty"`
	After   time.Duration `json:"after_ns,omitempty"`
	// Pages is the number of pages recorded so far.
	Pages int `json:"pages"`
	// Error is set when the access log could not be written: the recording
	// is then not trustworthy.
	Error string `json:"error,omitempty"`
}

// Prefetch modes of a page server (PageStats.Prefetch).
const (
	// PrefetchOrdered: the pages of the build's access log (the recording
	// run's first touches) are prefetched in its order, and no others.
	PrefetchOrdered = "ordered"
	// PrefetchFileOrder: no usable access log (none given, unreadable, or
	// recorded for another memory file): pages are prefetched in file
	// order.
	PrefetchFileOrder = "file-order"
	// PrefetchOff: faults only (prefetch disabled, or a recording run).
	PrefetchOff = "off"
)

// PageStats is the page server's counters (zero before the handshake).
type PageStats struct {
	// Serving is true once a page server exists (verdict OK); its counters
	// stay readable after it stops.
	Serving bool `json:"serving"`
	// Prefetch is how the server prefetches (Prefetch... constants), set
	// when it serves; OrderPages is the number of pages in the access
	// log's order when Prefetch is ordered.
	Prefetch   string `json:"prefetch,omitempty"`
	OrderPages int    `json:"order_pages,omitempty"`
	uffd.Stats
}

// writeStatusFile writes st to path atomically (a temporary file renamed
// over it), so a reader never sees half a status.
func writeStatusFile(path string, st Status) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding status: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing status file: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing status file: %w", werr)
	}
	return nil
}

// maxStatusFile bounds what ReadStatusFile reads.
const maxStatusFile = 64 << 10

// ReadStatusFile reads the status a shim left in dir. thawd uses it for a
// VM whose shim is gone: it says whether the VMM exited, how, and why the
// shim gave up. A missing file is an error wrapping os.ErrNotExist.
func ReadStatusFile(dir string) (Status, error) {
	path := filepath.Join(dir, StatusFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		return Status{}, fmt.Errorf("reading shim status: %w", err)
	}
	if len(b) > maxStatusFile {
		return Status{}, fmt.Errorf("shim status %s is %d bytes, more than %d: not a status file", path, len(b), maxStatusFile)
	}
	return decodeStatus(b, path)
}

func decodeStatus(b []byte, from string) (Status, error) {
	var st Status
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return Status{}, fmt.Errorf("decoding shim status from %s: %w", from, err)
	}
	if dec.More() {
		return Status{}, fmt.Errorf("decoding shim status from %s: data after the JSON object", from)
	}
	if err := st.Check(); err != nil {
		return Status{}, fmt.Errorf("shim status from %s: %w", from, err)
	}
	return st, nil
}

// Check reports the first broken invariant of a status. The shim checks
// every status it publishes (and logs a violation); ReadStatusFile
// refuses a file that breaks one.
func (st Status) Check() error {
	switch st.State {
	case StateStarting, StateRunning, StateVMMExited, StateFailed:
	default:
		return fmt.Errorf("unknown state %q", st.State)
	}
	switch st.Handshake.State {
	case VerdictPending, VerdictOK, VerdictNone:
		if st.Handshake.Reason != "" {
			return fmt.Errorf("verdict %s with a reason", st.Handshake.State)
		}
	case VerdictFailed:
		if st.Handshake.Reason == "" {
			return errors.New("failed verdict without a reason")
		}
	default:
		return fmt.Errorf("unknown verdict %q", st.Handshake.State)
	}
	switch {
	case st.ShimPID <= 0:
		return fmt.Errorf("shim pid %d", st.ShimPID)
	case (st.State == StateFailed) != (st.Reason != ""):
		return fmt.Errorf("state %s with reason %q: only failed has, and must have, a reason", st.State, st.Reason)
	case (st.State == StateStarting || st.State == StateRunning) && st.Done:
		return fmt.Errorf("state %s but done", st.State)
	case st.State == StateVMMExited && (!st.Done || st.Exit == nil):
		return errors.New("vmm-exited without being done with an exit status")
	case st.Exit != nil && st.VMMPID == 0:
		return errors.New("an exit status without a VMM pid")
	case st.Done && st.VMMPID != 0 && st.Exit == nil:
		return errors.New("done with a VMM pid but no exit status")
	case st.Done && st.Handshake.State == VerdictPending:
		return errors.New("done with the verdict pending")
	case st.Collected && !st.Done:
		return errors.New("collected before done")
	case st.Exit != nil && (st.Exit.Signal < 0 || (st.Exit.Signal != 0 && st.Exit.Code != 0)):
		return fmt.Errorf("exit status %+v: a code or a signal, not both", *st.Exit)
	}
	return nil
}

func signalName(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return n
	}
	return fmt.Sprintf("signal %d", int(sig))
}
