package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/vmm/memory"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// layoutState is a minimal vmstate for size bytes of memory, enough for
// LoadMemory (which looks only at the memory layout).
func layoutState(t testing.TB, size uint64) *vmstate.State {
	t.Helper()
	regions, err := memory.Layout(size)
	if err != nil {
		t.Fatal(err)
	}
	st := &vmstate.State{Machine: vmstate.Machine{VCPUCount: 1, MemSizeMib: int(size >> 20)}}
	for _, r := range regions {
		st.Memory = append(st.Memory, vmstate.Region{GuestPhysAddr: r.GPA, Size: r.Size, FileOffset: r.FileOffset})
	}
	return st
}

// marks writes a distinct page at the start, middle and end of every
// region and returns them by guest-physical address.
func marks(t testing.TB, mem *memory.Memory) map[uint64][]byte {
	t.Helper()
	out := map[uint64][]byte{}
	for i, r := range mem.Regions() {
		for j, gpa := range []uint64{r.GPA, r.GPA + r.Size/2, r.GPA + r.Size - memory.PageSize} {
			page := bytes.Repeat([]byte{byte(0x10*i + j + 1)}, memory.PageSize)
			copy(page, "page at ")
			if err := mem.Write(gpa, page); err != nil {
				t.Fatal(err)
			}
			out[gpa] = page
		}
	}
	return out
}

// TestMemoryRoundTrip writes 1 GiB and 3 GiB + 64 MiB (two regions, the
// second above the MMIO gap) guests to memory files and loads them back
// with the File and Uffd backends: marked pages come back at their
// addresses, and the files are sparse.
func TestMemoryRoundTrip(t *testing.T) {
	testenv.RequireUFFD(t)
	for _, size := range []uint64{1 << 30, 3<<30 + 64<<20} {
		t.Run(fmt.Sprintf("%dMiB", size>>20), func(t *testing.T) {
			mem, err := memory.New(size, memory.Backing{NoReserve: true})
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			want := marks(t, mem)
			path := filepath.Join(t.TempDir(), "mem")
			start := time.Now()
			if err := WriteMemory(path, mem); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %d MiB in %v", size>>20, time.Since(start))
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if uint64(fi.Size()) != size {
				t.Fatalf("memory file size: got %d, want %d", fi.Size(), size)
			}
			if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 16<<20 {
				t.Errorf("memory file uses %d bytes on disk, want a sparse file (a few pages)", used)
			}
			st := layoutState(t, size)
			for _, b := range []fcapi.MemBackendType{fcapi.MemBackendFile, fcapi.MemBackendUffd} {
				backend := fcapi.MemBackend{BackendType: b, BackendPath: path}
				if b == fcapi.MemBackendUffd {
					backend.BackendPath = startPageServer(t, modeServe, path)
				}
				l, err := LoadMemory(context.Background(), st, backend, LoadOptions{})
				if err != nil {
					t.Fatalf("%s: %v", b, err)
				}
				for gpa, page := range want {
					got, err := l.Memory.Slice(gpa, memory.PageSize)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, page) {
						t.Errorf("%s: page at %#x: got %q..., want %q...", b, gpa, got[:12], page[:12])
					}
				}
				if got, _ := l.Memory.Slice(memory.PageSize, 8); !bytes.Equal(got, make([]byte, 8)) {
					t.Errorf("%s: unwritten page 1 reads %x, want zeros", b, got)
				}
				if err := l.Close(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestLoadMemoryFileErrors(t *testing.T) {
	const size = 8 << 20
	mem, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	marks(t, mem)
	dir := t.TempDir()
	path := filepath.Join(dir, "mem")
	if err := WriteMemory(path, mem); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated")
	data, _ := os.ReadFile(path)
	os.WriteFile(truncated, data[:size-4096], 0o600)
	st := layoutState(t, size)
	bigger := layoutState(t, 2*size) // the vmstate of a 16 MiB VM
	badLayout := layoutState(t, size)
	badLayout.Memory[0].GuestPhysAddr = 1 << 20
	file := func(p string) fcapi.MemBackend {
		return fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: p}
	}
	tests := []struct {
		name string
		st   *vmstate.State
		b    fcapi.MemBackend
		want string
	}{
		{"truncated", st, file(truncated), "truncated"},
		{"other VM size", bigger, file(path), "is 8388608 bytes, the snapshot's guest memory is 16777216"},
		{"missing", st, file(filepath.Join(dir, "nope")), "no such file"},
		{"directory", st, file(dir), "not a regular file"},
		{"layout", badLayout, file(path), "lays it out at gpa 0x0"},
		{"backend", st, fcapi.MemBackend{BackendType: "Disk", BackendPath: path}, "backend_type"},
	}
	for _, tt := range tests {
		l, err := LoadMemory(context.Background(), tt.st, tt.b, LoadOptions{})
		if err == nil {
			l.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: LoadMemory got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

// TestLoadMemoryUffdFailures checks that every way a page server can fail
// the Uffd load ends it with a clear error within the timeout.
func TestLoadMemoryUffdFailures(t *testing.T) {
	testenv.RequireUFFD(t)
	const size = 8 << 20
	mem, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "mem")
	if err := WriteMemory(path, mem); err != nil {
		t.Fatal(err)
	}
	st := layoutState(t, size)
	const timeout = 500 * time.Millisecond

	// A socket that is bound and listening but whose owner never accepts.
	silent := filepath.Join(dir, "silent.sock")
	sl, err := listenUnix(silent)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()

	tests := []struct {
		name   string
		socket func(t *testing.T) string
		want   string
		is     error
	}{
		{"no page server", func(*testing.T) string { return filepath.Join(dir, "absent.sock") }, "is it listening", nil},
		{"never accepts", func(*testing.T) string { return silent }, "served no page within", context.DeadlineExceeded},
		{"never serves", func(t *testing.T) string { return startPageServer(t, modeHold, path) }, "served no page within", context.DeadlineExceeded},
		{"exits after the handshake", func(t *testing.T) string {
			p := startPageServerProc(t, modeHold, path)
			go func() { time.Sleep(100 * time.Millisecond); p.kill() }()
			return p.sock
		}, "before serving the first guest page", ErrPageServerGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			l, err := LoadMemory(context.Background(), st, fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: tt.socket(t)}, LoadOptions{ServeTimeout: timeout})
			took := time.Since(start)
			if err == nil {
				l.Close()
				t.Fatalf("LoadMemory succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Errorf("LoadMemory: got %v, want an error containing %q (wrapping %v)", err, tt.want, tt.is)
			}
			if took > timeout+2*time.Second {
				t.Errorf("LoadMemory took %v to fail, want about the %v timeout", took, timeout)
			}
		})
	}
}

// onePEnv makes TestWriteMemoryFromUffd run its body (in a child).
const onePEnv = "THAW_SNAPSHOT_TEST_ONE_P"

// TestWriteMemoryFromUffd writes the memory file of a guest restored with
// the Uffd backend from a page server in this process, as pausing a
// restored sandbox does, with most pages never touched since the restore:
// WriteMemory must read them through the page server and write the
// snapshot's pages plus the restored guest's own writes. It runs with one P
// in a child process: a zero scan that loaded unserved pages in Go, rather
// than through memory.Slice (which populates them inside madvise(2)),
// would hold the only P in a user-mode fault and the page server could
// never answer; the child would hang, and only a parent can notice.
func TestWriteMemoryFromUffd(t *testing.T) {
	testenv.RequireUFFD(t)
	if os.Getenv(onePEnv) == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWriteMemoryFromUffd$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), onePEnv+"=1")
		out, err := cmd.CombinedOutput()
		switch {
		case ctx.Err() != nil:
			t.Fatalf("child with one P still running after 60s (deadlocked on a user-mode fault?):\n%s", out)
		case err != nil:
			t.Fatalf("child: %v\n%s", err, out)
		case !bytes.Contains(out, []byte("--- PASS: TestWriteMemoryFromUffd")):
			t.Fatalf("child did not run the test:\n%s", out)
		}
		return
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const size = 64 << 20
	mem, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	want := marks(t, mem)
	dir := t.TempDir()
	path := filepath.Join(dir, "mem")
	if err := WriteMemory(path, mem); err != nil {
		t.Fatal(err)
	}
	l, err := LoadMemory(context.Background(), layoutState(t, size),
		fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: startPageServer(t, modeServe, path)}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	written := bytes.Repeat([]byte("restored"), memory.PageSize/8)
	const writtenGPA = 5 * memory.PageSize
	if err := l.Memory.Write(writtenGPA, written); err != nil {
		t.Fatal(err)
	}
	want[writtenGPA] = written
	again := filepath.Join(dir, "again")
	if err := WriteMemory(again, l.Memory); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(again)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size {
		t.Fatalf("memory file size: got %d, want %d", len(got), size)
	}
	zero := make([]byte, memory.PageSize)
	for off := 0; off < size; off += memory.PageSize {
		page, ok := want[uint64(off)]
		if !ok {
			page = zero
		}
		if !bytes.Equal(got[off:off+memory.PageSize], page) {
			t.Fatalf("page at %#x of the memory file written after a Uffd restore: got %q..., want %q...", off, got[off:off+12], page[:12])
		}
	}
}
