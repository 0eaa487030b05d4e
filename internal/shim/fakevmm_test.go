package shim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/uffd"
)

// fakeVMMEnv turns the re-executed test binary into a fake VMM; its value
// is the JSON fakeSpec. The shim starts it like a firecracker binary
// (`--api-sock P [--id X]`) through a tiny wrapper script that sets it.
const fakeVMMEnv = "THAW_SHIMTEST_FAKEVMM"

// Handshake behaviours of the fake VMM's PUT /snapshot/load (Uffd backend).
const (
	hsOK         = "ok"          // register the memory and send a correct handshake
	hsGarbage    = "garbage"     // send bytes that are not a handshake
	hsNone       = "none"        // never connect: the load "succeeds" without a handshake
	hsOmitRegion = "omit-region" // register two regions, announce one, touch the other
)

// fakeSpec tells the fake VMM what to do. It stands in for thaw-vmm, which
// does not exist on main yet: it speaks GET / and PUT /snapshot/load of
// Firecracker's API and plays the VMM's side of the UFFD handshake with
// internal/uffd's own sender.
type fakeSpec struct {
	// ExitAtStart: print a complaint and exit with this code before
	// serving the API (when ExitAtStart > 0).
	ExitAtStart int
	// NoAPI: never listen on the API socket.
	NoAPI bool
	// IgnoreTERM: ignore SIGTERM (only SIGKILL stops it).
	IgnoreTERM bool
	// Handshake is what a Uffd load does (hsOK when empty).
	Handshake string
	// MemFile is the memory file whose contents the pages must have.
	MemFile string
	// Touch lists page indices to touch after the handshake, in order (one
	// thread); empty means every page. Each touched page is compared with
	// the memory file.
	Touch []int
}

// fakeReport is the fake VMM's GET /fake answer.
type fakeReport struct {
	Touched    int
	Mismatches int
	FirstBad   string
	Done       bool
}

// maybeRunFakeVMM runs the fake VMM and exits when fakeVMMEnv is set.
func maybeRunFakeVMM() {
	v, ok := os.LookupEnv(fakeVMMEnv)
	if !ok {
		return
	}
	var spec fakeSpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "fake VMM: decoding %s: %v\n", fakeVMMEnv, err)
		os.Exit(2)
	}
	err := runFakeVMM(&spec, os.Args[1:])
	fmt.Fprintf(os.Stderr, "fake VMM: %v\n", err)
	os.Exit(1)
}

func runFakeVMM(spec *fakeSpec, args []string) error {
	var apiSock string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--api-sock" {
			apiSock = args[i+1]
		}
	}
	if apiSock == "" {
		return fmt.Errorf("no --api-sock in %q", args)
	}
	if spec.ExitAtStart > 0 {
		fmt.Fprintf(os.Stderr, "fake VMM: refusing to start: configured to exit with %d\n", spec.ExitAtStart)
		os.Exit(spec.ExitAtStart)
	}
	if spec.IgnoreTERM {
		signal.Ignore(syscall.SIGTERM)
	}
	if spec.NoAPI {
		select {}
	}
	l, err := net.Listen("unix", apiSock)
	if err != nil {
		return err
	}
	v := &fakeVM{spec: spec}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(fcapi.InstanceInfo{AppName: "Firecracker", ID: "fake", State: fcapi.StateNotStarted, VMMVersion: "0.0.0-fake"})
	})
	mux.HandleFunc("PUT /snapshot/load", v.load)
	mux.HandleFunc("GET /fake", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(v.report())
	})
	mux.HandleFunc("PUT /fake/crash", func(w http.ResponseWriter, r *http.Request) {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	})
	mux.HandleFunc("PUT /fake/exit/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil {
			fault(w, "exit code: %v", err)
			return
		}
		os.Exit(code)
	})
	return http.Serve(l, mux)
}

type fakeVM struct {
	spec *fakeSpec
	uffd *os.File // held for the life of the "VM", as Firecracker does

	touched, mismatches atomic.Int64
	done                atomic.Bool
	mu                  sync.Mutex
	firstBad            string
}

func (v *fakeVM) report() fakeReport {
	v.mu.Lock()
	defer v.mu.Unlock()
	return fakeReport{Touched: int(v.touched.Load()), Mismatches: int(v.mismatches.Load()), FirstBad: v.firstBad, Done: v.done.Load()}
}

func fault(w http.ResponseWriter, format string, args ...any) {
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(fcapi.Error{FaultMessage: fmt.Sprintf(format, args...)})
}

func (v *fakeVM) load(w http.ResponseWriter, r *http.Request) {
	var p fcapi.SnapshotLoadParams
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		fault(w, "decoding: %v", err)
		return
	}
	if p.MemBackend == nil || p.MemBackend.BackendType != fcapi.MemBackendUffd {
		w.WriteHeader(http.StatusNoContent) // File backend: nothing to do
		return
	}
	sock := p.MemBackend.BackendPath
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	var err error
	switch v.spec.Handshake {
	case hsNone:
	case hsGarbage:
		var c net.Conn
		if c, err = (&net.Dialer{}).DialContext(ctx, "unix", sock); err == nil {
			_, err = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			c.Close()
		}
	case hsOK, "":
		err = v.handshake(ctx, sock, false)
	case hsOmitRegion:
		err = v.handshake(ctx, sock, true)
	default:
		err = fmt.Errorf("unknown handshake behaviour %q", v.spec.Handshake)
	}
	if err != nil {
		fault(w, "Load snapshot error: %v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handshake maps guest memory as the memory file's size (two regions, the
// second half first, so address and file order differ), registers it,
// sends the handshake and touches pages in the background.
func (v *fakeVM) handshake(ctx context.Context, sock string, omit bool) error {
	file, err := os.ReadFile(v.spec.MemFile)
	if err != nil {
		return err
	}
	size := len(file)
	if size < 2*4096 || size%8192 != 0 {
		return fmt.Errorf("memory file of %d bytes: want an even number of pages, at least 2", size)
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	half := uint64(size / 2)
	base := addrOf(mem)
	regions := []uffd.Region{
		{BaseHostVirtAddr: base + half, Size: half, Offset: 0, PageSize: uffd.PageSize4K},
		{BaseHostVirtAddr: base, Size: half, Offset: half, PageSize: uffd.PageSize4K},
	}
	if v.uffd, err = uffd.Register(regions); err != nil {
		return err
	}
	sent := regions
	if omit {
		sent = regions[:1]
	}
	if err := uffd.SendHandshakeTo(ctx, sock, sent, v.uffd); err != nil {
		return err
	}
	// guest page i (file offset i*4096) lives at mem[(i*4096 + half) % size].
	at := func(page int) []byte {
		off := (uint64(page)*4096 + half) % uint64(size)
		return mem[off : off+4096]
	}
	touch := v.spec.Touch
	if omit {
		touch = []int{size/4096 - 1} // in the unannounced region
	}
	if len(touch) == 0 {
		for i := range size / 4096 {
			touch = append(touch, i)
		}
	}
	go func() {
		for _, p := range touch {
			got := at(p)
			want := file[p*4096 : (p+1)*4096]
			if !bytes.Equal(got, want) {
				if v.mismatches.Add(1) == 1 {
					v.mu.Lock()
					v.firstBad = fmt.Sprintf("page %d: got %x..., want %x...", p, got[:16], want[:16])
					v.mu.Unlock()
				}
			}
			v.touched.Add(1)
		}
		v.done.Store(true)
	}()
	return nil
}

// fakeClient reads the fake VMM's report through its API socket.
func fakeReportOf(ctx context.Context, apiSock string) (fakeReport, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", apiSock)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://vmm/fake", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return fakeReport{}, err
	}
	defer resp.Body.Close()
	var rep fakeReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return fakeReport{}, err
	}
	return rep, nil
}

// endFake makes the fake VMM end: how is "crash" (SIGKILL itself) or
// "exit/N" (exit with code N).
func endFake(ctx context.Context, apiSock, how string) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", apiSock)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://vmm/fake/"+how, nil)
	resp, err := hc.Do(req)
	if err == nil {
		resp.Body.Close()
		return fmt.Errorf("the fake VMM answered %s instead of ending", resp.Status)
	}
	return nil
}

// crashFake makes the fake VMM kill itself with SIGKILL.
func crashFake(ctx context.Context, apiSock string) error { return endFake(ctx, apiSock, "crash") }
