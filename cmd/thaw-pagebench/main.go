// Command thaw-pagebench exercises Thaw's userfaultfd page server
// (internal/uffd) without a VM: a second process plays the VMM, sends the
// Firecracker handshake and touches guest memory from many threads.
//
//	thaw-pagebench demo   [-size 256MiB] [-threads 8]   serve a memory file to a toucher and verify every byte
//	thaw-pagebench bench  [-size 512MiB] [-reps 3] [-prefetch-rate 256MiB/s]  the five side-by-side measurements of docs/benchmarks/uffd.md
//	thaw-pagebench stress [-faults 10000000]            serve many faults with racing prefetch, fail on any wedged session
//	thaw-pagebench burst  [-size 256MiB] [-sessions 8] [-reps 3] [-prefetch-rate 256MiB/s]  a create among others' prefetches, with and without a limit
//
// Files go to -dir (default: a new directory under $TMPDIR, removed at
// exit).
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

func main() {
	uffdtest.MaybeRunVMM() // the re-executed child plays the VMM
	if len(os.Args) < 2 {
		usage()
	}
	mode, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	size := fs.String("size", "", "memory file size (e.g. 256MiB, 1GiB)")
	threads := fs.Int("threads", 8, "toucher threads (demo, stress)")
	sessions := fs.Int("sessions", 8, "other sandboxes prefetching (burst)")
	reps := fs.Int("reps", 3, "repetitions per measurement; the median is reported (bench)")
	faults := fs.Uint64("faults", 10_000_000, "faults to serve before stopping (stress)")
	rate := conf.ByteRate(256 << 20)
	fs.Func("prefetch-rate", "prefetch limit of bench's measurement (5) and of burst: bytes per second or e.g. 256MiB/s", func(s string) error {
		r, err := conf.ParseByteRate(s)
		if err == nil && r == 0 {
			err = fmt.Errorf("prefetch rate %q: bench's (5) and burst measure a limit; want a non-zero rate", s)
		}
		rate = r
		return err
	})
	dir := fs.String("dir", "", "directory for the memory file and sockets (default: a temporary directory)")
	verbose := fs.Bool("v", false, "log the page server's messages")
	fs.Parse(args)

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	defSize := map[string]string{"demo": "256MiB", "bench": "512MiB", "stress": "256MiB", "burst": "256MiB"}[mode]
	if *size == "" {
		*size = defSize
	}
	n, err := parseSize(*size)
	if err != nil {
		fatal(err)
	}
	workdir := *dir
	if workdir == "" {
		workdir, err = os.MkdirTemp("", "thaw-pagebench-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(workdir)
	}
	switch mode {
	case "demo":
		err = demo(workdir, n, *threads, log)
	case "bench":
		err = bench(workdir, n, *reps, uint64(rate), log)
	case "stress":
		err = stress(workdir, n, *threads, *faults, log)
	case "burst":
		err = burst(workdir, n, *sessions, *reps, uint64(rate), log)
	default:
		usage()
	}
	if err != nil {
		if *dir == "" {
			os.RemoveAll(workdir)
		}
		fatal(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: thaw-pagebench demo|bench|stress|burst [flags]; thaw-pagebench <mode> -h lists the flags")
	os.Exit(2)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "thaw-pagebench: %v\n", err)
	os.Exit(1)
}

// parseSize parses a byte count with an optional KiB/MiB/GiB suffix; the
// result must be a positive multiple of 2 MiB (so every copy size divides
// it).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	num := s
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional KiB, MiB or GiB suffix", s)
	}
	if n*mult%(2<<20) != 0 {
		return 0, fmt.Errorf("size %q: want a multiple of 2MiB", s)
	}
	return n * mult, nil
}
