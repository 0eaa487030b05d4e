package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/testenv"
)

// TestPID1InDebian runs the static agent as PID 1 of new PID, mount and UTS
// namespaces, chrooted into the Debian base root filesystem: the closest a
// host gets to a guest boot. It checks the PID 1 set-up (mounts, hostname),
// exec of the guest's own programs as its own users, orphan reaping, and the
// clean shutdown, which in a PID namespace ends the namespace. The mount
// namespace is private, so nothing it mounts reaches the host.
//
// It needs root and the Debian tarball from guest/rootfs/debian.sh (built
// by CI's setup); without the cache it skips: debootstrap is minutes of
// network work a unit test must not start.
func TestPID1InDebian(t *testing.T) {
	testenv.RequireRoot(t)
	out, err := exec.Command("../../guest/rootfs/debian.sh", "--cached-path").Output()
	tarPath := strings.TrimSpace(string(out))
	if err != nil || tarPath == "" {
		noDebianBase(t)
	}
	root, err := os.MkdirTemp("", "thaw-pid1")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	if b, err := exec.Command("tar", "-xf", tarPath, "-C", root).CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", tarPath, err, b)
	}
	agentBin, err := os.ReadFile(buildAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/thaw-agent"), agentBin, 0o755); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	cmd := exec.Command("unshare", "--fork", "--pid", "--mount", "--uts", "--propagation", "private",
		"chroot", root, "/usr/sbin/thaw-agent", "-listen", "unix:/agent.sock", "-log-level", "debug")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	}()

	c := agentapi.NewClient(agentapi.UnixDialer(filepath.Join(root, "agent.sock")))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var h agentapi.Health
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if h, err = c.Health(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not healthy after 20s: %v", err)
		}
	}
	if h.PID != 1 || h.Hostname != "thaw" {
		t.Errorf("Health: got %+v, want PID 1 and the hostname from /etc/hostname (thaw)", h)
	}
	// No Time: CLOCK_REALTIME is not namespaced, this would set the host's.
	if h, err = c.Init(ctx, agentapi.InitRequest{Hostname: "sandbox-7", Entropy: make([]byte, 32), User: "nobody"}); err != nil || h.Hostname != "sandbox-7" {
		t.Fatalf("Init: got %+v, %v", h, err)
	}
	run := func(shell string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		st, err := c.Exec(ctx, agentapi.ExecRequest{Shell: shell, User: "root"}, nil, &stdout, &stderr)
		if err != nil || st.Code != 0 {
			t.Fatalf("exec %q: %v, %v, stderr %q", shell, st, err, stderr.String())
		}
		return stdout.String()
	}
	if got := run("python3 -c 'import socket; print(socket.gethostname())'"); got != "sandbox-7\n" {
		t.Errorf("python3 hostname: got %q, want sandbox-7", got)
	}
	mounts := run("cat /proc/mounts")
	for _, m := range []string{" /proc proc ", " /sys sysfs ", " /dev devtmpfs ", " /dev/pts devpts ", " /tmp tmpfs ", " /run tmpfs "} {
		if !strings.Contains(mounts, m) {
			t.Errorf("/proc/mounts lacks %q:\n%s", m, mounts)
		}
	}
	if got := run("test -c /dev/pts/ptmx && readlink /dev/ptmx"); got != "pts/ptmx\n" {
		t.Errorf("/dev/ptmx: got %q, want a link to pts/ptmx", got)
	}
	// The default user from init: nobody.
	var who bytes.Buffer
	if st, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"id", "-un"}}, nil, &who, nil); err != nil || st.Code != 0 || who.String() != "nobody\n" {
		t.Errorf("id -un as the default user: got %q, %v, %v; want nobody", who.String(), st, err)
	}
	// An orphan is reparented to PID 1 and reaped: no zombie stays.
	run("sleep 0.1 & exit 0")
	time.Sleep(500 * time.Millisecond)
	if z := run("grep -l '^State:.*Z' /proc/[0-9]*/status || true"); z != "" {
		t.Errorf("zombies left: %s", z)
	}

	if err := c.Shutdown(ctx, agentapi.ShutdownRequest{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-exited:
		// reboot(POWER_OFF) in a PID namespace kills its init with
		// SIGINT; unshare reports that as its own exit status.
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Errorf("agent namespace ended with %v", err)
		}
		if !strings.Contains(logs.String(), "shutting down") {
			t.Errorf("no shutdown in the agent log")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent still running 20s after shutdown")
	}
}

// noDebianBase skips t, or fails it under THAW_REQUIRE_KVM=1 (CI), where
// scripts/setup has built the Debian base and a missing one is a bug.
func noDebianBase(t *testing.T) {
	t.Helper()
	testenv.Missing(t, "no cached Debian base tarball: run guest/rootfs/debian.sh (scripts/setup does, as root)")
}
