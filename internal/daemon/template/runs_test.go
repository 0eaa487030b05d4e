package template

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

func TestRunsFailedBuild(t *testing.T) {
	release := make(chan struct{})
	b, st, lay := newBuilder(t, func(_ context.Context, _ BootRequest, log io.Writer) ([]store.Phase, error) {
		io.WriteString(log, "step 1 output\n")
		<-release
		return nil, errors.New("step 2 ended with exit code 3")
	})
	rs := NewRuns(t.Context(), b, nil)
	spec := ext4Spec(t)
	info, err := rs.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.ID, "build-") || info.State != RunBuilding {
		t.Errorf("got %+v, want a building build- run", info)
	}
	if _, err := rs.Start(spec); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second build of the same template: got %v, want already exists", err)
	}
	if _, err := rs.Get("other", info.ID); !errdefs.IsNotFound(err) {
		t.Errorf("run under another template's name: got %v, want not found", err)
	}
	var got bytes.Buffer
	followed := make(chan error, 1)
	go func() { followed <- rs.CopyLog(t.Context(), spec.Name, info.ID, true, &got, nil) }()
	close(release)
	if err := <-followed; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"step 1 output", "build failed: build VM " + info.ID + ": step 2 ended with exit code 3"} {
		if !strings.Contains(got.String(), want) {
			t.Errorf("got log %q, want it to contain %q", got.String(), want)
		}
	}
	fin, err := rs.Get(spec.Name, info.ID)
	if err != nil || fin.State != RunFailed || !strings.Contains(fin.Reason, "exit code 3") || fin.Finished.IsZero() {
		t.Errorf("got %+v, %v, want a finished failed run with the reason", fin, err)
	}
	if ts, _ := st.Templates(); len(ts) != 0 {
		t.Errorf("got templates %v, want none", ts)
	}
	if l := leftovers(t, lay); len(l) != 0 {
		t.Errorf("left behind %v", l)
	}
}

func TestRunsRefuseBeforeStarting(t *testing.T) {
	b, _, _ := newBuilder(t, func(context.Context, BootRequest, io.Writer) ([]store.Phase, error) { return nil, nil })
	b.Kernel = "/nonexistent/vmlinux"
	rs := NewRuns(t.Context(), b, nil)
	if _, err := rs.Start(ext4Spec(t)); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "guest kernel") {
		t.Errorf("got %v, want unavailable naming the guest kernel", err)
	}
	s := ext4Spec(t)
	s.MemoryMiB = 0
	if _, err := rs.Start(s); !errdefs.IsInvalidArgument(err) {
		t.Errorf("got %v, want invalid argument", err)
	}
}

func TestRunLogCap(t *testing.T) {
	r := &run{changed: make(chan struct{})}
	big := bytes.Repeat([]byte("x"), MaxLogBytes/2+1)
	r.Write(big)
	r.Write(big)
	r.Write([]byte("more"))
	if len(r.buf) > MaxLogBytes+100 || !bytes.HasSuffix(r.buf, []byte("log cut at 8 MiB\n")) {
		t.Errorf("got a %d-byte log ending %q, want at most the cap and a cut note", len(r.buf), r.buf[len(r.buf)-30:])
	}
}

func TestRunsWaitAfterCancel(t *testing.T) {
	started, stopped := make(chan struct{}), make(chan struct{})
	b, _, _ := newBuilder(t, func(ctx context.Context, _ BootRequest, _ io.Writer) ([]store.Phase, error) {
		close(started)
		<-ctx.Done()
		close(stopped) // the VM is stopped on the way out
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithCancel(t.Context())
	rs := NewRuns(ctx, b, nil)
	info, err := rs.Start(ext4Spec(t))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	rs.Wait()
	select {
	case <-stopped:
	default:
		t.Fatal("Wait returned before the build VM was stopped")
	}
	if got, _ := rs.Get(info.Name, info.ID); got.State != RunFailed || !strings.Contains(got.Reason, "context canceled") {
		t.Errorf("got %+v, want failed: context canceled", got)
	}
}
