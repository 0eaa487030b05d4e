package agent_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/testenv"
)

func TestUploadDownload(t *testing.T) {
	h := start(t, agent.Config{})
	ctx := ctxT(t)
	data := make([]byte, 5<<20+17)
	rand.Read(data)
	p := filepath.Join(h.dir, "sub", "dir", "blob.bin")
	fi, err := h.client.Upload(ctx, p, bytes.NewReader(data), agentapi.UploadOptions{Mode: 0o640, Mkdirs: true})
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	if fi.Size != int64(len(data)) || fi.Mode != 0o640 || fi.Type != agentapi.TypeFile || fi.Path != p {
		t.Errorf("Upload returned %+v, want a %d-byte file with mode 0640 at %s", fi, len(data), p)
	}
	onDisk, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Errorf("file on disk differs from the upload (%d bytes, %v)", len(onDisk), err)
	}
	rc, size, err := h.client.Download(ctx, p)
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Errorf("Download: got %d bytes (size %d, %v), want the %d uploaded bytes", len(got), size, err, len(data))
	}
	// Replacing keeps the path, changes the content.
	if _, err := h.client.Upload(ctx, p, strings.NewReader("short"), agentapi.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "short" {
		t.Errorf("after replacing: got %q, want %q", b, "short")
	}
}

// failingReader fails after n bytes, like a client that dies mid-upload.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("client went away")
	}
	n := min(len(p), r.n)
	r.n -= n
	return n, nil
}

func TestUploadFailureLeavesNothing(t *testing.T) {
	h := start(t, agent.Config{})
	p := filepath.Join(h.dir, "partial")
	if _, err := h.client.Upload(ctxT(t), p, &failingReader{n: 1 << 20}, agentapi.UploadOptions{}); err == nil {
		t.Fatal("Upload from a failing reader succeeded")
	}
	// The agent notices the cut stream after the client has given up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(h.dir)
		if len(ents) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, e := range ents {
				t.Errorf("left behind: %s", e.Name())
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFileOps(t *testing.T) {
	h := start(t, agent.Config{})
	ctx := ctxT(t)
	d := filepath.Join(h.dir, "a", "b")
	fi, err := h.client.Mkdir(ctx, agentapi.MkdirRequest{Path: d, Mode: 0o750, Parents: true})
	if err != nil || fi.Type != agentapi.TypeDir || fi.Mode != 0o750 {
		t.Fatalf("Mkdir: got %+v, %v; want a dir with mode 0750", fi, err)
	}
	if _, err := h.client.Mkdir(ctx, agentapi.MkdirRequest{Path: d}); !errors.Is(err, agentapi.ErrExists) {
		t.Errorf("Mkdir of an existing dir: got %v, want already exists", err)
	}
	os.WriteFile(filepath.Join(d, "f1"), []byte("one"), 0o600)
	os.WriteFile(filepath.Join(d, "f2"), []byte("two!"), 0o644)
	os.Symlink("f1", filepath.Join(d, "link"))

	list, err := h.client.List(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, e.Name+":"+e.Type)
	}
	if got, want := strings.Join(names, " "), "f1:file f2:file link:symlink"; got != want {
		t.Errorf("List: got %s, want %s", got, want)
	}
	st, err := h.client.Stat(ctx, filepath.Join(d, "link"))
	if err != nil || st.Target != "f1" || st.Type != agentapi.TypeSymlink {
		t.Errorf("Stat(link): got %+v, %v; want a symlink to f1", st, err)
	}
	st, err = h.client.Stat(ctx, filepath.Join(d, "f2"))
	if err != nil || st.Size != 4 || st.Mode != 0o644 || st.UID != os.Getuid() {
		t.Errorf("Stat(f2): got %+v, %v; want 4 bytes, mode 0644, uid %d", st, err, os.Getuid())
	}

	if err := h.client.Rename(ctx, filepath.Join(d, "f2"), filepath.Join(d, "f3")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Stat(ctx, filepath.Join(d, "f2")); !errors.Is(err, agentapi.ErrNotFound) {
		t.Errorf("Stat after rename: got %v, want not found", err)
	}
	a := filepath.Join(h.dir, "a")
	err = h.client.Remove(ctx, agentapi.RemoveRequest{Path: a})
	if !errors.Is(err, agentapi.ErrPrecondition) || !strings.Contains(err.Error(), "set recursive") {
		t.Errorf("Remove non-empty: got %v, want a failed precondition naming recursive", err)
	}
	if err := h.client.Remove(ctx, agentapi.RemoveRequest{Path: a, Recursive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); !os.IsNotExist(err) {
		t.Errorf("after recursive remove, stat: %v", err)
	}
}

func TestFileErrors(t *testing.T) {
	h := start(t, agent.Config{})
	ctx := ctxT(t)
	f := filepath.Join(h.dir, "file")
	os.WriteFile(f, []byte("x"), 0o644)
	tests := []struct {
		name string
		call func() error
		kind agentapi.Kind
		want string
	}{
		{"relative", func() error { _, err := h.client.Stat(ctx, "etc/passwd"); return err }, agentapi.KindInvalid, "not absolute"},
		{"dotdot", func() error { _, err := h.client.List(ctx, h.dir+"/../x"); return err }, agentapi.KindInvalid, "not clean"},
		{"missing", func() error { _, err := h.client.Stat(ctx, h.dir+"/nope"); return err }, agentapi.KindNotFound, "no such file"},
		{"list a file", func() error { _, err := h.client.List(ctx, f); return err }, agentapi.KindPrecondition, "not a directory"},
		{"download a dir", func() error { _, _, err := h.client.Download(ctx, h.dir); return err }, agentapi.KindPrecondition, "only files can be downloaded"},
		{"download missing", func() error { _, _, err := h.client.Download(ctx, h.dir+"/nope"); return err }, agentapi.KindNotFound, "no such file"},
		{"upload onto a dir", func() error {
			_, err := h.client.Upload(ctx, h.dir, strings.NewReader("x"), agentapi.UploadOptions{})
			return err
		}, agentapi.KindPrecondition, "is a directory"},
		{"upload without parent", func() error {
			_, err := h.client.Upload(ctx, h.dir+"/no/such/f", strings.NewReader("x"), agentapi.UploadOptions{})
			return err
		}, agentapi.KindNotFound, "set mkdirs"},
		{"remove root", func() error { return h.client.Remove(ctx, agentapi.RemoveRequest{Path: "/", Recursive: true}) }, agentapi.KindInvalid, "refusing to remove /"},
		{"rename missing", func() error { return h.client.Rename(ctx, h.dir+"/nope", h.dir+"/x") }, agentapi.KindNotFound, "no such file"},
		{"mkdir under file", func() error {
			_, err := h.client.Mkdir(ctx, agentapi.MkdirRequest{Path: f + "/sub", Parents: true})
			return err
		}, agentapi.KindPrecondition, "not a directory"},
	}
	for _, tt := range tests {
		err := tt.call()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if got := agentapi.KindOf(err); got != tt.kind {
			t.Errorf("%s: got kind %s, want %s", tt.name, got, tt.kind)
		}
	}
}

func TestUploadOwner(t *testing.T) {
	testenv.RequireRoot(t)
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("sandbox:x:1234:2345::/tmp:/bin/sh\n"), 0o644)
	h := start(t, agent.Config{EtcDir: etc})
	ctx := ctxT(t)
	if _, err := h.client.Init(ctx, agentapi.InitRequest{User: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	fi, err := h.client.Upload(ctx, h.dir+"/new/f", strings.NewReader("x"), agentapi.UploadOptions{Mkdirs: true})
	if err != nil || fi.UID != 1234 || fi.GID != 2345 {
		t.Errorf("Upload for the default user: got %+v, %v; want owner 1234:2345", fi, err)
	}
	dir, err := h.client.Stat(ctx, h.dir+"/new")
	if err != nil || dir.UID != 1234 {
		t.Errorf("created parent: got %+v, %v; want owner 1234", dir, err)
	}
	fi, err = h.client.Upload(ctx, h.dir+"/rootfile", strings.NewReader("x"), agentapi.UploadOptions{User: "0:0"})
	if err != nil || fi.UID != 0 {
		t.Errorf("Upload for root: got %+v, %v; want owner 0", fi, err)
	}
}
