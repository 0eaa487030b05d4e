package api

import (
	"time"

	"github.com/thawvm/thaw/internal/daemon/slots"
	"github.com/thawvm/thaw/internal/daemon/store"
)

// The wire types. They are separate from the store's records so that the
// API can stay stable while the records change (and so that what is
// internal, such as control socket paths, stays internal).

// Version is GET /v1/version's answer.
type Version struct {
	Version string `json:"version"`
	API     string `json:"api"`
}

// Settings is GET and PATCH /v1/settings' answer.
type Settings struct {
	// UFFD: new sandboxes restore through the page server.
	UFFD bool `json:"uffd"`
	// RestoreSlots is the restore slots' limit and current use.
	RestoreSlots slots.Stats `json:"restore_slots"`
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

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func phasesOut(ps []store.Phase) ([]Phase, float64) {
	out := make([]Phase, len(ps))
	var total time.Duration
	for i, p := range ps {
		out[i] = Phase{Name: p.Name, DurationMS: ms(p.Duration)}
		total += p.Duration
	}
	return out, ms(total)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func templateOut(t store.Template) Template {
	out := Template{Name: t.Name, Current: t.Current, Builds: make([]Build, len(t.Builds)), CreatedAt: t.CreatedAt}
	for i, b := range t.Builds {
		timings, _ := phasesOut(b.Timings)
		out.Builds[i] = Build{
			ID: b.ID, State: string(b.State), Reason: b.Reason,
			VCPUs: b.VCPUs, MemoryMiB: b.MemoryMiB, DiskMiB: b.DiskMiB,
			MemoryBytes: b.MemoryBytes, RootfsBytes: b.RootfsBytes, AccessLogPages: b.AccessLogPages,
			Recorded: b.Artifacts.AccessLog != "",
			Timings:  timings, CreatedAt: b.CreatedAt, FinishedAt: timePtr(b.FinishedAt),
		}
	}
	return out
}

func sandboxOut(sb store.Sandbox) Sandbox {
	create, total := phasesOut(sb.Create)
	return Sandbox{
		ID: sb.ID, Template: sb.Template, Build: sb.Build, State: string(sb.State), Reason: sb.Reason,
		UFFD: sb.UFFD, ShimPID: sb.Shim.PID, Create: create, CreateMS: total,
		CreatedAt: sb.CreatedAt, ExpiresAt: timePtr(sb.ExpiresAt),
	}
}
