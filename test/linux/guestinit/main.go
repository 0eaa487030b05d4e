// Command guestinit is PID 1 of test/linux's Linux guest: a static Go init
// in an initramfs that prints what the host-side driver waits for on the
// serial console.
//
// It mounts /proc and /dev, prints
//
//	thaw-guestinit: ready uptime=<seconds>
//
// and then does what thaw.then= on the kernel command line asks:
//
//   - reboot: sync and reboot at once (with reboot=k the VMM sees an i8042
//     reset and exits);
//   - tick: start a child process that prints
//     "thaw-guestinit: tick <n> mono=<ns> real=<ns>" every 100 ms from a
//     timer, then read lines from the console and reboot on "reboot".
//
// The ticker is a separate process with its own timer so that a restored
// snapshot shows both processes and timers continuing.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const tickEvery = 100 * time.Millisecond

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-ticker" {
		ticker()
		return
	}
	if err := run(); err != nil {
		fmt.Printf("thaw-guestinit: error: %v\n", err)
	}
	// PID 1 must not exit (the kernel panics); reboot instead.
	reboot()
}

func run() error {
	if err := mount("proc", "/proc", "proc"); err != nil {
		return err
	}
	if err := mount("devtmpfs", "/dev", "devtmpfs"); err != nil {
		return err
	}
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return fmt.Errorf("reading /proc/uptime: %w", err)
	}
	fmt.Printf("thaw-guestinit: ready uptime=%s\n", strings.Fields(string(up))[0])
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading /proc/cmdline: %w", err)
	}
	then := param(string(cmdline), "thaw.then")
	switch then {
	case "reboot":
		return nil
	case "tick":
		t := exec.Command("/proc/self/exe", "-ticker")
		t.Stdout, t.Stderr = os.Stdout, os.Stderr
		if err := t.Start(); err != nil {
			return fmt.Errorf("starting the ticker: %w", err)
		}
		fmt.Printf("thaw-guestinit: ticker pid %d\n", t.Process.Pid)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "reboot" {
				fmt.Println("thaw-guestinit: rebooting on request")
				return nil
			}
		}
		return fmt.Errorf("console input ended: %v", sc.Err())
	default:
		return fmt.Errorf("thaw.then=%q on the kernel command line: want reboot or tick", then)
	}
}

// ticker prints a numbered tick with both clocks from a timer, forever.
func ticker() {
	t := time.NewTicker(tickEvery)
	for n := 1; ; n++ {
		<-t.C
		var mono, real unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
		unix.ClockGettime(unix.CLOCK_REALTIME, &real)
		fmt.Printf("thaw-guestinit: tick %d mono=%d real=%d\n", n, mono.Nano(), real.Nano())
	}
}

func mount(src, dst, fstype string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, fstype, 0, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting %s on %s: %w", fstype, dst, err)
	}
	return nil
}

// param returns the value of key=value on the kernel command line.
func param(cmdline, key string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func reboot() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Printf("thaw-guestinit: reboot: %v\n", err)
	}
	select {}
}
