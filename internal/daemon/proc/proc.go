// Package proc identifies processes across a thawd restart. A pid alone is
// not an identity (pids are reused), so thawd records a shim's pid together
// with its start time from /proc/<pid>/stat and later asks whether that same
// process still lives (proc(5)).
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
)

// Stat is the part of /proc/<pid>/stat thawd uses.
type Stat struct {
	PID int
	// Comm is the executable name, as the kernel truncates it (15 bytes).
	Comm string
	// State is the one-letter process state: R, S, D, Z (zombie), T, ...
	State byte
	// PPID is the parent's pid (field 4), PGID the process group (field
	// 5).
	PPID, PGID int
	// StartTime is when the process started, in clock ticks after boot
	// (field 22). With PID it identifies a process for the life of the
	// boot.
	StartTime uint64
}

// ErrGone means the process does not exist (any more).
var ErrGone = errors.New("process gone")

// ReadStat reads /proc/<pid>/stat. A missing process gives an error
// wrapping ErrGone.
func ReadStat(pid int) (Stat, error) {
	if pid <= 0 {
		return Stat{}, fmt.Errorf("reading stat of pid %d: invalid pid", pid)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return Stat{}, fmt.Errorf("reading stat of pid %d: %w", pid, ErrGone)
	}
	if err != nil {
		return Stat{}, fmt.Errorf("reading stat of pid %d: %w", pid, err)
	}
	st, err := ParseStat(data)
	if err != nil {
		return Stat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	if st.PID != pid {
		return Stat{}, fmt.Errorf("pid %d: stat names pid %d", pid, st.PID)
	}
	return st, nil
}

// ParseStat parses the contents of a /proc/<pid>/stat file. The command name
// is in parentheses and may itself contain spaces and parentheses, so it
// ends at the last ')'.
func ParseStat(data []byte) (Stat, error) {
	open := bytes.IndexByte(data, '(')
	closing := bytes.LastIndexByte(data, ')')
	if open < 1 || closing < open {
		return Stat{}, fmt.Errorf("parsing stat %.40q: no (comm)", data)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil || pid <= 0 {
		return Stat{}, fmt.Errorf("parsing stat %.40q: bad pid", data)
	}
	// Fields after comm, counting from 3 (state).
	rest := bytes.Fields(data[closing+1:])
	const startField = 22
	if len(rest) < startField-2 {
		return Stat{}, fmt.Errorf("parsing stat %.40q: %d fields after comm, want at least %d", data, len(rest), startField-2)
	}
	if len(rest[0]) != 1 || !isLetter(rest[0][0]) {
		return Stat{}, fmt.Errorf("parsing stat %.40q: bad state %q", data, rest[0])
	}
	ids := [2]int{}
	for i, what := range []string{"parent pid", "process group"} {
		n, err := strconv.Atoi(string(rest[1+i]))
		if err != nil || n < 0 {
			return Stat{}, fmt.Errorf("parsing stat %.40q: bad %s %q", data, what, rest[1+i])
		}
		ids[i] = n
	}
	start, err := strconv.ParseUint(string(rest[startField-3]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("parsing stat %.40q: bad start time %q", data, rest[startField-3])
	}
	return Stat{PID: pid, Comm: string(data[open+1 : closing]), State: rest[0][0], PPID: ids[0], PGID: ids[1], StartTime: start}, nil
}

// Alive reports whether the process with the given pid and start time still
// runs: it exists, started at that time (so the pid was not reused) and is
// not a zombie. Errors other than "gone" are returned.
func Alive(pid int, startTime uint64) (bool, error) {
	st, err := ReadStat(pid)
	if errors.Is(err, ErrGone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return st.StartTime == startTime && st.State != 'Z' && st.State != 'X', nil
}

func isLetter(b byte) bool { return 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' }
