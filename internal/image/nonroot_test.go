package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/thawvm/thaw/internal/testenv"
)

const nonRootEnv = "THAW_IMAGE_TEST_NONROOT_DIR"

// TestBuildAsNonRoot builds an image as uid 65534 in a child process and
// checks that owners, unreadable modes, directories without write
// permission, setuid bits and device nodes come out as if root had built it.
func TestBuildAsNonRoot(t *testing.T) {
	if dir := os.Getenv(nonRootEnv); dir != "" {
		_, err := Build(context.Background(),
			Config{DiskSize: 64 << 20, AgentPath: filepath.Join(dir, "agent"), TempDir: dir},
			Tarball(filepath.Join(dir, "src.tar")), filepath.Join(dir, "out.ext4"))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	testenv.RequireRoot(t)
	dir, err := os.MkdirTemp("", "thaw-nonroot")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chown(dir, 65534, 65534))
	copyFile := func(from, to string) {
		t.Helper()
		src, err := os.Open(from)
		must(err)
		defer src.Close()
		dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
		must(err)
		_, err = io.Copy(dst, src)
		must(err)
		must(dst.Close())
	}
	copyFile(agentBin(t), filepath.Join(dir, "agent"))
	self, err := os.Executable()
	must(err)
	copyFile(self, filepath.Join(dir, "image.test"))
	must(os.WriteFile(filepath.Join(dir, "src.tar"), makeTar(t,
		tarEntry{name: "locked/", typ: tar.TypeDir, mode: 0o555},
		tarEntry{name: "locked/f", typ: tar.TypeReg, body: "in a read-only dir", mode: 0o444},
		tarEntry{name: "secret", typ: tar.TypeReg, body: "s", mode: 0o200}, // the owner cannot read it
		tarEntry{name: "root/", typ: tar.TypeDir, mode: 0o700},
		tarEntry{name: "root/.profile", typ: tar.TypeReg, body: "p", mode: 0o600},
		tarEntry{name: "usr/bin/su", typ: tar.TypeReg, body: "su", mode: 0o4755},
		tarEntry{name: "home/u/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		tarEntry{name: "home/u/a", typ: tar.TypeReg, body: "shared", mode: 0o400, uid: 1000, gid: 1000},
		tarEntry{name: "home/u/b", typ: tar.TypeLink, link: "home/u/a"}, // same inode: same owner and mode
		tarEntry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		tarEntry{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, gid: 6, major: 8, minor: 0},
	), 0o644))

	cmd := exec.Command(filepath.Join(dir, "image.test"), "-test.run=^TestBuildAsNonRoot$")
	cmd.Env = append(os.Environ(), nonRootEnv+"="+dir, "TMPDIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building as uid 65534: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "out.ext4")
	fsck(t, img)
	tests := []struct {
		path string
		want inode
	}{
		{"/locked", inode{typ: "directory", mode: 0o555}},
		{"/locked/f", inode{typ: "regular", mode: 0o444, size: 18, links: 1}},
		{"/secret", inode{typ: "regular", mode: 0o200, size: 1, links: 1}},
		{"/root", inode{typ: "directory", mode: 0o700}},
		{"/root/.profile", inode{typ: "regular", mode: 0o600, size: 1, links: 1}},
		{"/usr/bin/su", inode{typ: "regular", mode: 0o4755, size: 2, links: 1}},
		{"/home/u", inode{typ: "directory", mode: 0o750, uid: 1000, gid: 1000}},
		{"/home/u/a", inode{typ: "regular", mode: 0o400, uid: 1000, gid: 1000, size: 6, links: 2}},
		{"/home/u/b", inode{typ: "regular", mode: 0o400, uid: 1000, gid: 1000, size: 6, links: 2}},
		{"/dev/null", inode{typ: "character special", mode: 0o666, links: 1, major: 1, minor: 3}},
		{"/dev/sda", inode{typ: "block special", mode: 0o660, gid: 6, links: 1, major: 8, minor: 0}},
		{"/", inode{typ: "directory", mode: 0o755}},
	}
	for _, tt := range tests {
		got, ok := stat(t, img, tt.path)
		if tt.want.typ == "directory" {
			got.size, got.links = 0, 0
		}
		if !ok || got != tt.want {
			t.Errorf("%s: got %+v (exists %v), want %+v", tt.path, got, ok, tt.want)
		}
	}
	if got := cat(t, img, "/secret"); string(got) != "s" {
		t.Errorf("/secret: got %q", got)
	}
	checkAgentInjected(t, img, "/sbin")
}
