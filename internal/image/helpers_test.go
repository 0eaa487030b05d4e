package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// agentBin builds a static thaw-agent once per test binary (lazily, so
// fuzzing workers do not pay for it) and returns its path.
func agentBin(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "thaw-image-test")
		if err != nil {
			agentErr = err
			return
		}
		agentPath = filepath.Join(dir, "thaw-agent")
		cmd := exec.Command("go", "build", "-o", agentPath, "../../cmd/thaw-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("building thaw-agent: %v\n%s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if agentPath != "" {
		os.RemoveAll(filepath.Dir(agentPath))
	}
	os.Exit(code)
}

// inode is what debugfs says about one path in an ext4 image.
type inode struct {
	typ        string // regular, directory, symlink, character special, FIFO, ...
	mode       uint32 // permission bits (with setuid etc.)
	uid, gid   int
	size       int64
	links      int
	linkTarget string
	major      int
	minor      int
}

var (
	reType   = regexp.MustCompile(`Type: (.+?)\s+Mode:\s+(\d+)`)
	reOwner  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reSize   = regexp.MustCompile(`Size: (\d+)`)
	reLinks  = regexp.MustCompile(`Links: (\d+)`)
	reFast   = regexp.MustCompile(`Fast link dest: "(.*)"`)
	reDevice = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
)

func debugfs(t *testing.T, img, req string) (string, string) {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", req, img)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", req, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// stat reads an inode from img without mounting it; ok is false when the
// path does not exist.
func stat(t *testing.T, img, p string) (inode, bool) {
	t.Helper()
	out, errOut := debugfs(t, img, "stat \""+p+"\"")
	if strings.Contains(errOut, "File not found") {
		return inode{}, false
	}
	m := reType.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("debugfs stat %s: unexpected output %q %q", p, out, errOut)
	}
	var in inode
	in.typ = m[1]
	mode, _ := strconv.ParseUint(m[2], 8, 32)
	in.mode = uint32(mode)
	if m := reOwner.FindStringSubmatch(out); m != nil {
		in.uid, _ = strconv.Atoi(m[1])
		in.gid, _ = strconv.Atoi(m[2])
	}
	if m := reSize.FindStringSubmatch(out); m != nil {
		in.size, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLinks.FindStringSubmatch(out); m != nil {
		in.links, _ = strconv.Atoi(m[1])
	}
	if m := reFast.FindStringSubmatch(out); m != nil {
		in.linkTarget = m[1]
	}
	if m := reDevice.FindStringSubmatch(out); m != nil {
		in.major, _ = strconv.Atoi(m[1])
		in.minor, _ = strconv.Atoi(m[2])
	}
	return in, true
}

// cat reads a file from img.
func cat(t *testing.T, img, p string) []byte {
	t.Helper()
	dump := filepath.Join(t.TempDir(), "dump")
	debugfs(t, img, fmt.Sprintf("dump \"%s\" %s", p, dump))
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatalf("dumping %s: %v", p, err)
	}
	return b
}

// fsck checks img's consistency.
func fsck(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// tarEntry describes one entry of a generated tar.
type tarEntry struct {
	name     string
	typ      byte
	body     string
	mode     int64
	uid, gid int
	link     string
	major    int64
	minor    int64
}

func makeTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if e.typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0),
			Devmajor: e.major, Devminor: e.minor,
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testConfig(t testing.TB) Config {
	return Config{DiskSize: 64 << 20, AgentPath: agentBin(t)}
}

// checkAgentInjected verifies the agent binary and the init link.
func checkAgentInjected(t *testing.T, img, sbin string) {
	t.Helper()
	want, err := os.ReadFile(agentBin(t))
	if err != nil {
		t.Fatal(err)
	}
	in, ok := stat(t, img, sbin+"/thaw-agent")
	if !ok || in.typ != "regular" || in.mode != 0o755 || in.uid != 0 {
		t.Errorf("%s/thaw-agent: got %+v (exists %v), want a root-owned 0755 file", sbin, in, ok)
	}
	if got := cat(t, img, sbin+"/thaw-agent"); !bytes.Equal(got, want) {
		t.Errorf("%s/thaw-agent: %d bytes differ from the %d-byte agent", sbin, len(got), len(want))
	}
	init, ok := stat(t, img, sbin+"/init")
	if !ok || init.typ != "symlink" || init.linkTarget != "thaw-agent" {
		t.Errorf("%s/init: got %+v, want a symlink to thaw-agent", sbin, init)
	}
	if c, ok := stat(t, img, "/dev/console"); !ok || c.typ != "character special" || c.major != 5 || c.minor != 1 {
		t.Errorf("/dev/console: got %+v (exists %v), want the console device 5:1", c, ok)
	}
}
