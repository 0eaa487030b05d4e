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
	// Pages is the sandbox's page server as its shim reports it: only in
	// GET /v1/sandboxes/{id}, and only while the sandbox runs with UFFD.
	Pages *PageServer `json:"pages,omitempty"`
}

// Prefetch modes of a page server (PageServer.Prefetch).
const (
	// PrefetchOrdered: the pages of the build's access log, in the order
	// its recording run touched them.
	PrefetchOrdered = "ordered"
	// PrefetchFileOrder: every page in memory-file order (the build has
	// no usable access log).
	PrefetchFileOrder = "file-order"
	// PrefetchOff: faults only.
	PrefetchOff = "off"
)

// PageServer is a running sandbox's page server: how it prefetches and
// what it has installed so far.
type PageServer struct {
	Prefetch string `json:"prefetch"`
	// OrderPages is the length of the access log's order (ordered only).
	OrderPages int `json:"order_pages,omitempty"`
	// Faults counts fault messages answered; FaultPages the pages they
	// installed; ZeroPages the all-zero pages installed as the zero page
	// (by faults or prefetch); PrefetchedPages the pages the prefetcher
	// installed.
	Faults          uint64 `json:"faults"`
	FaultPages      uint64 `json:"fault_pages"`
	ZeroPages       uint64 `json:"zero_pages"`
	PrefetchedPages uint64 `json:"prefetched_pages"`
	// PrefetchDone is set once the prefetcher has run out of pages,
	// PrefetchMS after how long.
	PrefetchDone bool    `json:"prefetch_done"`
	PrefetchMS   float64 `json:"prefetch_ms,omitempty"`
	// PrefetchRate is the prefetcher's limit in bytes per second (absent:
	// unlimited), the one thawd's uffd_prefetch_rate gave the sandbox at
	// create; PrefetchWaitMS is how long the prefetcher has waited for it.
	PrefetchRate   uint64  `json:"prefetch_rate,omitempty"`
	PrefetchWaitMS float64 `json:"prefetch_wait_ms,omitempty"`
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
	VMState string `json:"vmstate"`
	Memory  string `json:"memory"`
	Rootfs  string `json:"rootfs"`
	Kernel  string `json:"kernel,omitempty"`
	// RootDrive is the drive_id of the snapshot's root drive, if the
	// snapshot records it by an absolute path: each sandbox's clone of
	// Rootfs replaces it (PATCH /drives) before the VM resumes. Empty: the
	// snapshot names its drive by the relative "rootfs.ext4" (or has none).
	RootDrive string      `json:"root_drive,omitempty"`
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

// ImageSource is a template build's root filesystem: Kind is "dir",
// "tar", "oci" (an OCI image layout directory), "docker" (a `docker save`
// archive) or "ext4" (a prebuilt image with the agent as init); Path is an
// absolute host path readable by thawd; Ref picks an image in an OCI layout
// or a docker archive holding several.
type ImageSource struct {
	Kind string `json:"kind"`
	Path string `json:"path"`
	Ref  string `json:"ref,omitempty"`
}

// BuildStep is one shell command run in the build VM; a non-zero exit
// fails the build.
type BuildStep struct {
	Run     string   `json:"run"`
	Env     []string `json:"env,omitempty"`
	Workdir string   `json:"workdir,omitempty"`
}

// BuildTemplate is POST /v1/templates' body.
type BuildTemplate struct {
	Name  string      `json:"name"`
	Image ImageSource `json:"image"`
	Steps []BuildStep `json:"steps,omitempty"`
	// Start is run detached after the steps (/bin/sh -c) and is running
	// in every sandbox.
	Start     string      `json:"start,omitempty"`
	Ready     *ReadyCheck `json:"ready,omitempty"`
	VCPUs     int         `json:"vcpus"`
	MemoryMiB int         `json:"memory_mib"`
	// DiskMiB is the root filesystem's size (ignored for "ext4").
	DiskMiB int `json:"disk_mib,omitempty"`
}

// BuildRun is a template build in progress or ended: State is "building",
// "ready" (Build is the published build) or "failed" (Reason says why).
// Runs live in thawd's memory until it restarts.
type BuildRun struct {
	ID         string     `json:"id"`
	Template   string     `json:"template"`
	State      string     `json:"state"`
	Reason     string     `json:"reason,omitempty"`
	Build      string     `json:"build,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}
