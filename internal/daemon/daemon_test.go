package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/thawapi"
)

func noEnv(string) (string, bool) { return "", false }

func unixClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

// TestServesAndStops runs thawd in process on a real XFS data directory:
// it serves the API on its socket, applies a settings change, and on
// cancellation stops cleanly, removing its socket.
func TestServesAndStops(t *testing.T) {
	data := disktest.Mount(t, "xfs", 300)
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	args := []string{"-config", "/dev/null", "-data-dir", data, "-socket", sock, "-max-concurrent-restores", "3"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs testenv.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, args, noEnv, []string{"THAW_UFFD_PREFTCH=0"}, &logs) }()

	c := unixClient(sock)
	var resp *http.Response
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		resp, err = c.Get("http://thawd/v1/settings")
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("thawd exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("thawd never answered on %s: %v\n%s", sock, err, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var s thawapi.Settings
	json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if !s.UFFD || s.RestoreSlots.Limit != 3 {
		t.Errorf("settings = %+v, want uffd on and the flag's 3 slots", s)
	}
	req, _ := http.NewRequest("PATCH", "http://thawd/v1/settings", strings.NewReader(`{"uffd":false}`))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"uffd":false`) {
		t.Errorf("PATCH: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get("http://thawd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "thaw_uffd_enabled 0") || !strings.Contains(string(body), `thaw_restore_slots{kind="limit"} 3`) {
		t.Errorf("metrics do not show the live settings:\n%s", body)
	}
	if !strings.Contains(logs.String(), "THAW_UFFD_PREFTCH") {
		t.Errorf("no warning about the unknown variable in the log:\n%s", logs.String())
	}

	// A second thawd on the same data directory and socket is refused,
	// and does not touch the first one's staging area.
	staged := filepath.Join(data, "tmp", "stage-py-b1-1")
	if err := os.Mkdir(staged, 0o700); err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), args, noEnv, nil, io.Discard)
	if !errdefs.IsUnavailable(err) {
		t.Errorf("second thawd: got %v, want unavailable", err)
	}
	if _, err := os.Stat(staged); err != nil {
		t.Errorf("the second thawd cleared the first one's staging directory: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("thawd returned %v on shutdown, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("thawd did not stop within 10s of cancellation")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "thawd.db")); err != nil {
		t.Errorf("store file: %v", err)
	}
}

// TestRefusesDataDirWithoutReflinks: on ext4 thawd does not start, says
// why, and opens no socket.
func TestRefusesDataDirWithoutReflinks(t *testing.T) {
	data := disktest.Mount(t, "ext4", 32)
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	err := Run(context.Background(), []string{"-config", "/dev/null", "-data-dir", data, "-socket", sock}, noEnv, nil, io.Discard)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "cannot make reflinks") {
		t.Errorf("got %v, want a failed-precondition error about reflinks", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("a socket exists after a refused start: %v", err)
	}
}

func TestBadConfigIsAnError(t *testing.T) {
	tests := []struct {
		args []string
		env  func(string) (string, bool)
		want string
	}{
		{[]string{"-config", "/dev/null", "-uffd=maybe"}, noEnv, `invalid boolean value "maybe" for -uffd`},
		{[]string{"-config", "/dev/null"}, func(k string) (string, bool) {
			if k == "THAW_MAX_CONCURRENT_RESTORES" {
				return "many", true
			}
			return "", false
		}, "environment THAW_MAX_CONCURRENT_RESTORES"},
		{[]string{"-config", "/dev/null", "-tcp-addr", "127.0.0.1:0"}, noEnv, "token_file: must be set"},
	}
	for _, tt := range tests {
		err := Run(context.Background(), tt.args, tt.env, nil, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Run(%q): got %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

// TestBuiltinVMMSpelling: the config's name for the builtin VMM is the
// shim's, which thawd passes through as the shim's --vmm.
func TestBuiltinVMMSpelling(t *testing.T) {
	if config.BuiltinVMM != shim.BuiltinVMM {
		t.Errorf("config.BuiltinVMM %q, shim.BuiltinVMM %q: want them equal", config.BuiltinVMM, shim.BuiltinVMM)
	}
}
