package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agentapi"
)

// mount is one file system PID 1 sets up.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// earlyMounts are what processes expect to find in any Linux system. The
// root file system itself is mounted by the kernel (root=, rw on the kernel
// command line).
var earlyMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
}

// devLinks are the /dev symlinks udev or systemd would create.
var devLinks = [][2]string{
	{"/proc/self/fd", "/dev/fd"},
	{"/proc/self/fd/0", "/dev/stdin"},
	{"/proc/self/fd/1", "/dev/stdout"},
	{"/proc/self/fd/2", "/dev/stderr"},
	{"pts/ptmx", "/dev/ptmx"},
}

// SetupPID1 prepares the guest when the agent is its init: mounts /proc,
// /sys, /dev, /dev/pts, /dev/shm, /tmp and /run, creates the usual /dev
// symlinks, sets the hostname from /etc/hostname, and turns Ctrl-Alt-Del into
// SIGINT to PID 1 (the VMM's SendCtrlAltDel then asks for a clean shutdown
// instead of an immediate reboot). A file system that is already mounted
// (EBUSY, e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT) is fine.
func SetupPID1(log *slog.Logger) error {
	for _, m := range earlyMounts {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			return fmt.Errorf("creating mount point %s: %w", m.target, err)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if errors.Is(err, unix.EBUSY) {
			log.Debug("already mounted", "target", m.target)
			continue
		}
		if err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	attachConsole(log)
	for _, l := range devLinks {
		if _, err := os.Lstat(l[1]); err == nil {
			// devtmpfs may have made a ptmx node; the devpts instance's
			// ptmx is the one that works with newinstance.
			if l[1] != "/dev/ptmx" {
				continue
			}
			os.Remove(l[1])
		}
		if err := os.Symlink(l[0], l[1]); err != nil {
			return fmt.Errorf("linking %s: %w", l[1], err)
		}
	}
	if b, err := os.ReadFile("/etc/hostname"); err == nil {
		if h := strings.TrimSpace(string(b)); h != "" {
			if err := (HostSystem{}).SetHostname(h); err != nil {
				log.Warn("hostname from /etc/hostname not set", "err", err)
			}
		}
	}
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	if errors.Is(err, unix.EINVAL) {
		// Init of a PID namespace (a container, or the tests) has no
		// Ctrl-Alt-Del to configure; reboot(2) there only ends the
		// namespace, which Shutdown still does.
		log.Info("not the machine's init: Ctrl-Alt-Del stays with the host")
		return nil
	}
	if err != nil {
		return fmt.Errorf("turning Ctrl-Alt-Del into a signal: %w", err)
	}
	return nil
}

// attachConsole gives PID 1 the console as stdin, stdout and stderr when it
// started without one. The kernel opens /dev/console for init before any
// devtmpfs exists; if the image had no console node, the Go runtime put
// /dev/null on the missing descriptors and the agent's log would be lost.
func attachConsole(log *slog.Logger) {
	var st unix.Stat_t
	err := unix.Fstat(1, &st)
	isNull := err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == unix.Mkdev(1, 3)
	if err == nil && !isNull {
		return // a console, or whatever the parent gave (tests: a pipe)
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		log.Warn("no console for the agent's output", "err", err)
		return
	}
	for target := 0; target <= 2; target++ {
		unix.Dup2(fd, target)
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

// ShutdownGrace is how long Shutdown waits for processes to exit after
// SIGTERM before it sends SIGKILL.
const ShutdownGrace = 3 * time.Second

// Shutdown is PID 1's clean shutdown: SIGTERM to every process, up to
// ShutdownGrace for them to exit, SIGKILL to the rest, sync, and then
// reboot(2) with the action (poweroff, reboot or halt). It does not return
// unless reboot(2) fails.
func Shutdown(log *slog.Logger, action string) error {
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch action {
	case agentapi.ShutdownReboot:
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case agentapi.ShutdownHalt:
		cmd = unix.LINUX_REBOOT_CMD_HALT
	}
	log.Info("shutting down", "action", action)
	unix.Kill(-1, unix.SIGTERM)
	if !waitNoChildren(ShutdownGrace) {
		log.Warn("processes left after SIGTERM; killing them", "grace", ShutdownGrace)
		unix.Kill(-1, unix.SIGKILL)
		waitNoChildren(time.Second)
	}
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("reboot(%s): %w", action, err)
	}
	return nil
}

// waitNoChildren reaps until no child is left (every process in the guest
// is a descendant of PID 1) or d passes.
func waitNoChildren(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for {
			pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
			if errors.Is(err, unix.ECHILD) {
				return true
			}
			if pid <= 0 {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
