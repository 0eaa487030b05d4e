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
