// Package agentapi defines the protocol between thawd and thaw-agent, the
// process inside every sandbox, and the Go client thawd uses to speak it.
//
// The protocol is HTTP/1.1 with JSON bodies over any stream: a unix socket in
// tests, Firecracker's host-side vsock socket in production (see
// DialVsockUDS). Routes:
//
//	GET  /health                 Health
//	POST /init                   InitRequest → Health
//	POST /exec                   ExecRequest; answered 101 and then framed (see Frame)
//	GET  /processes              []ProcessInfo
//	POST /processes/{id}/signal  SignalRequest
//	GET  /files/stat?path=P      FileInfo
//	GET  /files/list?path=P      []FileInfo
//	GET  /files/content?path=P   raw bytes, streamed
//	PUT  /files/content?path=P   raw bytes, streamed → FileInfo (query: mode, user, mkdirs)
//	POST /files/mkdir            MkdirRequest → FileInfo
//	POST /files/remove           RemoveRequest
//	POST /files/rename           RenameRequest
//	POST /shutdown               ShutdownRequest
//
// Errors are JSON Error bodies with a Kind that maps to one HTTP status
// (StatusForKind), so callers can branch on errors.Is(err, ErrNotFound).
//
// File operations run with the agent's privileges (root in a guest); a
// request's user only decides who owns what it creates.
//
// Exec upgrades the connection (Upgrade: thaw-exec) so that stdin, stdout,
// stderr, signals and the exit status can flow both ways at once as frames;
// the request is validated and the process started before the 101, so a bad
// command fails as a plain HTTP error.
package agentapi

import (
	"fmt"
	"path"
	"strings"
	"time"
)

// DefaultVsockPort is the vsock port thaw-agent listens on in the guest.
const DefaultVsockPort = 10000

// ExecUpgrade is the protocol name in the Upgrade header of an exec request.
const ExecUpgrade = "thaw-exec"

// Response headers of a successful exec upgrade.
const (
	HeaderExecID  = "Thaw-Exec-Id"
	HeaderExecPID = "Thaw-Exec-Pid"
)

// ProtocolVersion is the version of this protocol the agent speaks. It
// grows when a request gains a field: the agent refuses fields it does not
// know (a typo must not be ignored), and agents live on inside old template
// snapshots, so thawd checks Health.Protocol before sending newer fields.
const ProtocolVersion = 1

// Health is the agent's answer to GET /health and POST /init.
type Health struct {
	// Protocol is the agent's ProtocolVersion.
	Protocol int `json:"protocol"`
	// Version is the agent's build version.
	Version string `json:"version"`
	// Initialized reports whether POST /init has succeeded since start.
	Initialized bool `json:"initialized"`
	// InitCount counts successful POST /init calls; it grows by one per
	// restore of a snapshot in which the agent was already initialized.
	InitCount uint64 `json:"init_count"`
	// PID is the agent's process id (1 when it is the guest's init).
	PID int `json:"pid"`
	// Hostname is the current hostname.
	Hostname string `json:"hostname"`
}

// InitRequest is the post-restore initialisation: every sandbox restored
// from one snapshot starts from identical memory, so it needs its own
// identity, the current time and fresh randomness.
type InitRequest struct {
	// Env is added to every exec's environment ("KEY=VALUE"); a request's
	// own Env wins over it.
	Env []string `json:"env,omitempty"`
	// Hostname, when set, becomes the guest's hostname.
	Hostname string `json:"hostname,omitempty"`
	// User is the default user for exec and file writes: a name, uid,
	// name:group or uid:gid, looked up in the guest's /etc/passwd.
	User string `json:"user,omitempty"`
	// Workdir is the default working directory for exec.
	Workdir string `json:"workdir,omitempty"`
	// Time, when non-zero, is the host's wall-clock time; the agent sets the
	// guest's realtime clock to it.
	Time time.Time `json:"time,omitzero"`
	// Entropy is added to the kernel's pool (RNDADDENTROPY) followed by a
	// reseed of the CRNG, so clones diverge. 16 to MaxEntropy bytes.
	Entropy []byte `json:"entropy,omitempty"`
}

// MaxEntropy caps InitRequest.Entropy.
const MaxEntropy = 4096

// MinEntropy is the least entropy an InitRequest may carry if it carries any.
const MinEntropy = 16

// Validate reports what is wrong with r, if anything.
func (r *InitRequest) Validate() error {
	if err := validateEnv(r.Env); err != nil {
		return err
	}
	if r.Hostname != "" {
		if err := validateHostname(r.Hostname); err != nil {
			return err
		}
	}
	if r.Workdir != "" {
		if err := CheckPath(r.Workdir); err != nil {
			return fmt.Errorf("workdir: %w", err)
		}
	}
	if n := len(r.Entropy); n != 0 && (n < MinEntropy || n > MaxEntropy) {
		return Errorf(KindInvalid, "entropy is %d bytes: send between %d and %d", n, MinEntropy, MaxEntropy)
	}
	return nil
}

func validateHostname(h string) error {
	if len(h) > 64 {
		return Errorf(KindInvalid, "hostname %q is %d bytes: at most 64", h, len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		ok := c == '-' || c == '.' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok {
			return Errorf(KindInvalid, "hostname %q has byte %q: use letters, digits, '-' and '.'", h, c)
		}
	}
	return nil
}

func validateEnv(env []string) error {
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return Errorf(KindInvalid, "env entry %q: want KEY=VALUE", kv)
		}
		if strings.IndexByte(kv, 0) >= 0 {
			return Errorf(KindInvalid, "env entry %q contains a NUL byte", kv)
		}
	}
	return nil
}

// ExecRequest starts a process. Exactly one of Argv and Shell is set.
type ExecRequest struct {
	// Argv is the program and its arguments; a program without a slash is
	// looked up in the PATH of the process's environment.
	Argv []string `json:"argv,omitempty"`
	// Shell is a command line run as /bin/sh -c Shell.
	Shell string `json:"shell,omitempty"`
	// Env is added to the environment after the defaults and InitRequest.Env.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory; default InitRequest.Workdir, else the
	// user's home directory, else /.
	Cwd string `json:"cwd,omitempty"`
	// User runs the process as this user (name, uid, name:group, uid:gid);
	// default InitRequest.User, else the agent's own user.
	User string `json:"user,omitempty"`
	// Stdin says the client will send stdin frames; without it stdin is
	// /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// TimeoutMS, when positive, kills the process group after this many
	// milliseconds; the exit status then has TimedOut set.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Detach keeps the process running when the client disconnects. Without
	// it, a disconnect kills the process group.
	Detach bool `json:"detach,omitempty"`
}

// Validate reports what is wrong with r, if anything.
func (r *ExecRequest) Validate() error {
	switch {
	case len(r.Argv) == 0 && r.Shell == "":
		return Errorf(KindInvalid, "exec needs argv or shell")
	case len(r.Argv) != 0 && r.Shell != "":
		return Errorf(KindInvalid, "exec takes argv or shell, not both")
	case len(r.Argv) != 0 && r.Argv[0] == "":
		return Errorf(KindInvalid, "argv[0] is empty")
	case r.TimeoutMS < 0:
		return Errorf(KindInvalid, "timeout_ms is %d: want 0 (none) or more", r.TimeoutMS)
	}
	for i, a := range r.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return Errorf(KindInvalid, "argv[%d] contains a NUL byte", i)
		}
	}
	if strings.IndexByte(r.Shell, 0) >= 0 {
		return Errorf(KindInvalid, "shell command contains a NUL byte")
	}
	if r.Cwd != "" {
		if err := CheckPath(r.Cwd); err != nil {
			return fmt.Errorf("cwd: %w", err)
		}
	}
	return validateEnv(r.Env)
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when a signal ended the process.
	Code int `json:"code"`
	// Signal is the number of the signal that ended the process, or 0.
	Signal int `json:"signal,omitempty"`
	// SignalName is Signal's name ("SIGKILL"), if any.
	SignalName string `json:"signal_name,omitempty"`
	// TimedOut reports that the agent killed the process group because
	// ExecRequest.TimeoutMS passed.
	TimedOut bool `json:"timed_out,omitempty"`
}

// String describes s the way a shell would.
func (s ExitStatus) String() string {
	switch {
	case s.TimedOut:
		return fmt.Sprintf("timed out (killed by %s)", s.SignalName)
	case s.Signal != 0:
		return "killed by " + s.SignalName
	}
	return fmt.Sprintf("exit code %d", s.Code)
}

// ProcessInfo describes a process the agent started.
type ProcessInfo struct {
	ID       string      `json:"id"`
	PID      int         `json:"pid"`
	Argv     []string    `json:"argv"`
	Detached bool        `json:"detached"`
	Running  bool        `json:"running"`
	Exit     *ExitStatus `json:"exit,omitempty"`
}

// SignalRequest sends a signal to a process group the agent started.
type SignalRequest struct {
	// Signal is a signal number (9) or name ("SIGKILL" or "KILL").
	Signal string `json:"signal"`
}

// FileInfo describes a file in the guest.
type FileInfo struct {
	Path string `json:"path"`
	Name string `json:"name"`
	// Type is "file", "dir", "symlink" or "other".
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode holds the permission bits, setuid, setgid and sticky (07777).
	Mode    uint32    `json:"mode"`
	UID     int       `json:"uid"`
	GID     int       `json:"gid"`
	ModTime time.Time `json:"mtime"`
	// Target is a symlink's target.
	Target string `json:"target,omitempty"`
}

// File types in FileInfo.Type.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeOther   = "other"
)

// MkdirRequest creates a directory.
type MkdirRequest struct {
	Path string `json:"path"`
	// Mode is the permission bits; 0 means 0755.
	Mode uint32 `json:"mode,omitempty"`
	// Parents creates missing parents and accepts an existing directory.
	Parents bool `json:"parents,omitempty"`
	// User owns the new directories; default InitRequest.User.
	User string `json:"user,omitempty"`
}

// RemoveRequest removes a file or directory.
type RemoveRequest struct {
	Path string `json:"path"`
	// Recursive removes a non-empty directory and everything under it.
	Recursive bool `json:"recursive,omitempty"`
}

// RenameRequest renames a file or directory, replacing a file at To.
type RenameRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// ShutdownRequest asks the agent to stop every process and power the guest
// off (or reboot it). Only an agent running as PID 1 shuts the guest down.
type ShutdownRequest struct {
	// Action is "poweroff" (default), "reboot" or "halt". Firecracker has
	// no power-off device: it stops the VM on "reboot" (with reboot=k on the
	// kernel command line).
	Action string `json:"action,omitempty"`
}

// Shutdown actions.
const (
	ShutdownPoweroff = "poweroff"
	ShutdownReboot   = "reboot"
	ShutdownHalt     = "halt"
)

// Validate reports what is wrong with r, if anything.
func (r *ShutdownRequest) Validate() error {
	switch r.Action {
	case "", ShutdownPoweroff, ShutdownReboot, ShutdownHalt:
		return nil
	}
	return Errorf(KindInvalid, "shutdown action %q: use poweroff, reboot or halt", r.Action)
}

// MaxPathLen caps paths in requests (Linux's PATH_MAX).
const MaxPathLen = 4096

// CheckPath accepts an absolute, clean path without NUL bytes: the agent
// never resolves paths relative to its own working directory, and a path
// with ".." or "//" in it is refused rather than silently rewritten.
func CheckPath(p string) error {
	switch {
	case p == "":
		return Errorf(KindInvalid, "path is empty: give an absolute path")
	case len(p) > MaxPathLen:
		return Errorf(KindInvalid, "path is %d bytes: at most %d", len(p), MaxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return Errorf(KindInvalid, "path %q contains a NUL byte", p)
	case p[0] != '/':
		return Errorf(KindInvalid, "path %q is not absolute: start it with /", p)
	case path.Clean(p) != p:
		return Errorf(KindInvalid, "path %q is not clean: use %q", p, path.Clean(p))
	}
	return nil
}
