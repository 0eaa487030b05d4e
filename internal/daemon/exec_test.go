package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/thawapi"
)

// TestExecAndFiles runs exec (stdin in, stdout and stderr out, exit code)
// and a file upload and download through thawd's API, its client and the
// vsock path to an agent.
func TestExecAndFiles(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	bins := sandboxtest.Binaries(t)
	snap := sandboxtest.ProbeSnapshot(t, t.TempDir())
	data := filepath.Join(disktest.Mount(t, "xfs", 400), "d")
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startThawd(t, bins, data, sock)
	defer p.stop(syscall.SIGTERM)
	c := thawapi.NewUnix(sock)
	if _, err := c.RegisterTemplate(ctx, "probe", thawapi.RegisterTemplate{VMState: snap.VMState, Memory: snap.Memory, Rootfs: snap.Rootfs,
		VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB,
		Ready: &thawapi.ReadyCheck{Kind: "serial", Marker: sandboxtest.ReadyMarker}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"x", "noagent"} {
		if _, err := c.CreateSandbox(ctx, thawapi.CreateSandbox{ID: id, Template: "probe"}); err != nil {
			t.Fatal(err)
		}
		defer c.DeleteSandbox(context.Background(), id)
	}
	sandboxtest.ServeVsockAgent(t, filepath.Join(data, "sandboxes", "x", sandbox.VsockName))

	// The page servers' counters reach /metrics: two sandboxes, and the
	// prefetcher installed the recorded pages.
	resp, err := unixClient(sock).Get("http://thawd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "thaw_uffd_page_servers 2\n") || strings.Contains(string(metrics), "thaw_uffd_prefetched_pages 0\n") {
		t.Errorf("page-server metrics: want 2 page servers and some prefetched pages:\n%s", grepLines(string(metrics), "thaw_uffd_"))
	}

	var stdout, stderr bytes.Buffer
	st, err := c.Exec(ctx, "x", thawapi.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; cat; exit 3"}},
		strings.NewReader("from stdin\n"), &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 3 || stdout.String() != "out\nfrom stdin\n" || stderr.String() != "err\n" {
		t.Errorf("exec: got code %d, stdout %q, stderr %q; want 3, %q, %q", st.Code, stdout.String(), stderr.String(), "out\nfrom stdin\n", "err\n")
	}
	st, err = c.Exec(ctx, "x", thawapi.ExecRequest{Shell: "sleep 5", TimeoutMS: 100}, nil, io.Discard, io.Discard)
	if err != nil || !st.TimedOut {
		t.Errorf("exec past its timeout: got %+v, %v, want timed out", st, err)
	}
	if _, err := c.Exec(ctx, "x", thawapi.ExecRequest{}, nil, io.Discard, io.Discard); !errdefs.IsInvalidArgument(err) {
		t.Errorf("exec without a command: got %v, want invalid argument", err)
	}
	if _, err := c.Exec(ctx, "noagent", thawapi.ExecRequest{Argv: []string{"true"}}, nil, io.Discard, io.Discard); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec in a sandbox without an agent: got %v, want failed precondition", err)
	}

	payload := bytes.Repeat([]byte("thaw "), 200000) // 1 MB, several frames
	path := filepath.Join(t.TempDir(), "up", "file")
	fi, err := c.Upload(ctx, "x", path, bytes.NewReader(payload), 0o600, true)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size != int64(len(payload)) || fi.Mode&0o777 != 0o600 {
		t.Errorf("upload: got %+v, want size %d mode 0600", fi, len(payload))
	}
	rc, err := c.Download(ctx, "x", path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("download: got %d bytes (%v), want the %d uploaded", len(got), err, len(payload))
	}
	if _, err := c.Download(ctx, "x", filepath.Join(filepath.Dir(path), "missing")); !errdefs.IsNotFound(err) {
		t.Errorf("download of a missing file: got %v, want not found", err)
	}
	if _, err := c.Upload(ctx, "x", "relative/path", strings.NewReader("x"), 0, false); !errdefs.IsInvalidArgument(err) {
		t.Errorf("upload to a relative path: got %v, want invalid argument", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("uploaded file on the agent's side: %v", err)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
