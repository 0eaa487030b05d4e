package uffdtest

import (
	"fmt"
	"time"
)

// Env is the environment variable that turns a re-executed binary into a
// fake VMM; its value is the JSON Spec.
const Env = "THAW_UFFDTEST_VMM"

// Touch patterns.
const (
	// Disjoint: thread i touches pages i, i+T, i+2T, ... in file order.
	Disjoint = "disjoint"
	// Same: every thread touches every page in the same order, racing on
	// each page (the EEXIST path).
	Same = "same"
	// Random: the pages are shuffled and dealt out to the threads.
	Random = "random"
	// List: the pages of the access log at Spec.List, in order, dealt out
	// to the threads.
	List = "list"
)

// Layout places one guest region in the memory file.
type Layout struct {
	Offset, Size uint64
}

// Spec tells the fake VMM what to do.
type Spec struct {
	Socket  string   // page server socket
	MemFile string   // memory file, to check every byte against
	Regions []Layout // guest regions; the child leaves an unmapped hole between them and maps them in reverse file order
	Threads int      // vCPU-like threads touching memory
	Pattern string   // Disjoint, Same, Random or List
	List    string   // access log whose pages the List pattern touches
	Writes  bool     // write a byte into each page touched (Disjoint, Random, List)
	// RemoveBytes > 0: after touching, MADV_DONTNEED this many bytes in the
	// middle of region 0 and check that they read back as zeros.
	RemoveBytes uint64
	// RemoveDuring > 0: while the threads touch memory, one more thread
	// discards this many 64 KiB chunks (MADV_DONTNEED) in the last quarter
	// of region 0, which the touching threads skip; each discard is a
	// REMOVE event racing the faults (the EAGAIN path). The chunks must read
	// back as zeros.
	RemoveDuring int
	// WaitStart: after the handshake, wait for a line on stdin.
	WaitStart bool
	// Hang: after touching, block until killed.
	Hang bool
	// Direct maps the memory file MAP_PRIVATE instead of using a page
	// server (the warm page cache baseline); Socket is ignored.
	Direct bool
	// Latencies: time every first touch of a page.
	Latencies bool
	// OmitLastRegion registers every region but leaves the last out of the
	// handshake, as a VMM and handshake that disagree would.
	OmitLastRegion bool
	// Seed for the Random pattern.
	Seed uint64
}

func (s *Spec) validate() error {
	switch {
	case s.MemFile == "":
		return fmt.Errorf("spec: no memory file")
	case len(s.Regions) == 0:
		return fmt.Errorf("spec: no regions")
	case s.Threads < 1 || s.Threads > 256:
		return fmt.Errorf("spec: %d threads, want 1 to 256", s.Threads)
	case s.Socket == "" && !s.Direct:
		return fmt.Errorf("spec: no socket")
	}
	switch s.Pattern {
	case Disjoint, Random:
	case Same:
		if s.Writes {
			return fmt.Errorf("spec: writes with the Same pattern would race")
		}
	case List:
		if s.List == "" {
			return fmt.Errorf("spec: List pattern without a list")
		}
	default:
		return fmt.Errorf("spec: unknown pattern %q", s.Pattern)
	}
	return nil
}

// Result is what the fake VMM reports.
type Result struct {
	PID        int
	Touches    uint64        // page touches
	Verified   uint64        // bytes compared with the memory file
	Mismatches uint64        // pages whose bytes differed
	FirstBad   string        // description of the first mismatch
	Removed    uint64        // bytes removed and checked zero
	Elapsed    time.Duration // from the start of touching to the last thread's end
	P50, P99   time.Duration // first-touch latency quantiles (Latencies)
	Max        time.Duration
}
