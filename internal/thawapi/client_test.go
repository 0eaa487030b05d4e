package thawapi_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/api"
	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// serve runs the real API server on a unix socket over a real store holding
// template "py" and sandbox "sb1", and returns the socket and the server.
func serve(t *testing.T) (string, *api.Server) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "thawd.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := store.Build{ID: "b1", State: store.BuildReady, Dir: "/d/b1", VCPUs: 1, MemoryMiB: 128, DiskMiB: 64,
		Artifacts: store.Artifacts{Memory: "mem", VMState: "vmstate", Rootfs: "rootfs"}, CreatedAt: t0}
	if err := st.CreateTemplate(store.Template{Name: "py", Builds: []store.Build{b}, Current: "b1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateSandbox(store.Sandbox{ID: "sb1", Template: "py", Build: "b1", State: store.Creating, Dir: "/d/sb1", CreatedAt: t0,
		Create: []store.Phase{{Name: "slot", Duration: time.Millisecond}}}); err != nil {
		t.Fatal(err)
	}
	settings, err := live.New(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	lay, err := layout.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Options{Store: st, Layout: lay, Settings: settings, Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "thawd.sock")
	l, err := api.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := api.NewHTTPServer(srv)
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return sock, srv
}

func TestClient(t *testing.T) {
	sock, _ := serve(t)
	c := thawapi.NewUnix(sock)
	defer c.Close()
	ctx := context.Background()
	if v, err := c.Version(ctx); err != nil || v.Version != "1.2.3" || v.API != "v1" {
		t.Errorf("Version = %+v, %v", v, err)
	}
	if ts, err := c.Templates(ctx); err != nil || len(ts) != 1 || ts[0].Current != "b1" {
		t.Errorf("Templates = %+v, %v", ts, err)
	}
	if tp, err := c.Template(ctx, "py"); err != nil || len(tp.Builds) != 1 {
		t.Errorf("Template = %+v, %v", tp, err)
	}
	if sbs, err := c.Sandboxes(ctx); err != nil || len(sbs) != 1 || sbs[0].State != "creating" {
		t.Errorf("Sandboxes = %+v, %v", sbs, err)
	}
	if sb, err := c.Sandbox(ctx, "sb1"); err != nil || sb.CreateMS != 1 {
		t.Errorf("Sandbox = %+v, %v", sb, err)
	}
	if err := c.DeleteTemplate(ctx, "py", false); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "sb1") {
		t.Errorf("DeleteTemplate(py) in use: got %v, want failed precondition naming sb1", err)
	}
	off, n := false, 7
	s, err := c.PatchSettings(ctx, thawapi.SettingsPatch{UFFD: &off, MaxConcurrentRestores: &n})
	if err != nil || s.UFFD || s.RestoreSlots.Limit != 7 {
		t.Errorf("PatchSettings = %+v, %v", s, err)
	}
	if s, err := c.Settings(ctx); err != nil || s.UFFD || s.RestoreSlots.Limit != 7 {
		t.Errorf("Settings after patch = %+v, %v", s, err)
	}
}

// TestClientErrorKinds: the server's error kinds survive the trip, and the
// message is the server's.
func TestClientErrorKinds(t *testing.T) {
	sock, _ := serve(t)
	c := thawapi.NewUnix(sock)
	defer c.Close()
	ctx := context.Background()
	_, err := c.Sandbox(ctx, "nope")
	if !errdefs.IsNotFound(err) || err.Error() != `sandbox "nope" not found` {
		t.Errorf("unknown sandbox: %v (kind %v)", err, errdefs.KindOf(err))
	}
	if _, err := c.Template(ctx, "../etc"); !errdefs.IsNotFound(err) && !errdefs.IsInvalidArgument(err) {
		t.Errorf("escaped name: got %v, want not found or invalid argument", err)
	}
	if _, err := c.Sandbox(ctx, "build-1"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("ephemeral id: got %v, want invalid argument", err)
	}
	zero := 0
	if _, err := c.PatchSettings(ctx, thawapi.SettingsPatch{MaxConcurrentRestores: &zero}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("zero slots: got %v, want invalid argument", err)
	}
	down := thawapi.NewUnix(filepath.Join(t.TempDir(), "absent.sock"))
	if _, err := down.Version(ctx); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "is it running?") {
		t.Errorf("no thawd: got %v, want unavailable saying so", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Version(cctx); !errdefs.IsCanceled(err) {
		t.Errorf("canceled context: got %v, want canceled", err)
	}
}

func TestClientToken(t *testing.T) {
	_, srv := serve(t)
	token := "0123456789abcdef0123456789abcdef"
	h, err := srv.RequireToken([]byte(token), srv)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := api.NewHTTPServer(h)
	go hs.Serve(l)
	defer hs.Close()
	ctx := context.Background()
	if _, err := thawapi.NewTCP(l.Addr().String(), token).Version(ctx); err != nil {
		t.Errorf("right token: %v", err)
	}
	if _, err := thawapi.NewTCP(l.Addr().String(), "wrong").Version(ctx); !errdefs.IsUnauthenticated(err) {
		t.Errorf("wrong token: got %v, want unauthenticated", err)
	}
}
