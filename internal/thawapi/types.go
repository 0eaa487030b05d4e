// Package thawapi is thawd's API as its clients see it: the wire types of
// every route and a Go client over the unix socket (or TCP with a bearer
// token). thawd's server (internal/daemon/api) answers with these types and
// the CLI uses the client, so both sides share one definition. The types
// are separate from the store's records so that the API can stay stable
// while the records change, and so that internals such as control socket
// paths stay inside thawd. Errors come back with their errdefs kind.
package thawapi

import "time"

// Version is GET /v1/version's answer.
type Version struct {
	Version string `json:"version"`
	API     string `json:"api"`
}

// SlotStats is the restore slots' limit and use.
type SlotStats struct {
	Limit   int `json:"limit"`
	InUse   int `json:"in_use"`
	Waiting int `json:"waiting"`
}

// ErrorBody is every error response's body. Kind is the errdefs kind's
// name ("not found", ...), empty for an internal error; the client rebuilds
// the kind from the status (errdefs.FromHTTP).
type ErrorBody struct {
	Error string `json:"error"`
	Kind  string `json:"kind,omitempty"`
}

// Settings is GET and PATCH /v1/settings' answer.
type Settings struct {
	// UFFD: new sandboxes restore through the page server.
	UFFD bool `json:"uffd"`
	// RestoreSlots is the restore slots' limit and current use.
	RestoreSlots SlotStats `json:"restore_slots"`
}

// SettingsPatch is PATCH /v1/settings' body: the fields to change.
type SettingsPatch struct {
	UFFD                  *bool `json:"uffd,omitempty"`
	MaxConcurrentRestores *int  `json:"max_concurrent_restores,omitempty"`
}

// Phase is one timed phase of a create or build.
type Phase struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// Build describes one build of a template.
type Build struct {
	ID             string     `json:"id"`
	State          string     `json:"state"`
	Reason         string     `json:"reason,omitempty"`
	VCPUs          int        `json:"vcpus"`
	MemoryMiB      int        `json:"memory_mib"`
	DiskMiB        int        `json:"disk_mib"`
	MemoryBytes    int64      `json:"memory_bytes"`
	RootfsBytes    int64      `json:"rootfs_bytes"`
	AccessLogPages int64      `json:"access_log_pages"`
	Recorded       bool       `json:"recorded"`
	Ready          ReadyCheck `json:"ready"`
	Timings        []Phase    `json:"timings"`
	CreatedAt      time.Time  `json:"created_at"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
}

// Template describes a template and its builds.
type Template struct {
	Name string `json:"name"`
	// Current is the build new sandboxes restore from; empty until one
	// is ready.
	Current   string    `json:"current,omitempty"`
	Builds    []Build   `json:"builds"`
	CreatedAt time.Time `json:"created_at"`
}

// Sandbox describes a sandbox.
type Sandbox struct {
	ID       string `json:"id"`
	Template string `json:"template"`
	Build    string `json:"build"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	UFFD     bool   `json:"uffd"`
	// ShimPID is the pid of the sandbox's shim while one runs.
	ShimPID int `json:"shim_pid,omitempty"`
	// Create is the per-phase breakdown of the sandbox's create, and
	// CreateMS its total.
	Create    []Phase    `json:"create"`
	CreateMS  float64    `json:"create_ms"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// CreateSandbox is POST /v1/sandboxes' body.
type CreateSandbox struct {
	// ID is the new sandbox's id; empty lets thawd pick one.
	ID       string `json:"id,omitempty"`
	Template string `json:"template"`
	// TTLSeconds, when positive, deletes the sandbox that long after its
	// create.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
	// Env is added to every exec's environment (templates with an agent).
	Env []string `json:"env,omitempty"`
}

// ReadyCheck says how a build's sandboxes prove they are ready after
// restore: "agent" (health over vsock, then init) or "serial" (Marker on
// the guest's serial console, for guests without an agent).
type ReadyCheck struct {
	Kind   string `json:"kind"`
	Marker string `json:"marker,omitempty"`
}

// RegisterTemplate is PUT /v1/templates/{name}'s body: an existing
// snapshot's files (absolute host paths, readable by thawd) and the machine
// it was taken of. It becomes a new build, the template's current one.
type RegisterTemplate struct {
	VMState   string      `json:"vmstate"`
	Memory    string      `json:"memory"`
	Rootfs    string      `json:"rootfs"`
	Kernel    string      `json:"kernel,omitempty"`
	VCPUs     int         `json:"vcpus"`
	MemoryMiB int         `json:"memory_mib"`
	Ready     *ReadyCheck `json:"ready,omitempty"`
}

// ExecRequest is the first line of POST /v1/sandboxes/{id}/exec's body;
// with Stdin set, the rest of the body is the process's stdin, streamed.
// Exactly one of Argv and Shell is set.
type ExecRequest struct {
	Argv  []string `json:"argv,omitempty"`
	Shell string   `json:"shell,omitempty"`
	Env   []string `json:"env,omitempty"`
	Cwd   string   `json:"cwd,omitempty"`
	User  string   `json:"user,omitempty"`
	Stdin bool     `json:"stdin,omitempty"`
	// TimeoutMS, when positive, kills the process after this long.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// ExitStatus is how an exec's process ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when a signal ended the process.
	Code       int    `json:"code"`
	Signal     int    `json:"signal,omitempty"`
	SignalName string `json:"signal_name,omitempty"`
	TimedOut   bool   `json:"timed_out,omitempty"`
}

// ExecEvent is one line of an exec's answer (newline-delimited JSON,
// application/x-ndjson): output as it is produced, then either Exit or
// Error (with its kind) last.
type ExecEvent struct {
	Stdout []byte      `json:"stdout,omitempty"`
	Stderr []byte      `json:"stderr,omitempty"`
	Exit   *ExitStatus `json:"exit,omitempty"`
	Error  string      `json:"error,omitempty"`
	Kind   string      `json:"kind,omitempty"`
}

// FileInfo describes a file written into a sandbox.
type FileInfo struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"`
}
