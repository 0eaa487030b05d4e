package sandboxtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/uffd"
)

// firecrackerLikeEnv turns a test binary that calls
// MaybeRunFirecrackerLikeVMM into the stand-in VMM; its value is the guest
// memory size in bytes.
const firecrackerLikeEnv = "THAW_SANDBOXTEST_FIRECRACKER_LIKE_MEM"

// FirecrackerLikeVMM returns a VMM binary for the shim to start (a script
// re-executing the test binary, whose TestMain must call
// MaybeRunFirecrackerLikeVMM first) that restores the way firecracker
// does where thaw-vmm does not: its PUT /snapshot/load with the Uffd
// backend sends the UFFD handshake and does not wait for the page server
// to serve anything, so the load succeeds whatever the page server then
// decides. thaw-vmm instead waits until the page server has served the
// first guest page, so with it a refused handshake always fails the load.
//
// firecracker is not installed here, hence the stand-in. It answers GET /
// and PUT /snapshot/load (Uffd only), announcing one memory region of
// memBytes at file offset 0, and then holds the userfaultfd until it is
// killed, as a VM would. It answers the load before it sends the
// handshake: firecracker sends first, but nothing orders its answer
// against the page server's verdict, and this order makes the test take
// the path the verdict exists for (load OK, handshake failed) every time.
func FirecrackerLikeVMM(t testing.TB, memBytes int64) string {
	t.Helper()
	return standIn(t, "firecracker-like", fmt.Sprint(memBytes))
}

// SilentUffdVMM returns a VMM binary like FirecrackerLikeVMM's whose Uffd
// load succeeds without ever connecting to the page server: a VMM that
// ignores the Uffd backend.
func SilentUffdVMM(t testing.TB) string {
	t.Helper()
	return standIn(t, "silent-uffd", silentMem)
}

// silentMem is firecrackerLikeEnv's value that makes the stand-in send no
// handshake.
const silentMem = "silent"

func standIn(t testing.TB, name, mem string) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	script := fmt.Sprintf("#!/bin/sh\n%s=%s exec %q \"$@\"\n", firecrackerLikeEnv, mem, exe)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// MaybeRunFirecrackerLikeVMM runs the stand-in VMM and exits when the test
// binary was started as one (see FirecrackerLikeVMM); otherwise it returns
// at once. Call it first in TestMain.
func MaybeRunFirecrackerLikeVMM() {
	v, ok := os.LookupEnv(firecrackerLikeEnv)
	if !ok {
		return
	}
	err := runFirecrackerLike(v, os.Args[1:])
	fmt.Fprintf(os.Stderr, "firecracker-like VMM: %v\n", err)
	os.Exit(1)
}

func runFirecrackerLike(mem string, args []string) error {
	var size uint64
	if mem != silentMem {
		var err error
		size, err = strconv.ParseUint(mem, 10, 64)
		if err != nil || size == 0 || size%uffd.PageSize4K != 0 {
			return fmt.Errorf("%s=%q: want a positive multiple of 4096, or %q", firecrackerLikeEnv, mem, silentMem)
		}
	}
	var apiSock, id string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			apiSock = args[i+1]
		case "--id":
			id = args[i+1]
		}
	}
	if apiSock == "" {
		return fmt.Errorf("no --api-sock in %q", args)
	}
	l, err := net.Listen("unix", apiSock)
	if err != nil {
		return err
	}
	vm := &fcLikeVM{id: id, size: size}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(fcapi.InstanceInfo{AppName: "Firecracker", ID: id, State: fcapi.StateNotStarted, VMMVersion: "0.0.0-firecracker-like"})
	})
	mux.HandleFunc("PUT /snapshot/load", vm.load)
	return http.Serve(l, mux)
}

type fcLikeVM struct {
	id   string
	size uint64   // 0: send no handshake
	uffd *os.File // held for the life of the "VM", as firecracker does
}

func fcFault(w http.ResponseWriter, format string, args ...any) {
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(fcapi.Error{FaultMessage: fmt.Sprintf(format, args...)})
}

func (v *fcLikeVM) load(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		fcFault(w, "reading the body: %v", err)
		return
	}
	var p fcapi.SnapshotLoadParams
	if err := fcapi.Decode(body, &p); err != nil {
		fcFault(w, "%v", err)
		return
	}
	if p.MemBackend == nil || p.MemBackend.BackendType != fcapi.MemBackendUffd {
		fcFault(w, "Load snapshot error: this stand-in restores only with the Uffd backend")
		return
	}
	if v.size == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// Guest memory: anonymous, never touched here (only the kernel and the
	// page server see it), so the raw address is all that is needed.
	addr, _, errno := unix.Syscall6(unix.SYS_MMAP, 0, uintptr(v.size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE, ^uintptr(0), 0)
	if errno != 0 {
		fcFault(w, "Load snapshot error: mapping guest memory: %v", errno)
		return
	}
	regions := []uffd.Region{{BaseHostVirtAddr: uint64(addr), Size: v.size, Offset: 0, PageSize: uffd.PageSize4K}}
	if v.uffd, err = uffd.Register(regions); err != nil {
		fcFault(w, "Load snapshot error: %v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	if err := http.NewResponseController(w).Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "firecracker-like VMM: answering the load: %v\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := uffd.SendHandshakeTo(ctx, p.MemBackend.BackendPath, regions, v.uffd); err != nil {
		// Firecracker fails the restore here; the answer is already out,
		// so end the "VM" as a failed restore ends firecracker.
		fmt.Fprintf(os.Stderr, "firecracker-like VMM: %v\n", err)
		os.Exit(1)
	}
}
