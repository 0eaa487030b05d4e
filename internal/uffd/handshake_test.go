package uffd_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
)

// firecrackerV114 is the exact message Firecracker v1.14 sends.
const firecrackerV114 = `[{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]`

func TestMarshalHandshakeMatchesFirecracker(t *testing.T) {
	got := string(uffd.MarshalHandshake([]uffd.Region{{BaseHostVirtAddr: 140019538853888, Size: 134217728, Offset: 0, PageSize: 4096}}))
	if got != firecrackerV114 {
		t.Errorf("got %s, want %s", got, firecrackerV114)
	}
}

func TestParseHandshake(t *testing.T) {
	fc := []uffd.Region{{BaseHostVirtAddr: 140019538853888, Size: 134217728, Offset: 0, PageSize: 4096}}
	tests := []struct {
		name string
		msg  string
		want []uffd.Region
		err  string
	}{
		{"firecracker v1.14", firecrackerV114, fc, ""},
		{"older sender without page sizes", `[{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0}]`, fc, ""},
		{"page_size_kib only", `[{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0,"page_size_kib":4096}]`, fc, ""},
		{"unknown field ignored", `[{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0,"page_size":4096,"x":1}]`, fc, ""},
		{"two regions, 2 MiB pages", `[{"base_host_virt_addr":1073741824,"size":2097152,"offset":0,"page_size":2097152},{"base_host_virt_addr":4294967296,"size":4194304,"offset":2097152,"page_size":2097152}]`,
			[]uffd.Region{{BaseHostVirtAddr: 1 << 30, Size: 2 << 20, Offset: 0, PageSize: 2 << 20}, {BaseHostVirtAddr: 4 << 30, Size: 4 << 20, Offset: 2 << 20, PageSize: 2 << 20}}, ""},
		{"empty message", ``, nil, "empty"},
		{"garbage", `hello`, nil, "want a JSON array"},
		{"garbage JSON", `[{"base_host_virt_addr":1,`, nil, "decoding handshake JSON"},
		{"not objects", `[1,2]`, nil, "decoding handshake JSON"},
		{"no regions", `[]`, nil, "no memory regions"},
		{"missing fields", `[{"size":4096}]`, nil, "lacks base_host_virt_addr, offset"},
		{"negative", `[{"base_host_virt_addr":-4096,"size":4096,"offset":0}]`, nil, "decoding handshake JSON"},
		{"page size 0", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":0}]`, nil, "page size 0 is not supported"},
		{"page size 3000", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]`, nil, "page size 3000 is not supported"},
		{"page sizes disagree", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4}]`, nil, "disagree"},
		{"unaligned address", `[{"base_host_virt_addr":4097,"size":4096,"offset":0}]`, nil, "multiples of the page size"},
		{"unaligned size", `[{"base_host_virt_addr":4096,"size":4000,"offset":0}]`, nil, "multiples of the page size"},
		{"zero size", `[{"base_host_virt_addr":4096,"size":0,"offset":0}]`, nil, "size is 0"},
		{"overflow", `[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0}]`, nil, "overflows"},
		{"overlapping addresses", `[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":8192}]`, nil, "overlap in the VMM's address space"},
		{"overlapping file ranges", `[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":65536,"size":4096,"offset":4096}]`, nil, "overlap in the memory file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := uffd.ParseHandshake([]byte(tt.msg))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got regions %v, error %v; want an error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzParseHandshake(f *testing.F) {
	f.Add([]byte(firecrackerV114))
	f.Add([]byte(`[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":65536,"size":4096,"offset":8192,"page_size":4096}]`))
	f.Add([]byte(`[{"base_host_virt_addr":1073741824,"size":2097152,"offset":0,"page_size":2097152}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		regions, err := uffd.ParseHandshake(msg)
		if err != nil {
			return
		}
		if err := uffd.ValidateRegions(regions); err != nil {
			t.Fatalf("ParseHandshake accepted regions ValidateRegions rejects: %v", err)
		}
		again, err := uffd.ParseHandshake(uffd.MarshalHandshake(regions))
		if err != nil || !reflect.DeepEqual(again, regions) {
			t.Fatalf("round trip: got %v, %v; want %v", again, err, regions)
		}
	})
}

// anonUffd maps size bytes of anonymous memory in this process and returns
// a userfaultfd registered over it, with the matching region.
func anonUffd(t *testing.T, size int) (*os.File, uffd.Region) {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	r := uffd.Region{BaseHostVirtAddr: addrOfSlice(mem), Size: uint64(size), Offset: 0, PageSize: 4096}
	f, err := uffd.Register([]uffd.Region{r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, r
}

// fakeHandshake makes a Handshake for regions around a real userfaultfd of
// this process (registered over memory unrelated to regions: NewServer's
// checks must not depend on it).
func fakeHandshake(t *testing.T, regions []uffd.Region) *uffd.Handshake {
	t.Helper()
	f, _ := anonUffd(t, 4096)
	dup, err := unix.Dup(int(mustFd(t, f)))
	if err != nil {
		t.Fatal(err)
	}
	return &uffd.Handshake{Regions: regions, Uffd: os.NewFile(uintptr(dup), "userfaultfd")}
}

func mustFd(t *testing.T, f *os.File) uintptr {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	rc.Control(func(x uintptr) { fd = x })
	return fd
}

// sendRaw connects to path and sends msg with fds attached.
func sendRaw(t *testing.T, path string, msg []byte, fds ...int) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if len(msg) > 0 || len(oob) > 0 {
		if len(msg) == 0 {
			msg = []byte{' '}
		}
		if _, _, err := c.WriteMsgUnix(msg, oob, nil); err != nil {
			t.Error(err)
		}
	}
}

func TestAcceptRejectsBadHandshakes(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	f, r := anonUffd(t, 64<<10)
	ufd := int(mustFd(t, f))
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	good := uffd.MarshalHandshake([]uffd.Region{r})
	tests := []struct {
		name string
		msg  []byte
		fds  []int
		want string
	}{
		{"no fd", good, nil, "no file descriptor"},
		{"two fds", good, []int{ufd, ufd}, "2 file descriptors, want exactly 1"},
		{"not a userfaultfd", good, []int{int(null.Fd())}, "not a userfaultfd"},
		{"empty message", nil, nil, "without sending a handshake"},
		{"empty message with fd", nil, []int{ufd}, "without sending a handshake"},
		{"garbage JSON", []byte(`[{"base_host_virt_addr":`), []int{ufd}, "decoding handshake JSON"},
		{"not JSON", []byte("GET / HTTP/1.1\r\n"), []int{ufd}, "want a JSON array"},
		{"overlapping", []byte(`[{"base_host_virt_addr":4096,"size":8192,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":8192}]`), []int{ufd}, "overlap"},
		{"unaligned", []byte(`[{"base_host_virt_addr":4097,"size":4096,"offset":0}]`), []int{ufd}, "multiples of the page size"},
		{"page size 0", []byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":0}]`), []int{ufd}, "page size 0"},
		{"page size 3000", []byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]`), []int{ufd}, "page size 3000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s")
			l, err := uffd.Listen(sock)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go sendRaw(t, sock, tt.msg, tt.fds...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			hs, err := l.Accept(ctx)
			if err == nil {
				hs.Close()
				t.Fatalf("Accept succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestAcceptManyRegions(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	f, _ := anonUffd(t, 4096)
	var regions []uffd.Region
	for i := range uint64(uffd.MaxRegions) { // about 120 KiB of JSON
		regions = append(regions, uffd.Region{BaseHostVirtAddr: (1 << 40) + i*(1<<21), Size: 1 << 20, Offset: i << 20, PageSize: 4096})
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := uffd.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	errc := make(chan error, 1)
	go func() { errc <- uffd.SendHandshakeTo(context.Background(), sock, regions, f) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(hs.Regions, regions) {
		t.Errorf("got %d regions, want the %d sent", len(hs.Regions), len(regions))
	}
	if hs.PeerPID != os.Getpid() {
		t.Errorf("peer pid %d, want %d", hs.PeerPID, os.Getpid())
	}
	fl, err := unix.FcntlInt(mustFd(t, hs.Uffd), unix.F_GETFD, 0)
	if err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("received uffd flags %#x (%v), want close-on-exec", fl, err)
	}
}

func TestAcceptHonoursContext(t *testing.T) {
	noLeaks(t)
	l, err := uffd.Listen(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Cancellation wakes a blocked accept.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := l.Accept(ctx); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("got %v, want a context canceled error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled Accept took %v", d)
	}
	// A deadline bounds it too, and the listener still works afterwards.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("got %v, want a deadline exceeded error", err)
	}
	// A peer that connects but never sends is cut off by the deadline.
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err == nil || !strings.Contains(err.Error(), "reading the UFFD handshake") {
		t.Errorf("got %v, want a handshake read error", err)
	}
}

func TestListenRejectsBusyPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := uffd.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l2, err := uffd.Listen(path); err == nil {
		l2.Close()
		t.Fatal("second Listen on the same path succeeded")
	} else if !strings.Contains(err.Error(), "stale socket") {
		t.Errorf("got %v, want a hint about the stale socket", err)
	}
}

func TestValidateRegionsCapsCount(t *testing.T) {
	regions := make([]uffd.Region, uffd.MaxRegions+1)
	for i := range regions {
		regions[i] = uffd.Region{BaseHostVirtAddr: uint64(i+1) << 20, Size: 4096, Offset: uint64(i) << 12, PageSize: 4096}
	}
	if err := uffd.ValidateRegions(regions[:uffd.MaxRegions]); err != nil {
		t.Fatalf("%d regions: %v", uffd.MaxRegions, err)
	}
	if err := uffd.ValidateRegions(regions); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("%d regions: got %v, want a too-many-regions error", len(regions), err)
	}
}
