package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/errdefs"
)

// EphemeralPrefix starts the ids of ephemeral VMs (template builds and
// recording runs). They are never persisted: the store refuses any id, name
// or build id that starts with it.
const EphemeralPrefix = "build-"

// idPattern is what sandbox ids, template names and build ids look like. They
// become path components under the data directory, so they must not contain
// a slash or be "." or "..".
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidateID checks that id (what names) is usable as a sandbox id, template
// name or build id. The error is of kind ErrInvalidArgument.
func ValidateID(what, id string) error {
	if !idPattern.MatchString(id) {
		return errdefs.InvalidArgument("%s %q: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit", what, id)
	}
	if strings.HasPrefix(id, EphemeralPrefix) {
		return errdefs.InvalidArgument("%s %q: the prefix %q is reserved for ephemeral build VMs, which are never stored", what, id, EphemeralPrefix)
	}
	return nil
}

// SandboxState is where a sandbox is in its life. A deleted sandbox has no
// state: its record is gone.
type SandboxState string

// The sandbox states. docs/ARCHITECTURE-daemon.md draws the machine.
const (
	// Creating: the record exists, the restore is in progress. A shim may
	// or may not have been started yet.
	Creating SandboxState = "creating"
	// Running: the VM runs under a live shim.
	Running SandboxState = "running"
	// Pausing: a Full snapshot into the sandbox directory is being taken.
	Pausing SandboxState = "pausing"
	// Paused: the snapshot is on disk and no process runs for the sandbox.
	Paused SandboxState = "paused"
	// Resuming: the sandbox's own snapshot is being loaded under a new shim.
	Resuming SandboxState = "resuming"
	// Stopping: the sandbox is being torn down; the record is deleted when
	// that finishes.
	Stopping SandboxState = "stopping"
	// Failed: something broke (see Reason); only deletion remains.
	Failed SandboxState = "failed"
)

// SandboxStates returns every sandbox state, in life order.
func SandboxStates() []SandboxState {
	return []SandboxState{Creating, Running, Pausing, Paused, Resuming, Stopping, Failed}
}

// sandboxTransitions lists the states each state may move to. Any state but
// Stopping may also fail; Stopping fails only when teardown itself does.
var sandboxTransitions = map[SandboxState][]SandboxState{
	Creating: {Running, Stopping, Failed},
	Running:  {Pausing, Stopping, Failed},
	Pausing:  {Paused, Running, Failed},
	Paused:   {Resuming, Stopping, Failed},
	Resuming: {Running, Paused, Failed},
	Stopping: {Failed},
	Failed:   {Stopping},
}

// deletableStates are the states from which a record may be deleted:
// creating (rolling back a failed create), stopping (teardown done) and
// failed.
var deletableStates = []SandboxState{Creating, Stopping, Failed}

// needsShim are the states in which a live shim must be recorded, so that a
// restarted thawd can re-attach to it.
var needsShim = []SandboxState{Running, Pausing, Resuming}

// Valid reports whether s is one of the sandbox states.
func (s SandboxState) Valid() bool {
	_, ok := sandboxTransitions[s]
	return ok
}

// CanMoveTo reports whether a sandbox in state s may move to state to.
// Staying in the same state is always allowed.
func (s SandboxState) CanMoveTo(to SandboxState) bool {
	return s == to || slices.Contains(sandboxTransitions[s], to)
}

// Shim is what a restarted thawd needs to find and re-attach to a sandbox's
// shim.
type Shim struct {
	// PID is the shim's process id.
	PID int `json:"pid"`
	// StartTime is the shim's start time in clock ticks since boot (field
	// 22 of /proc/<pid>/stat), so that a reused pid is not mistaken for
	// the shim.
	StartTime uint64 `json:"start_time"`
	// ControlSocket is the path of the shim's control socket.
	ControlSocket string `json:"control_socket"`
}

// IsZero reports whether no shim is recorded.
func (s Shim) IsZero() bool { return s == Shim{} }

// Phase is one named, timed step of an operation (a create's slot wait,
// disk clone, shim start, snapshot load, ...), kept in order.
type Phase struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// Sandbox is the stored record of one sandbox.
type Sandbox struct {
	ID string `json:"id"`
	// Template and Build name the template build the sandbox was restored
	// from. Both must exist, and the build must be ready, as long as the
	// record exists.
	Template string       `json:"template"`
	Build    string       `json:"build"`
	State    SandboxState `json:"state"`
	// Reason says why the sandbox failed; set exactly when State is Failed.
	Reason string `json:"reason,omitempty"`
	// Dir is the sandbox's directory (absolute).
	Dir string `json:"dir"`
	// UFFD records whether guest memory is served by a page server (true)
	// or read from the memory file (false).
	UFFD bool `json:"uffd"`
	// Shim is set while a shim runs for the sandbox.
	Shim Shim `json:"shim,omitzero"`
	// Create is the per-phase timing of the sandbox's create, in order.
	Create []Phase `json:"create,omitempty"`
	// TTL, when positive, is how long the sandbox may live; ExpiresAt is
	// when it will be deleted.
	TTL       time.Duration `json:"ttl_ns,omitempty"`
	ExpiresAt time.Time     `json:"expires_at,omitzero"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// Validate checks that the record is internally consistent. It does not look
// at other records (Store.Check does).
func (sb *Sandbox) Validate() error {
	if err := ValidateID("sandbox id", sb.ID); err != nil {
		return err
	}
	if err := ValidateID("template name", sb.Template); err != nil {
		return err
	}
	if err := ValidateID("build id", sb.Build); err != nil {
		return err
	}
	if !sb.State.Valid() {
		return errdefs.InvalidArgument("sandbox %q: unknown state %q", sb.ID, sb.State)
	}
	if (sb.State == Failed) != (sb.Reason != "") {
		return errdefs.InvalidArgument("sandbox %q: state %s with reason %q: a reason is required exactly when failed", sb.ID, sb.State, sb.Reason)
	}
	if !filepath.IsAbs(sb.Dir) {
		return errdefs.InvalidArgument("sandbox %q: directory %q is not an absolute path", sb.ID, sb.Dir)
	}
	if slices.Contains(needsShim, sb.State) && (sb.Shim.PID <= 0 || sb.Shim.ControlSocket == "") {
		return errdefs.InvalidArgument("sandbox %q: state %s needs a shim pid and control socket, have %+v", sb.ID, sb.State, sb.Shim)
	}
	if sb.State == Paused && !sb.Shim.IsZero() {
		return errdefs.InvalidArgument("sandbox %q: paused but a shim is recorded (%+v); a paused sandbox has no process", sb.ID, sb.Shim)
	}
	if sb.Shim.PID < 0 {
		return errdefs.InvalidArgument("sandbox %q: negative shim pid %d", sb.ID, sb.Shim.PID)
	}
	if err := validatePhases(sb.Create); err != nil {
		return fmt.Errorf("sandbox %q: create timings: %w", sb.ID, err)
	}
	if sb.TTL < 0 {
		return errdefs.InvalidArgument("sandbox %q: negative TTL %v", sb.ID, sb.TTL)
	}
	if sb.TTL > 0 && sb.ExpiresAt.IsZero() {
		return errdefs.InvalidArgument("sandbox %q: TTL %v without an expiry time", sb.ID, sb.TTL)
	}
	return nil
}

func validatePhases(ps []Phase) error {
	for i, p := range ps {
		if p.Name == "" {
			return errdefs.InvalidArgument("phase %d has no name", i)
		}
		if p.Duration < 0 {
			return errdefs.InvalidArgument("phase %q has negative duration %v", p.Name, p.Duration)
		}
	}
	return nil
}

// BuildState is where a template build is in its life.
type BuildState string

// The build states. A build moves from Building to Ready or Failed, and
// never leaves either.
const (
	Building   BuildState = "building"
	BuildReady BuildState = "ready"
	// BuildFailed builds are kept so that their logs can be read.
	BuildFailed BuildState = "failed"
)

// BuildStates returns every build state.
func BuildStates() []BuildState { return []BuildState{Building, BuildReady, BuildFailed} }

// Valid reports whether s is one of the build states.
func (s BuildState) Valid() bool { return s == Building || s == BuildReady || s == BuildFailed }

// CanMoveTo reports whether a build in state s may move to state to.
func (s BuildState) CanMoveTo(to BuildState) bool {
	return s == to || (s == Building && (to == BuildReady || to == BuildFailed))
}

// Artifacts names a build's files, relative to the build directory.
type Artifacts struct {
	Kernel  string `json:"kernel,omitempty"`
	Memory  string `json:"memory,omitempty"`
	VMState string `json:"vmstate,omitempty"`
	Rootfs  string `json:"rootfs,omitempty"`
	// AccessLog is the recorded page order; empty when the build ran with
	// prefetch (and so recording) off.
	AccessLog string `json:"access_log,omitempty"`
}

// ReadyKind says how a restored sandbox of a build proves it is ready.
type ReadyKind string

// The ready checks.
const (
	// ReadyAgent (the default, also spelled ""): the guest agent answers
	// its health check over vsock, then takes the post-restore init.
	ReadyAgent ReadyKind = "agent"
	// ReadySerial: the guest has no agent (probe guests, appliances); the
	// sandbox is ready once Marker appears in the VMM's serial output
	// (<sandbox dir>/vmm.log), which is fresh for every restore.
	ReadySerial ReadyKind = "serial"
)

// ReadyCheck is how a build's sandboxes are checked after restore.
type ReadyCheck struct {
	Kind   ReadyKind `json:"kind,omitempty"`
	Marker string    `json:"marker,omitempty"`
}

// Validate checks that the ready check is complete.
func (r ReadyCheck) Validate() error {
	switch r.Kind {
	case "", ReadyAgent:
		if r.Marker != "" {
			return errdefs.InvalidArgument("ready check: marker %q is only for kind %q", r.Marker, ReadySerial)
		}
	case ReadySerial:
		if r.Marker == "" || len(r.Marker) > 256 || strings.ContainsAny(r.Marker, "\n\x00") {
			return errdefs.InvalidArgument("ready check: kind %q needs a marker of 1 to 256 bytes on one line, got %q", ReadySerial, r.Marker)
		}
	default:
		return errdefs.InvalidArgument("ready check: kind %q: want %q or %q", r.Kind, ReadyAgent, ReadySerial)
	}
	return nil
}

// Limits on a build's warm-up commands.
const (
	MaxWarmupCommands = 64
	MaxWarmupArgs     = 256
	MaxWarmupBytes    = 64 << 10
)

// ValidateWarmup checks a build's warm-up commands: each one is an argv
// (program and arguments, run through the agent without a shell) with a
// non-empty program and no NUL bytes, and there are at most
// MaxWarmupCommands of them, each with at most MaxWarmupArgs arguments and
// MaxWarmupBytes bytes in all.
func ValidateWarmup(cmds [][]string) error {
	if len(cmds) > MaxWarmupCommands {
		return errdefs.InvalidArgument("warmup: %d commands: want at most %d", len(cmds), MaxWarmupCommands)
	}
	for i, argv := range cmds {
		switch {
		case len(argv) == 0:
			return errdefs.InvalidArgument("warmup[%d] is empty: give a program and its arguments, like [\"python3\", \"-c\", \"pass\"]", i)
		case argv[0] == "":
			return errdefs.InvalidArgument("warmup[%d][0] is empty: give the program to run", i)
		case len(argv) > MaxWarmupArgs:
			return errdefs.InvalidArgument("warmup[%d]: %d arguments: want at most %d", i, len(argv), MaxWarmupArgs)
		}
		n := 0
		for j, a := range argv {
			if strings.IndexByte(a, 0) >= 0 {
				return errdefs.InvalidArgument("warmup[%d][%d] contains a NUL byte", i, j)
			}
			n += len(a)
		}
		if n > MaxWarmupBytes {
			return errdefs.InvalidArgument("warmup[%d]: %d bytes of arguments: want at most %d", i, n, MaxWarmupBytes)
		}
	}
	return nil
}

// Build is one build of a template: its machine shape, where its artifacts
// are, how big they are and how long the build's phases took.
type Build struct {
	ID     string     `json:"id"`
	State  BuildState `json:"state"`
	Reason string     `json:"reason,omitempty"`
	// Dir is the build's directory (absolute): <data>/templates/<name>/<id>.
	Dir       string    `json:"dir"`
	Artifacts Artifacts `json:"artifacts"`
	// RootDrive is the drive_id of the snapshot's root drive when the
	// snapshot records it by an absolute path: a create loads with
	// resume_vm false, points it at the sandbox's clone with
	// PATCH /drives/{drive_id} and then resumes. Empty: the snapshot names
	// its drive by the relative DiskName, which the VMM's working directory
	// (the sandbox's) resolves to the clone.
	RootDrive string `json:"root_drive,omitempty"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskMiB   int    `json:"disk_mib"`
	// Ready says how its sandboxes are checked after restore.
	Ready ReadyCheck `json:"ready,omitzero"`
	// Warmup are the commands the recording run executed through the
	// agent after init, before waiting for the settle detector, so that
	// the pages they touched are in the access log (each an argv).
	Warmup [][]string `json:"warmup,omitempty"`
	// MemoryBytes and RootfsBytes are the artifact sizes; AccessLogPages
	// is the number of pages the recording run saw touched.
	MemoryBytes    int64     `json:"memory_bytes,omitempty"`
	RootfsBytes    int64     `json:"rootfs_bytes,omitempty"`
	AccessLogPages int64     `json:"access_log_pages,omitempty"`
	Timings        []Phase   `json:"timings,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	FinishedAt     time.Time `json:"finished_at,omitzero"`
}

// Validate checks that the build is internally consistent.
func (b *Build) Validate() error {
	if err := ValidateID("build id", b.ID); err != nil {
		return err
	}
	if !b.State.Valid() {
		return errdefs.InvalidArgument("build %q: unknown state %q", b.ID, b.State)
	}
	if (b.State == BuildFailed) != (b.Reason != "") {
		return errdefs.InvalidArgument("build %q: state %s with reason %q: a reason is required exactly when failed", b.ID, b.State, b.Reason)
	}
	if !filepath.IsAbs(b.Dir) {
		return errdefs.InvalidArgument("build %q: directory %q is not an absolute path", b.ID, b.Dir)
	}
	a := b.Artifacts
	for _, f := range []struct{ what, name string }{
		{"kernel", a.Kernel}, {"memory", a.Memory}, {"vmstate", a.VMState}, {"rootfs", a.Rootfs}, {"access log", a.AccessLog},
	} {
		if f.name != "" && !filepath.IsLocal(f.name) {
			return errdefs.InvalidArgument("build %q: %s artifact %q must be a path inside the build directory", b.ID, f.what, f.name)
		}
	}
	if b.State == BuildReady && (a.Memory == "" || a.VMState == "" || a.Rootfs == "") {
		return errdefs.InvalidArgument("build %q: ready builds need memory, vmstate and rootfs artifacts, have %+v", b.ID, a)
	}
	if b.VCPUs < 1 || b.MemoryMiB < 1 || b.DiskMiB < 1 {
		return errdefs.InvalidArgument("build %q: vcpus %d, memory %d MiB, disk %d MiB: all must be at least 1", b.ID, b.VCPUs, b.MemoryMiB, b.DiskMiB)
	}
	if b.MemoryBytes < 0 || b.RootfsBytes < 0 || b.AccessLogPages < 0 {
		return errdefs.InvalidArgument("build %q: negative size", b.ID)
	}
	if err := b.Ready.Validate(); err != nil {
		return fmt.Errorf("build %q: %w", b.ID, err)
	}
	if err := ValidateWarmup(b.Warmup); err != nil {
		return fmt.Errorf("build %q: %w", b.ID, err)
	}
	if len(b.Warmup) > 0 && (b.Ready.Kind == ReadySerial || (b.State == BuildReady && b.Artifacts.AccessLog == "")) {
		return errdefs.InvalidArgument("build %q: warm-up commands need the agent ready check and a recording run (an access log)", b.ID)
	}
	if err := validatePhases(b.Timings); err != nil {
		return fmt.Errorf("build %q: timings: %w", b.ID, err)
	}
	return nil
}

// Template is the stored record of a template and its builds.
type Template struct {
	Name string `json:"name"`
	// Spec is the build request as the API received it. The store keeps it
	// opaque (any JSON value) so that a rebuild can replay it.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Builds are the template's builds, oldest first.
	Builds []Build `json:"builds,omitempty"`
	// Current is the id of the ready build new sandboxes are restored
	// from; empty until a build is ready.
	Current   string    `json:"current,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// BuildByID returns the build with the given id, or nil.
func (t *Template) BuildByID(id string) *Build {
	for i := range t.Builds {
		if t.Builds[i].ID == id {
			return &t.Builds[i]
		}
	}
	return nil
}

// Validate checks that the template and its builds are internally
// consistent.
func (t *Template) Validate() error {
	if err := ValidateID("template name", t.Name); err != nil {
		return err
	}
	if len(t.Spec) > 0 && !json.Valid(t.Spec) {
		return errdefs.InvalidArgument("template %q: spec is not valid JSON", t.Name)
	}
	seen := make(map[string]bool, len(t.Builds))
	for i := range t.Builds {
		b := &t.Builds[i]
		if err := b.Validate(); err != nil {
			return fmt.Errorf("template %q: %w", t.Name, err)
		}
		if seen[b.ID] {
			return errdefs.InvalidArgument("template %q: build id %q appears twice", t.Name, b.ID)
		}
		seen[b.ID] = true
	}
	if t.Current != "" {
		b := t.BuildByID(t.Current)
		if b == nil {
			return errdefs.InvalidArgument("template %q: current build %q does not exist", t.Name, t.Current)
		}
		if b.State != BuildReady {
			return errdefs.InvalidArgument("template %q: current build %q is %s, not ready", t.Name, t.Current, b.State)
		}
	}
	return nil
}

// ErrCorrupt marks a stored record that cannot be decoded or is invalid. It
// carries no errdefs kind on purpose: a corrupt store is an internal error,
// not something the API caller did wrong.
var ErrCorrupt = errors.New("corrupt record")

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data: a record this thawd does not fully understand is an error,
// not silently half-read.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the record")
	}
	return nil
}

// decodeSandbox decodes and validates the sandbox record stored under key.
// Every error names the key.
func decodeSandbox(key, data []byte) (Sandbox, error) {
	var sb Sandbox
	if err := decodeStrict(data, &sb); err != nil {
		return Sandbox{}, fmt.Errorf("decoding sandbox record %q: %w: %v", key, ErrCorrupt, err)
	}
	if err := sb.Validate(); err != nil {
		return Sandbox{}, fmt.Errorf("sandbox record %q: %w: %v", key, ErrCorrupt, err)
	}
	if sb.ID != string(key) {
		return Sandbox{}, fmt.Errorf("sandbox record %q: %w: it holds id %q", key, ErrCorrupt, sb.ID)
	}
	return sb, nil
}

// decodeTemplate decodes and validates the template record stored under key.
// Every error names the key.
func decodeTemplate(key, data []byte) (Template, error) {
	var t Template
	if err := decodeStrict(data, &t); err != nil {
		return Template{}, fmt.Errorf("decoding template record %q: %w: %v", key, ErrCorrupt, err)
	}
	if err := t.Validate(); err != nil {
		return Template{}, fmt.Errorf("template record %q: %w: %v", key, ErrCorrupt, err)
	}
	if t.Name != string(key) {
		return Template{}, fmt.Errorf("template record %q: %w: it holds name %q", key, ErrCorrupt, t.Name)
	}
	return t, nil
}
