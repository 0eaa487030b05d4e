package procstat

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

const sample = `55b3c7461000-55b3c7463000 r--p 00000000 fe:00 247278                     /usr/bin/my prog
Size:                  8 kB
Rss:                   8 kB
Pss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me 
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                 292 kB
Pss:                 292 kB
Anonymous:           292 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac nr um 
`

func TestParseSmaps(t *testing.T) {
	got, err := ParseSmaps([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d mappings, want 2", len(got))
	}
	a, b := got[0], got[1]
	if a.Path != "/usr/bin/my prog" || a.Perms != "r--p" || a.Rss != 8<<10 || a.Pss != 4<<10 || a.Anonymous != 0 || !a.HasFlag("rd") || a.HasFlag("um") {
		t.Errorf("first mapping: got %+v", a)
	}
	if b.Path != "" || b.Perms != "rw-p" || b.Size() != 64<<20 || b.Rss != 292<<10 || b.Anonymous != 292<<10 || !b.HasFlag("um") {
		t.Errorf("second mapping: got %+v", b)
	}
}

func TestParseSmapsErrors(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"field first", "Rss: 4 kB\n", "before any mapping"},
		{"short header", "1000-2000 r--p 0\n", "want at least 5"},
		{"bad range", "2000-1000 r--p 0 00:00 0\n", "bad address range"},
		{"bad permissions", "1000-2000 rwx 0 00:00 0\n", "permissions \"rwx\""},
		{"permission letters", "1000-2000 xr-p 0 00:00 0\n", "permissions \"xr-p\""},
		{"no kB", "1000-2000 r--p 0 00:00 0\nRss: 4\n", "<n> kB"},
		{"bad number", "1000-2000 r--p 0 00:00 0\nPss: x kB\n", "bad number"},
	} {
		_, err := ParseSmaps([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
}

func TestParseSchedstat(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"797338 0 1\n", 797338, true},
		{"0 5 6", 0, true},
		{"1 2", 0, false},
		{"-1 2 3", 0, false},
		{"x 2 3", 0, false},
	} {
		got, err := ParseSchedstat([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSchedstat(%q): got %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestSelf reads this test process: its threads' CPU time grows with
// work, and a mapping it touches shows up with the touched size.
func TestSelf(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := Threads(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	after, err := Threads(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := CPU(after) - CPU(before); d < 5*time.Millisecond {
		t.Errorf("CPU time after 20 ms of spinning: got +%v, want at least 5ms", d)
	}
	buf := make([]byte, 8<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	maps, err := Smaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var anon uint64
	for _, m := range maps {
		anon += m.Anonymous
	}
	if anon < uint64(len(buf)) {
		t.Errorf("anonymous memory: got %d bytes, want at least the %d just touched", anon, len(buf))
	}
	exe, err := Exe(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	split := SplitMappings(maps, exe)
	if split.Binary == 0 || split.Data == 0 || split.Stack == 0 || split.Anon < uint64(len(buf))/2 {
		t.Errorf("split of this test (%s): got %+v, want text, data, a stack and the %d bytes just touched (PSS: at least half)", exe, split, len(buf))
	}
	runtime.KeepAlive(buf)
	if _, err := Threads(1 << 30); !errors.Is(err, ErrGone) {
		t.Errorf("Threads of a pid that cannot exist: got %v, want ErrGone", err)
	}
	if _, err := Exe(1 << 30); !errors.Is(err, ErrGone) {
		t.Errorf("Exe of a pid that cannot exist: got %v, want ErrGone", err)
	}
}

// A static Go program's mappings, as smaps lists them (sizes cut).
const goSample = `00400000-0075a000 r-xp 00000000 fe:00 1 /opt/thaw/thaw-vmm
Pss: 200 kB
0075a000-00ae2000 r--p 0035a000 fe:00 1 /opt/thaw/thaw-vmm
Pss: 190 kB
00ae2000-00b35000 rw-p 006e2000 fe:00 1 /opt/thaw/thaw-vmm
Pss: 68 kB
00b35000-02b78000 rw-p 00000000 00:00 0
Pss: 84 kB
2bee21800000-2bee22000000 rw-p 00000000 00:00 0
Pss: 1364 kB
7fad9ce00000-7fada0e00000 rw-p 00000000 00:00 0
Pss: 68 kB
VmFlags: rd wr mr mw me ac um
7fada0e10000-7fada1000000 rw-p 00000000 00:00 0
Pss: 116 kB
7fade7803000-7fade7806000 rw-s 00000000 00:0f 2065 anon_inode:kvm-vcpu:1
Pss: 4 kB
7fade7a8b000-7fade7a91000 r--p 00000000 fe:00 9 /var/lib/thaw/memory
Pss: 24 kB
7fade7a91000-7fade7a93000 r-xp 00000000 00:00 0 [vdso]
Pss: 0 kB
7ffd5a88d000-7ffd5a8ae000 rw-p 00000000 00:00 0 [stack]
Pss: 16 kB
`

func TestSplitMappings(t *testing.T) {
	maps, err := ParseSmaps([]byte(goSample))
	if err != nil {
		t.Fatal(err)
	}
	got := SplitMappings(maps, "/opt/thaw/thaw-vmm")
	want := Split{Binary: 390 << 10, Data: 68 << 10, BSS: 84 << 10, Anon: (1364 + 116) << 10, Stack: 16 << 10, UFFD: 68 << 10, Other: 28 << 10}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := SplitMappings(maps, "/opt/thaw/other"); got.Binary != 0 || got.Data != 0 || got.BSS != 0 || got.Other != (28+390+68)<<10 {
		t.Errorf("another executable's split: got %+v, want its mappings under Other and no bss", got)
	}
	if got := want.Add(want); got.Anon != 2*want.Anon || got.Binary != 2*want.Binary || got.UFFD != 2*want.UFFD {
		t.Errorf("Add: got %+v, want twice %+v", got, want)
	}
}

func FuzzParseSmaps(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("1000-2000 r--p 0 00:00 0\nRss: 4 kB\n"))
	f.Add([]byte(goSample))
	f.Fuzz(func(t *testing.T, data []byte) {
		maps, err := ParseSmaps(data)
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.End < m.Start {
				t.Fatalf("mapping %+v ends before it starts", m)
			}
		}
		SplitMappings(maps, "/opt/thaw/thaw-vmm") // must not panic on what the parser accepts
	})
}
