package uffdtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/uffd"
)

// MaybeRunVMM runs the fake VMM and exits when Env is set; otherwise it
// returns at once. Call it first in TestMain or main.
func MaybeRunVMM() {
	v, ok := os.LookupEnv(Env)
	if !ok {
		return
	}
	var spec Spec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "fake VMM: decoding %s: %v\n", Env, err)
		os.Exit(2)
	}
	res, err := runVMM(&spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake VMM: %v\n", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

// sink keeps the touching loads observable.
var sink atomic.Uint64

// guest is the fake VMM's memory: region i of the spec lives at mem[i].
type guest struct {
	file []byte   // the memory file, mapped read-only
	mem  [][]byte // guest regions
	lay  []Layout
}

// page is a page to touch: region and offset within it.
type page struct {
	r   int
	off uint64
}

func runVMM(spec *Spec) (*Result, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), spec.Threads+2))
	f, err := os.Open(spec.MemFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// The copy to check against is populated up front so that checking
	// costs the toucher no page faults of its own; in Direct mode the
	// "guest" is a second, fresh mapping that faults like a plain
	// MAP_PRIVATE restore would.
	file, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mapping memory file: %w", err)
	}
	g := &guest{file: file, lay: spec.Regions}
	var uffdFile *os.File
	if spec.Direct {
		direct, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
		if err != nil {
			return nil, fmt.Errorf("mapping memory file: %w", err)
		}
		for _, l := range spec.Regions {
			if l.Offset+l.Size > uint64(len(direct)) {
				return nil, fmt.Errorf("region %+v past the memory file", l)
			}
			g.mem = append(g.mem, direct[l.Offset:l.Offset+l.Size])
		}
	} else {
		regions, err := g.mapRegions()
		if err != nil {
			return nil, err
		}
		uffdFile, err = uffd.Register(regions)
		if err != nil {
			return nil, err
		}
		defer uffdFile.Close() // held for the life of the "VM", as Firecracker does
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sent := regions
		if spec.OmitLastRegion && len(sent) > 1 {
			sent = sent[:len(sent)-1]
		}
		err = uffd.SendHandshakeTo(ctx, spec.Socket, sent, uffdFile)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if spec.WaitStart {
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return nil, fmt.Errorf("waiting for the start signal: %w", err)
		}
	}
	work, err := g.plan(spec)
	if err != nil {
		return nil, err
	}
	res := &Result{PID: os.Getpid()}
	var lats [][]time.Duration
	if spec.Latencies {
		lats = make([][]time.Duration, len(work))
	}
	var touches, verified, bad atomic.Uint64
	var firstBad atomic.Pointer[string]
	var wg sync.WaitGroup
	var removeErr error
	start := time.Now()
	if spec.RemoveDuring > 0 {
		wg.Go(func() {
			runtime.LockOSThread()
			removeErr = g.removeConcurrently(spec.RemoveDuring, res)
		})
	}
	for t := range work {
		wg.Go(func() {
			runtime.LockOSThread()
			var mine []time.Duration
			if lats != nil {
				mine = make([]time.Duration, 0, len(work[t]))
			}
			// Counted per thread and added once: shared counters would
			// make the threads contend on one cache line per touch.
			var sum, n, nbad uint64
			defer func() {
				sink.Add(sum)
				touches.Add(n)
				verified.Add(n * 4096)
				bad.Add(nbad)
			}()
			for _, p := range work[t] {
				t0 := time.Now()
				sum += uint64(touch(g.mem[p.r], p.off))
				if lats != nil {
					mine = append(mine, time.Since(t0))
				}
				if spec.Writes {
					g.mem[p.r][p.off+17] = ^g.fileByte(p, 17)
				}
				if msg := g.check(p, spec.Writes); msg != "" {
					nbad++
					firstBad.CompareAndSwap(nil, &msg)
				}
				n++
			}
			if lats != nil {
				lats[t] = mine
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	if removeErr != nil {
		return nil, removeErr
	}
	res.Touches, res.Verified, res.Mismatches = touches.Load(), verified.Load(), bad.Load()
	if p := firstBad.Load(); p != nil {
		res.FirstBad = *p
	}
	if lats != nil {
		all := slices.Concat(lats...)
		slices.Sort(all)
		if n := len(all); n > 0 {
			res.P50, res.P99, res.Max = all[n/2], all[min(n-1, n*99/100)], all[n-1]
		}
	}
	if spec.RemoveBytes > 0 {
		if err := g.removeAndCheck(spec.RemoveBytes, res); err != nil {
			return nil, err
		}
	}
	if spec.Hang {
		for { // until killed; sleeping, so the runtime sees no deadlock
			time.Sleep(time.Hour)
		}
	}
	runtime.KeepAlive(uffdFile)
	return res, nil
}

// plan deals the pages to touch out to the threads.
func (g *guest) plan(spec *Spec) ([][]page, error) {
	var all []page
	switch spec.Pattern {
	case List:
		f, err := os.Open(spec.List)
		if err != nil {
			return nil, err
		}
		l, err := uffd.ReadAccessLog(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, off := range l.Offsets {
			p, ok := g.pageAt(off)
			if !ok {
				return nil, fmt.Errorf("listed offset %#x is in no region", off)
			}
			all = append(all, p)
		}
	default:
		order := slices.Clone(g.lay)
		slices.SortFunc(order, func(a, b Layout) int { return int(a.Offset>>12) - int(b.Offset>>12) })
		for _, l := range order {
			r := slices.Index(g.lay, l)
			for off := uint64(0); off < l.Size; off += 4096 {
				all = append(all, page{r, off})
			}
		}
	}
	if spec.RemoveDuring > 0 {
		lo, hi := g.removeZone()
		all = slices.DeleteFunc(all, func(p page) bool { return p.r == 0 && p.off >= lo && p.off < hi })
	}
	work := make([][]page, spec.Threads)
	switch spec.Pattern {
	case Same:
		for t := range work {
			work[t] = all
		}
		return work, nil
	case Random:
		rng := rand.New(rand.NewPCG(spec.Seed, 1))
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	}
	for i, p := range all {
		work[i%spec.Threads] = append(work[i%spec.Threads], p)
	}
	return work, nil
}

func (g *guest) pageAt(off uint64) (page, bool) {
	for r, l := range g.lay {
		if off >= l.Offset && off < l.Offset+l.Size {
			return page{r, (off - l.Offset) &^ 4095}, true
		}
	}
	return page{}, false
}

func (g *guest) fileByte(p page, i uint64) byte { return g.file[g.lay[p.r].Offset+p.off+i] }

// check compares the page with the memory file and describes a mismatch.
func (g *guest) check(p page, wrote bool) string {
	got := g.mem[p.r][p.off : p.off+4096]
	want := g.file[g.lay[p.r].Offset+p.off:][:4096]
	if wrote {
		if got[17] != ^want[17] {
			return fmt.Sprintf("region %d offset %#x: written byte lost", p.r, p.off)
		}
		if bytes.Equal(got[:17], want[:17]) && bytes.Equal(got[18:], want[18:]) {
			return ""
		}
	} else if bytes.Equal(got, want) {
		return ""
	}
	return fmt.Sprintf("region %d offset %#x (file offset %#x): bytes differ from the memory file (first 16: got %x, want %x)",
		p.r, p.off, g.lay[p.r].Offset+p.off, got[:16], want[:16])
}

// removeAndCheck discards n bytes in the middle of region 0, which makes
// the kernel send a REMOVE event and block until the page server reads it,
// then checks that the range reads back as zeros and that the rest of the
// region still matches the file.
func (g *guest) removeAndCheck(n uint64, res *Result) error {
	mem := g.mem[0]
	n = min(n, uint64(len(mem))/2) &^ 4095
	lo := (uint64(len(mem)) / 4) &^ 4095
	if err := unix.Madvise(mem[lo:lo+n], unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("madvise(MADV_DONTNEED): %w", err)
	}
	for i, b := range mem[lo : lo+n] {
		if b != 0 {
			return fmt.Errorf("removed byte at region 0 offset %#x reads %#x, want 0", lo+uint64(i), b)
		}
	}
	for off := uint64(0); off < uint64(len(mem)); off += 4096 {
		if off >= lo && off < lo+n {
			continue
		}
		// Byte 17 may have been written by the touch phase.
		got, want := mem[off:off+4096], g.file[g.lay[0].Offset+off:][:4096]
		if !bytes.Equal(got[:17], want[:17]) || !bytes.Equal(got[18:], want[18:]) {
			return fmt.Errorf("after remove: region 0 offset %#x differs from the memory file", off)
		}
	}
	res.Removed = n
	return nil
}

// removeZone is the last quarter of region 0, 64 KiB aligned.
func (g *guest) removeZone() (lo, hi uint64) {
	n := uint64(len(g.mem[0]))
	return (n - n/4) &^ (64<<10 - 1), n
}

// removeConcurrently discards chunks of the remove zone one by one, then
// checks that they read back as zeros (they were unregistered).
func (g *guest) removeConcurrently(chunks int, res *Result) error {
	lo, hi := g.removeZone()
	mem := g.mem[0]
	var removed uint64
	for i := range chunks {
		a := lo + uint64(i)*(64<<10)
		if a+64<<10 > hi {
			break
		}
		if err := unix.Madvise(mem[a:a+64<<10], unix.MADV_DONTNEED); err != nil {
			return fmt.Errorf("madvise(MADV_DONTNEED) at %#x: %w", a, err)
		}
		removed += 64 << 10
	}
	for i, b := range mem[lo : lo+removed] {
		if b != 0 {
			return fmt.Errorf("removed byte at region 0 offset %#x reads %#x, want 0", lo+uint64(i), b)
		}
	}
	res.Removed = removed
	return nil
}
