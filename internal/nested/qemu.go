package nested

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// resultsSize is the results disk's size; it is sparse, so only what the
// payload writes takes space on the host.
const resultsSize = 4 << 30

// markPrefix starts the init's progress lines on the serial console.
const markPrefix = "thaw-nested-mark "

// mark is one progress line from the L1 init.
type mark struct {
	name, arg string
	at        time.Time
}

// parseMark finds a marker in a console line. Kernel messages can land on
// the same line, so the marker may start anywhere in it.
func parseMark(line string) (name, arg string, ok bool) {
	i := strings.Index(line, markPrefix)
	if i < 0 {
		return "", "", false
	}
	rest := strings.TrimSpace(line[i+len(markPrefix):])
	name, arg, _ = strings.Cut(rest, " ")
	return name, arg, name != ""
}

type bootSpec struct {
	kernel, initrd, payload string
	dir                     string // this attempt's directory
	timeouts                Timeouts
}

// qemuArgs is the measured recipe: TCG with several threads (thread=single
// hangs), an EPYC CPU for SVM with XSAVE, without 1 GiB pages (they make
// larger L2 guests triple-fault), no default devices, no reboot.
func (h *Harness) qemuArgs(s bootSpec, results string) []string {
	cmdline := "console=ttyS0 panic=-1 mitigations=off" // full kernel log: it costs nothing measurable
	if h.cfg.Shell {
		cmdline += " thaw_shell=1"
	}
	if !h.cfg.NestedPaging {
		cmdline += " thaw_npt=0" // the init loads kvm_amd with npt=0
	}
	return []string{
		"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "EPYC,-pdpe1gb",
		"-smp", strconv.Itoa(h.cfg.CPUs), "-m", strconv.Itoa(h.cfg.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-kernel", s.kernel, "-initrd", s.initrd, "-append", cmdline,
		"-drive", "file=" + s.payload + ",if=none,id=payload,format=raw,readonly=on",
		"-device", "virtio-blk-pci,drive=payload,serial=" + payloadSerial,
		"-drive", "file=" + results + ",if=none,id=results,format=raw",
		"-device", "virtio-blk-pci,drive=results,serial=" + resultsSerial,
	}
}

// boot runs L1 once: QEMU until it exits or a step times out.
func (h *Harness) boot(ctx context.Context, s bootSpec) (*Result, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, err
	}
	results := filepath.Join(s.dir, "results.img")
	if err := makeExt4(ctx, results, "", resultsSize); err != nil {
		return nil, fmt.Errorf("building the results disk: %w", err)
	}
	serialPath := filepath.Join(s.dir, "serial.log")
	serial, err := os.Create(serialPath)
	if err != nil {
		return nil, fmt.Errorf("creating serial log: %w", err)
	}
	defer serial.Close()

	cmd := exec.Command(h.cfg.QEMU, h.qemuArgs(s, results)...)
	// QEMU dies with us: a test binary killed by go test's timeout must not
	// leave an L1 spinning on a shared machine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if h.cfg.Shell {
		cmd.Stdin = os.Stdin
	}
	cmd.Stderr = serial // QEMU's own complaints land in the log too
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	h.log.Info("booting L1", "serial", serialPath)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", h.cfg.QEMU, err)
	}
	marks := make(chan mark, 16)
	exited := make(chan error, 1)
	go func() {
		var out io.Writer = serial
		if h.cfg.Console != nil {
			out = io.MultiWriter(serial, h.cfg.Console)
		}
		watchConsole(stdout, out, marks)
		exited <- cmd.Wait()
	}()
	// stop kills QEMU and waits for it, draining the markers.
	stop := func() {
		cmd.Process.Kill()
		for {
			select {
			case <-marks:
			case <-exited:
				return
			}
		}
	}

	p := newProgress(s.timeouts, h.cfg.Shell, start)
	p.wantPaging = h.cfg.paging()
	p.r.Serial = serialPath
	defer p.timer.Stop()
	for {
		select {
		case m := <-marks:
			switch m.name {
			case "kvm-ready":
				h.log.Info("L1 /dev/kvm ready", "after", m.at.Sub(start).Round(time.Millisecond))
			case "paging":
				h.log.Info("L1 KVM paging mode", "paging", m.arg)
			}
			if err := p.handle(m); err != nil {
				stop()
				return nil, err
			}
		case <-p.timer.C:
			stop()
			return nil, &HangError{Step: p.step, Timeout: p.timeout, Serial: serialPath, Tail: tailLines(serialPath, 30)}
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case werr := <-exited:
			// The console's last markers may still be queued behind the exit.
			for len(marks) > 0 {
				if err := p.handle(<-marks); err != nil {
					return nil, err
				}
			}
			if err := p.exitErr(werr); err != nil {
				return nil, fmt.Errorf("%w; serial log %s ends:\n%s", err, serialPath, strings.Join(tailLines(serialPath, 30), "\n"))
			}
			return h.collect(ctx, p.r, results, s.dir)
		}
	}
}

// progress follows an L1 run through its steps by the init's markers and
// keeps the timer of the current step.
type progress struct {
	timeouts     Timeouts
	shell        bool // no timeouts once someone has a shell in L1
	start        time.Time
	step         string
	timeout      time.Duration
	timer        *time.Timer
	payloadStart time.Time
	wantPaging   string // the paging mode L1 must report; "" takes any
	initErr      string // the init's "error" marker
	done         bool   // the init's last marker: results are on disk
	r            *Result
}

func newProgress(t Timeouts, shell bool, start time.Time) *progress {
	return &progress{
		timeouts: t, shell: shell, start: start,
		step: StepBoot, timeout: t.Boot, timer: time.NewTimer(t.Boot),
		r: &Result{Nested: true, ExitCode: -1},
	}
}

func (p *progress) next(step string, d time.Duration) {
	p.step, p.timeout = step, d
	p.timer.Reset(d)
}

// handle advances on one marker.
func (p *progress) handle(m mark) error {
	switch m.name {
	case "init":
		p.next(StepSetup, p.timeouts.Setup)
	case "kvm-ready":
		p.r.KVMReady = m.at.Sub(p.start)
	case "paging":
		if p.wantPaging != "" && m.arg != p.wantPaging {
			return fmt.Errorf("L1's KVM uses %s paging, want %s: the L1 init did not load kvm_amd as asked (Config.NestedPaging)", m.arg, p.wantPaging)
		}
		p.r.Paging = m.arg
	case "payload-start":
		p.payloadStart = m.at
		p.next(StepPayload, p.timeouts.Payload)
	case "payload-exit":
		code, err := strconv.Atoi(m.arg)
		if err != nil {
			return fmt.Errorf("L1 reported payload exit %q: not a number", m.arg)
		}
		p.r.ExitCode, p.r.Run = code, m.at.Sub(p.payloadStart)
		p.next(StepShutdown, p.timeouts.Shutdown)
		if p.shell {
			p.timer.Stop() // the person at the shell takes their time
		}
	case "error":
		p.initErr = m.arg
		if p.shell {
			p.timer.Stop()
		}
	case "done":
		p.done = true
	}
	return nil
}

// exitErr says what went wrong when QEMU exited with werr, or nil when L1
// finished its run.
func (p *progress) exitErr(werr error) error {
	switch {
	case p.initErr != "":
		return fmt.Errorf("L1 init failed in step %q: %s", p.step, p.initErr)
	case !p.done:
		return &CrashError{Step: p.step, Err: werr}
	case werr != nil:
		return fmt.Errorf("QEMU exited with %w after the payload finished", werr)
	}
	return nil
}

// collect reads the payload's output and files from the results disk.
func (h *Harness) collect(ctx context.Context, r *Result, img, dir string) (*Result, error) {
	dest := filepath.Join(dir, "results")
	if err := readResults(ctx, img, dest); err != nil {
		return nil, err
	}
	out, err := os.ReadFile(filepath.Join(dest, "harness", "output"))
	if err != nil {
		return nil, fmt.Errorf("reading the payload's output from the results disk: %w", err)
	}
	r.Output = out
	r.Files = filepath.Join(dest, "out")
	return r, nil
}

// watchConsole copies QEMU's serial output to out as it comes (a shell
// prompt has no newline) and sends each marker line on marks.
func watchConsole(r io.Reader, out io.Writer, marks chan<- mark) {
	var line []byte
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out.Write(buf[:n])
			line = append(line, buf[:n]...)
			for {
				i := bytes.IndexByte(line, '\n')
				if i < 0 {
					break
				}
				if name, arg, ok := parseMark(strings.TrimRight(string(line[:i]), "\r")); ok {
					marks <- mark{name: name, arg: arg, at: time.Now()}
				}
				line = line[i+1:]
			}
		}
		if err != nil {
			return
		}
	}
}

// tailLines returns the last n lines of the file at path.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("(cannot read %s: %v)", path, err)}
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, strings.TrimRight(sc.Text(), "\r"))
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}
