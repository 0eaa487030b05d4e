// Package procstat reads what processes and their threads cost the host
// from /proc (proc(5)): on-CPU time per thread (schedstat, nanoseconds),
// what each thread is blocked in (wchan), and memory per mapping (smaps),
// with proportional set sizes so that pages shared between processes are
// split between them. thawd's density benchmarks use it to split the
// cost of a sandbox between thawd, its shim, the VMM's own threads and
// its vCPU threads, and guest memory from process overhead.
package procstat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrGone means the process or thread does not exist (any more).
var ErrGone = errors.New("process gone")

// Thread is one thread of a process.
type Thread struct {
	TID int
	// Comm is the thread's name (/proc/<pid>/task/<tid>/comm).
	Comm string
	// CPU is the time the thread has run on a CPU (the first field of
	// schedstat), user and system together.
	CPU time.Duration
	// Wchan is the kernel function the thread sleeps in, "" when running
	// or when the kernel does not say. A vCPU halted in KVM shows
	// "kvm_vcpu_block".
	Wchan string
}

// Threads lists the live threads of pid. Threads that exited are not
// listed, and their CPU time is not in the result: for processes whose
// threads live as long as the process (Go programs, VMMs) that loses
// nothing.
func Threads(pid int) ([]Thread, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing threads of pid %d: %w", pid, ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("listing threads of pid %d: %w", pid, err)
	}
	var out []Thread
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t, err := readThread(filepath.Join(dir, e.Name()), tid)
		if errors.Is(err, fs.ErrNotExist) {
			continue // exited since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("listing threads of pid %d: %w", pid, ErrGone)
	}
	return out, nil
}

func readThread(dir string, tid int) (Thread, error) {
	t := Thread{TID: tid}
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if err != nil {
		return t, err
	}
	t.Comm = strings.TrimSuffix(string(comm), "\n")
	ss, err := os.ReadFile(filepath.Join(dir, "schedstat"))
	if err != nil {
		return t, err
	}
	if t.CPU, err = ParseSchedstat(ss); err != nil {
		return t, fmt.Errorf("thread %d: %w", tid, err)
	}
	wchan, err := os.ReadFile(filepath.Join(dir, "wchan"))
	if err != nil {
		return t, err
	}
	if w := string(wchan); w != "0" {
		t.Wchan = w
	}
	return t, nil
}

// ParseSchedstat parses a schedstat file ("<on-cpu ns> <wait ns>
// <timeslices>") and returns the on-CPU time.
func ParseSchedstat(data []byte) (time.Duration, error) {
	f := bytes.Fields(data)
	if len(f) != 3 {
		return 0, fmt.Errorf("schedstat: got %d fields, want 3", len(f))
	}
	ns, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil || ns < 0 {
		return 0, fmt.Errorf("schedstat: bad on-CPU time %q", f[0])
	}
	return time.Duration(ns), nil
}

// CPU sums the CPU time of threads.
func CPU(threads []Thread) time.Duration {
	var d time.Duration
	for _, t := range threads {
		d += t.CPU
	}
	return d
}

// Mapping is one entry of /proc/<pid>/smaps. Sizes are in bytes.
type Mapping struct {
	Start, End uint64
	// Perms are the permissions as smaps prints them: "r-xp", "rw-p",
	// "rw-s" (the last letter: private or shared).
	Perms string
	// Path is the mapped file, a bracketed pseudo-name ("[heap]",
	// "[stack]") or "" for anonymous memory. Runs of spaces inside a
	// file name read as one space (smaps pads the column with spaces).
	Path      string
	Rss, Pss  uint64
	Anonymous uint64
	// Flags are the VmFlags two-letter codes ("rd", "wr", "um": missing
	// faults go to a userfaultfd, ...).
	Flags []string
}

// Size is the mapping's virtual size.
func (m Mapping) Size() uint64 { return m.End - m.Start }

// HasFlag reports whether the mapping has the VmFlags code f.
func (m Mapping) HasFlag(f string) bool {
	for _, g := range m.Flags {
		if g == f {
			return true
		}
	}
	return false
}

// Smaps reads the mappings of pid.
func Smaps(pid int) ([]Mapping, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading smaps of pid %d: %w", pid, ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("reading smaps of pid %d: %w", pid, err)
	}
	m, err := ParseSmaps(data)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return m, nil
}

// ParseSmaps parses the contents of a smaps file: a header line per
// mapping ("start-end perms offset dev inode [path]") followed by
// "Key: value [kB]" lines. Keys it does not use are skipped; a malformed
// header or value is an error.
func ParseSmaps(data []byte) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" {
			continue
		}
		key, val, isField := strings.Cut(text, ":")
		if isField && !strings.Contains(key, " ") && !strings.Contains(key, "-") {
			if len(out) == 0 {
				return nil, fmt.Errorf("smaps line %d: field %q before any mapping", line, key)
			}
			m := &out[len(out)-1]
			if key == "VmFlags" {
				m.Flags = strings.Fields(val)
				continue
			}
			var dst *uint64
			switch key {
			case "Rss":
				dst = &m.Rss
			case "Pss":
				dst = &m.Pss
			case "Anonymous":
				dst = &m.Anonymous
			default:
				continue
			}
			v, err := parseKB(val)
			if err != nil {
				return nil, fmt.Errorf("smaps line %d: %s: %w", line, key, err)
			}
			*dst = v
			continue
		}
		m, err := parseHeader(text)
		if err != nil {
			return nil, fmt.Errorf("smaps line %d: %w", line, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("smaps: %w", err)
	}
	return out, nil
}

func parseHeader(text string) (Mapping, error) {
	f := strings.Fields(text)
	if len(f) < 5 {
		return Mapping{}, fmt.Errorf("mapping header %q: got %d fields, want at least 5", text, len(f))
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, fmt.Errorf("mapping header %q: no address range", text)
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return Mapping{}, fmt.Errorf("mapping header %q: bad address range", text)
	}
	if !validPerms(f[1]) {
		return Mapping{}, fmt.Errorf("mapping header %q: permissions %q, want four letters like \"r-xp\"", text, f[1])
	}
	m := Mapping{Start: start, End: end, Perms: f[1]}
	if len(f) > 5 {
		// The path is the rest of the line; it may contain spaces.
		m.Path = strings.Join(f[5:], " ")
	}
	return m, nil
}

func validPerms(p string) bool {
	return len(p) == 4 && (p[0] == 'r' || p[0] == '-') && (p[1] == 'w' || p[1] == '-') &&
		(p[2] == 'x' || p[2] == '-') && (p[3] == 'p' || p[3] == 's')
}

func parseKB(val string) (uint64, error) {
	f := strings.Fields(val)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("value %q: want \"<n> kB\"", strings.TrimSpace(val))
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || n > 1<<44 {
		return 0, fmt.Errorf("value %q: bad number", f[0])
	}
	return n << 10, nil
}

// VCPUThreadPrefix starts the name of every vCPU thread of Firecracker
// and of thaw-vmm ("fc_vcpu 0", "fc_vcpu 1", ...).
const VCPUThreadPrefix = "fc_vcpu "

// IsVCPU reports whether t is a VMM's vCPU thread.
func (t Thread) IsVCPU() bool { return strings.HasPrefix(t.Comm, VCPUThreadPrefix) }

// InKVMBlock reports whether t sleeps in KVM waiting for its vCPU to
// become runnable: a halted vCPU, or an application processor that has
// not been started.
func (t Thread) InKVMBlock() bool { return t.Wchan == "kvm_vcpu_block" }

// VCPUsIdle reports how many of pid's vCPU threads there are and how many
// of them sleep in KVM.
func VCPUsIdle(pid int) (vcpus, idle int, err error) {
	ts, err := Threads(pid)
	if err != nil {
		return 0, 0, err
	}
	for _, t := range ts {
		if t.IsVCPU() {
			vcpus++
			if t.InKVMBlock() {
				idle++
			}
		}
	}
	return vcpus, idle, nil
}

// Split is a process's memory by kind, in bytes of PSS, read from its
// mappings: what a sandbox's shim or VMM costs and why.
type Split struct {
	// Binary is the executable's text and read-only data: shared by
	// every process running it, so it shrinks as more run.
	Binary uint64
	// Data is the executable's writable data: the pages written since
	// exec (copied on write, so private).
	Data uint64
	// BSS is the anonymous mapping right after the executable's data:
	// its zero-initialised globals (a Go runtime's heap bookkeeping).
	BSS uint64
	// Anon is every other private anonymous mapping not registered with
	// a userfaultfd, and the brk heap: for a Go program, its heap arenas
	// (objects and every goroutine's and thread's stack) and the
	// runtime's metadata.
	Anon uint64
	// Stack is the main thread's stack.
	Stack uint64
	// UFFD is memory in mappings registered with a userfaultfd for
	// missing faults (VmFlags "um"): a VMM's guest memory.
	UFFD uint64
	// Other is everything else: other files, shared mappings, the vDSO.
	Other uint64
}

// Exe returns the path of pid's executable, as its mappings name it.
func Exe(pid int) (string, error) {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading the executable of pid %d: %w", pid, ErrGone)
	}
	if err != nil {
		return "", fmt.Errorf("reading the executable of pid %d: %w", pid, err)
	}
	return p, nil
}

// SplitMappings sorts maps (one process's, as Smaps returns them, in
// address order) by kind. exe is the path of the process's executable as
// its mappings name it (the target of /proc/<pid>/exe).
func SplitMappings(maps []Mapping, exe string) Split {
	var s Split
	var dataEnd uint64 // end of the executable's last writable mapping
	for _, m := range maps {
		switch {
		case m.Path == exe && exe != "" && m.Perms[1] == 'w':
			s.Data += m.Pss
			dataEnd = m.End
		case m.Path == exe && exe != "":
			s.Binary += m.Pss
		case m.HasFlag("um"):
			s.UFFD += m.Pss
		case m.Path == "" && m.Start == dataEnd && dataEnd != 0:
			s.BSS += m.Pss
		case (m.Path == "" || m.Path == "[heap]") && m.Perms[3] == 'p':
			s.Anon += m.Pss
		case m.Path == "[stack]":
			s.Stack += m.Pss
		default:
			s.Other += m.Pss
		}
	}
	return s
}

// Add returns the sum of s and t.
func (s Split) Add(t Split) Split {
	return Split{Binary: s.Binary + t.Binary, Data: s.Data + t.Data, BSS: s.BSS + t.BSS, Anon: s.Anon + t.Anon,
		Stack: s.Stack + t.Stack, UFFD: s.UFFD + t.UFFD, Other: s.Other + t.Other}
}
