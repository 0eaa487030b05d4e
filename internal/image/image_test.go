package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/testenv"
)

func TestBuildFromDir(t *testing.T) {
	testenv.RequireRoot(t) // the fixture has files owned by other users
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc", "hostname"), []byte("box\n"), 0o644))
	must(os.MkdirAll(filepath.Join(src, "home", "user"), 0o700))
	must(os.Chown(filepath.Join(src, "home", "user"), 1000, 1001))
	must(os.WriteFile(filepath.Join(src, "bin-suid"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(src, "bin-suid"), 0o4755|os.ModeSetuid))
	must(os.Symlink("etc/hostname", filepath.Join(src, "hn")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(os.Mkdir(filepath.Join(src, "tmp"), 0o777))
	must(os.Chmod(filepath.Join(src, "tmp"), 0o777|os.ModeSticky))

	img := filepath.Join(t.TempDir(), "root.ext4")
	res, err := Build(context.Background(), testConfig(t), Dir(src), img)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	fsck(t, img)
	if fi, _ := os.Stat(img); fi == nil || fi.Size() != 64<<20 {
		t.Errorf("image size: got %v, want 64 MiB", fi)
	}
	if res.Entries < 7 || res.ContentBytes < 14 {
		t.Errorf("Result: %+v", res)
	}
	tests := []struct {
		path string
		want inode
	}{
		{"/etc/hostname", inode{typ: "regular", mode: 0o644, size: 4, links: 1}},
		{"/home/user", inode{typ: "directory", mode: 0o700, uid: 1000, gid: 1001}},
		{"/bin-suid", inode{typ: "regular", mode: 0o4755, size: 10, links: 1}},
		{"/hn", inode{typ: "symlink", mode: 0o777, linkTarget: "etc/hostname", size: 12, links: 1}},
		{"/fifo", inode{typ: "FIFO", mode: 0o600, links: 1}},
		{"/tmp", inode{typ: "directory", mode: 0o1777}},
		{"/proc", inode{typ: "directory", mode: 0o555}},
	}
	for _, tt := range tests {
		got, ok := stat(t, img, tt.path)
		if tt.want.typ == "directory" {
			got.size, got.links = 0, 0 // not interesting
		}
		if !ok || got != tt.want {
			t.Errorf("%s: got %+v (exists %v), want %+v", tt.path, got, ok, tt.want)
		}
	}
	if got := cat(t, img, "/etc/hostname"); string(got) != "box\n" {
		t.Errorf("/etc/hostname: got %q", got)
	}
	checkAgentInjected(t, img, "/sbin")
}

func TestBuildFromTarball(t *testing.T) {
	for _, deferOwners := range []bool{false, true} {
		t.Run(map[bool]string{false: "owners staged", true: "owners via debugfs"}[deferOwners], func(t *testing.T) {
			if !deferOwners {
				testenv.RequireRoot(t)
			}
			tarPath := filepath.Join(t.TempDir(), "root.tar")
			data := makeTar(t,
				tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755},
				tarEntry{name: "./usr/bin/", typ: tar.TypeDir},
				tarEntry{name: "./usr/bin/tool", typ: tar.TypeReg, body: "tool", mode: 0o2755, uid: 0, gid: 50},
				tarEntry{name: "./usr/bin/tool-link", typ: tar.TypeLink, link: "./usr/bin/tool"},
				tarEntry{name: "./usr/sbin/", typ: tar.TypeDir},
				tarEntry{name: "./sbin", typ: tar.TypeSymlink, link: "/usr/sbin"},                                 // absolute, as some images have
				tarEntry{name: "./home/u/notes", typ: tar.TypeReg, body: "hi", mode: 0o600, uid: 1000, gid: 1000}, // parents implied
				tarEntry{name: "./dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
				tarEntry{name: "./etc/.wh.passwd", typ: tar.TypeReg, body: "not a whiteout in a plain tarball"},
			)
			if err := os.WriteFile(tarPath, data, 0o644); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(t.TempDir(), "root.ext4")
			if _, err := build(context.Background(), testConfig(t), Tarball(tarPath), img, deferOwners); err != nil {
				t.Fatalf("build: %v", err)
			}
			fsck(t, img)
			tests := []struct {
				path string
				want inode
			}{
				{"/usr/bin/tool", inode{typ: "regular", mode: 0o2755, gid: 50, size: 4, links: 2}},
				{"/usr/bin/tool-link", inode{typ: "regular", mode: 0o2755, gid: 50, size: 4, links: 2}},
				{"/home/u/notes", inode{typ: "regular", mode: 0o600, uid: 1000, gid: 1000, size: 2, links: 1}},
				{"/dev/null", inode{typ: "character special", mode: 0o666, links: 1, major: 1, minor: 3}},
				{"/etc/.wh.passwd", inode{typ: "regular", mode: 0o644, size: 33, links: 1}},
			}
			for _, tt := range tests {
				got, ok := stat(t, img, tt.path)
				if !ok || got != tt.want {
					t.Errorf("%s: got %+v (exists %v), want %+v", tt.path, got, ok, tt.want)
				}
			}
			if home, _ := stat(t, img, "/home"); home.uid != 0 || home.gid != 0 {
				t.Errorf("implied directory /home: got owner %d:%d, want 0:0", home.uid, home.gid)
			}
			// sbin -> /usr/sbin: the agent lands in /usr/sbin.
			checkAgentInjected(t, img, "/usr/sbin")
		})
	}
}

func TestBuildRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name    string
		entries []tarEntry
	}{
		{"dotdot", []tarEntry{{name: "../../" + filepath.Base(outside) + "/pwned", typ: tar.TypeReg, body: "x"}}},
		{"dotdot inside", []tarEntry{{name: "a/../../pwned", typ: tar.TypeReg, body: "x"}}},
		{"absolute symlink dir", []tarEntry{
			{name: "escape", typ: tar.TypeSymlink, link: outside},
			{name: "escape/pwned", typ: tar.TypeReg, body: "x"},
		}},
		{"relative symlink dir", []tarEntry{
			{name: "escape", typ: tar.TypeSymlink, link: "../../../../../../../../" + outside},
			{name: "escape/pwned", typ: tar.TypeReg, body: "x"},
		}},
		{"hard link out", []tarEntry{{name: "pw", typ: tar.TypeLink, link: "../../../../etc/passwd"}}},
		{"hard link through symlink", []tarEntry{
			{name: "escape", typ: tar.TypeSymlink, link: "/etc"},
			{name: "pw", typ: tar.TypeLink, link: "escape/passwd"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tarPath := filepath.Join(t.TempDir(), "evil.tar")
			os.WriteFile(tarPath, makeTar(t, tt.entries...), 0o644)
			img := filepath.Join(t.TempDir(), "root.ext4")
			_, err := Build(context.Background(), testConfig(t), Tarball(tarPath), img)
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("got %v, want ErrUnsafePath", err)
			}
			if _, err := os.Stat(img); !os.IsNotExist(err) {
				t.Errorf("a failed build left %s behind", img)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("the build wrote outside its root: %s", ents[0].Name())
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.tar")
	os.WriteFile(small, makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, body: "x"}), 0o644)
	thirty := filepath.Join(dir, "thirty.tar")
	os.WriteFile(thirty, makeTar(t, tarEntry{name: "thirty", typ: tar.TypeReg, body: strings.Repeat("x", 30<<20)}), 0o644)
	big := filepath.Join(dir, "big.tar")
	os.WriteFile(big, makeTar(t, tarEntry{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 12<<20)}), 0o644)
	notELF := filepath.Join(dir, "agent.sh")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	corrupt := filepath.Join(dir, "corrupt.tar")
	os.WriteFile(corrupt, makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, body: strings.Repeat("y", 10000)})[:3000], 0o644)
	gzCorrupt := filepath.Join(dir, "corrupt.tar.gz")
	os.WriteFile(gzCorrupt, []byte{0x1f, 0x8b, 8, 0, 0, 0}, 0o644)

	cfg := testConfig(t)
	tests := []struct {
		name string
		cfg  Config
		src  Source
		is   error
		want string
	}{
		{"too large for disk", Config{DiskSize: 32 << 20, AgentPath: agentBin(t)}, Tarball(thirty), ErrTooLarge, "the disk is 32 MiB"},
		{"content cap", Config{DiskSize: 64 << 20, MaxContentBytes: 1 << 20, AgentPath: agentBin(t)}, Tarball(big), ErrTooLarge, "cap of 1 MiB"},
		{"missing agent", Config{DiskSize: 64 << 20, AgentPath: filepath.Join(dir, "nope")}, Tarball(small), ErrBadAgent, "does not exist"},
		{"no agent", Config{DiskSize: 64 << 20}, Tarball(small), ErrBadAgent, "no agent path"},
		{"script agent", Config{DiskSize: 64 << 20, AgentPath: notELF}, Tarball(small), ErrBadAgent, "not an ELF"},
		{"dynamic agent", Config{DiskSize: 64 << 20, AgentPath: "/bin/true"}, Tarball(small), ErrBadAgent, "CGO_ENABLED=0"},
		{"corrupt tar", cfg, Tarball(corrupt), ErrBadLayer, "unexpected EOF"},
		{"corrupt gzip", cfg, Tarball(gzCorrupt), ErrBadLayer, "gzip"},
		{"missing tarball", cfg, Tarball(filepath.Join(dir, "nope.tar")), ErrBadLayer, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(context.Background(), tt.cfg, tt.src, filepath.Join(t.TempDir(), "out.ext4"))
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %v containing %q", err, tt.is, tt.want)
			}
		})
	}
	for _, c := range []Config{{DiskSize: 1 << 20, AgentPath: agentBin(t)}, {DiskSize: 64<<20 + 1, AgentPath: agentBin(t)}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
}

// TestMkfsFull covers mkfs.ext4 running out of space, which the size
// estimate in Build normally prevents: the error must still say what to do.
func TestMkfsFull(t *testing.T) {
	stage := filepath.Join(t.TempDir(), "s")
	os.Mkdir(stage, 0o755)
	st, err := newStager(stage, 1<<30, false)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	data := makeTar(t, tarEntry{name: "big", typ: tar.TypeReg, body: strings.Repeat("z", 20<<20)})
	if err := st.applyTar(context.Background(), bytes.NewReader(data), false); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "full.ext4")
	err = writeExt4(context.Background(), "mkfs.ext4", Config{DiskSize: 16 << 20, Label: "t"}, st, out)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "does not fit a 16 MiB disk") {
		t.Errorf("got %v, want ErrTooLarge saying it does not fit", err)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("left %s.tmp behind", out)
	}
}

func TestBadWhiteouts(t *testing.T) {
	for _, name := range []string{"a/b/.wh...", "a/.wh.", "a/.wh.."} {
		stage := filepath.Join(t.TempDir(), "s")
		os.Mkdir(stage, 0o755)
		st, err := newStager(stage, 1<<20, false)
		if err != nil {
			t.Fatal(err)
		}
		data := makeTar(t, tarEntry{name: "a/b/keep", typ: tar.TypeReg, body: "x"})
		if err := st.applyTar(context.Background(), bytes.NewReader(data), true); err != nil {
			t.Fatal(err)
		}
		err = st.applyTar(context.Background(), bytes.NewReader(makeTar(t, tarEntry{name: name, typ: tar.TypeReg})), true)
		if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("whiteout %q: got %v, want ErrUnsafePath", name, err)
		}
		if _, err := os.Stat(filepath.Join(stage, "a/b/keep")); err != nil {
			t.Errorf("whiteout %q removed a/b/keep: %v", name, err)
		}
		st.close()
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"./etc/passwd", "etc/passwd"},
		{"/etc/passwd", "etc/passwd"},
		{"etc//passwd", "etc/passwd"},
		{"./", "."},
		{"", "."},
		{"a/./b/", "a/b"},
		{"../x", ""},
		{"a/../b", ""},
		{"a\x00b", ""},
	}
	for _, tt := range tests {
		got, err := cleanName(tt.in)
		if tt.want == "" {
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("cleanName(%q): got %q, %v; want ErrUnsafePath", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("cleanName(%q): got %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzApplyTar: layers come from users' images; whatever they hold, the
// stager must not panic or write outside its root.
func FuzzApplyTar(f *testing.F) {
	f.Add(makeTar(f, tarEntry{name: "a/b", typ: tar.TypeReg, body: "x"}, tarEntry{name: "a/.wh.b", typ: tar.TypeReg}))
	f.Add(makeTar(f, tarEntry{name: "l", typ: tar.TypeSymlink, link: "/"}, tarEntry{name: "l/x", typ: tar.TypeReg}))
	f.Add(makeTar(f, tarEntry{name: "d/.wh..wh..opq", typ: tar.TypeReg}, tarEntry{name: "h", typ: tar.TypeLink, link: "d"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		stage := filepath.Join(outer, "stage")
		os.Mkdir(stage, 0o755)
		st, err := newStager(stage, 1<<20, true)
		if err != nil {
			t.Fatal(err)
		}
		defer st.close()
		st.applyTar(context.Background(), bytes.NewReader(data), true)
		ents, _ := os.ReadDir(outer)
		if len(ents) != 1 {
			t.Fatalf("something was written next to the staging directory: %v", ents)
		}
	})
}
