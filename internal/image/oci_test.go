package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/thawvm/thaw/internal/testenv"
)

func layer(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	data := makeTar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// layeredImage is a three-layer linux/amd64 image exercising whiteouts,
// opaque directories, replacement across layers and hard links.
func layeredImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	l1 := layer(t,
		tarEntry{name: "etc/", typ: tar.TypeDir},
		tarEntry{name: "etc/keep", typ: tar.TypeReg, body: "v1"},
		tarEntry{name: "etc/remove-me", typ: tar.TypeReg, body: "gone"},
		tarEntry{name: "opq/", typ: tar.TypeDir},
		tarEntry{name: "opq/old1", typ: tar.TypeReg, body: "old"},
		tarEntry{name: "opq/sub/old2", typ: tar.TypeReg, body: "old"},
		tarEntry{name: "usr/bin/tool", typ: tar.TypeReg, body: "tool", mode: 0o755, uid: 1000, gid: 1000},
		tarEntry{name: "usr/sbin/", typ: tar.TypeDir},
		tarEntry{name: "sbin", typ: tar.TypeSymlink, link: "usr/sbin"},
		tarEntry{name: "was-link", typ: tar.TypeSymlink, link: "/etc/keep"},
	)
	l2 := layer(t,
		tarEntry{name: "etc/.wh.remove-me", typ: tar.TypeReg},
		tarEntry{name: "opq/new", typ: tar.TypeReg, body: "new"},
		tarEntry{name: "opq/.wh..wh..opq", typ: tar.TypeReg},
		tarEntry{name: "etc/keep", typ: tar.TypeReg, body: "v2", mode: 0o600},
		// A file replacing a symlink must not write through it.
		tarEntry{name: "was-link", typ: tar.TypeReg, body: "plain"},
	)
	l3 := layer(t,
		tarEntry{name: "usr/bin/tool2", typ: tar.TypeLink, link: "usr/bin/tool"},
	)
	img, err := mutate.AppendLayers(empty.Image, l1, l2, l3)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Env = []string{"PATH=/usr/bin", "APP=1"}
	cf.Config.WorkingDir = "/srv"
	cf.Config.Cmd = []string{"python3", "-m", "http.server"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func writeLayout(t *testing.T, img v1.Image, opts ...layout.Option) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkLayered(t *testing.T, img string, res Result) {
	t.Helper()
	fsck(t, img)
	for _, p := range []string{"/etc/remove-me", "/opq/old1", "/opq/sub"} {
		if _, ok := stat(t, img, p); ok {
			t.Errorf("%s exists; a whiteout in layer 2 removed it", p)
		}
	}
	for p, want := range map[string]string{"/etc/keep": "v2", "/opq/new": "new", "/was-link": "plain"} {
		if got := cat(t, img, p); string(got) != want {
			t.Errorf("%s: got %q, want %q", p, got, want)
		}
	}
	if in, _ := stat(t, img, "/etc/keep"); in.mode != 0o600 {
		t.Errorf("/etc/keep mode %o, want 600 from layer 2", in.mode)
	}
	tool, _ := stat(t, img, "/usr/bin/tool")
	tool2, _ := stat(t, img, "/usr/bin/tool2")
	if tool.links != 2 || tool2.links != 2 || tool.uid != 1000 || tool.mode != 0o755 {
		t.Errorf("tool %+v, tool2 %+v: want a hard-linked pair owned by 1000 with mode 755", tool, tool2)
	}
	checkAgentInjected(t, img, "/usr/sbin")
	if !slices.Equal(res.Config.Env, []string{"PATH=/usr/bin", "APP=1"}) || res.Config.WorkingDir != "/srv" || len(res.Config.Cmd) != 3 {
		t.Errorf("run config: got %+v", res.Config)
	}
}

func TestBuildFromOCILayout(t *testing.T) {
	testenv.RequireRoot(t)
	dir := writeLayout(t, layeredImage(t, "amd64"))
	img := filepath.Join(t.TempDir(), "root.ext4")
	res, err := Build(context.Background(), testConfig(t), OCILayout{Path: dir}, img)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	checkLayered(t, img, res)
}

func TestBuildFromDockerArchive(t *testing.T) {
	testenv.RequireRoot(t)
	tag, err := name.NewTag("thaw.test/layered:1")
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "saved.tar")
	if err := tarball.WriteToFile(archive, tag, layeredImage(t, "amd64")); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "root.ext4")
	res, err := Build(context.Background(), testConfig(t), DockerArchive{Path: archive}, img)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	checkLayered(t, img, res)
	// A random image, many layers, by tag.
	rnd, err := random.Image(4096, 5)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := rnd.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	rnd, _ = mutate.ConfigFile(rnd, cf)
	if err := tarball.WriteToFile(archive, tag, rnd); err != nil {
		t.Fatal(err)
	}
	res, err = Build(context.Background(), testConfig(t), DockerArchive{Path: archive, Tag: tag.String()}, img)
	if err != nil || res.ContentBytes != 5*4096 {
		t.Errorf("random image: got %+v, %v; want 5 layers of 4096 bytes", res, err)
	}
}

func TestBuildImageErrors(t *testing.T) {
	arm := writeLayout(t, layeredImage(t, "arm64"))
	armIndexed := writeLayout(t, layeredImage(t, "arm64"), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"}))

	corrupt := writeLayout(t, layeredImage(t, "amd64"))
	img := layeredImage(t, "amd64")
	ls, _ := img.Layers()
	d, _ := ls[1].Digest()
	blob := filepath.Join(corrupt, "blobs", d.Algorithm, d.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(blob, b[:len(b)/2], 0o644)

	flipped := writeLayout(t, layeredImage(t, "amd64"))
	blob = filepath.Join(flipped, "blobs", d.Algorithm, d.Hex)
	b, _ = os.ReadFile(blob)
	b[len(b)-10] ^= 0xff // gzip trailer or data: either fails
	os.WriteFile(blob, b, 0o644)

	badArchive := filepath.Join(t.TempDir(), "bad.tar")
	os.WriteFile(badArchive, []byte("this is not a docker archive"), 0o644)

	tests := []struct {
		name string
		src  Source
		is   error
		want string
	}{
		{"arm64 config", OCILayout{Path: arm}, ErrUnsupportedArch, "linux/arm64"},
		{"arm64 in index", OCILayout{Path: armIndexed}, ErrUnsupportedArch, "only linux/arm64"},
		{"truncated layer", OCILayout{Path: corrupt}, ErrBadLayer, "layer 2 of 3"},
		{"flipped byte", OCILayout{Path: flipped}, ErrBadLayer, "layer 2 of 3"},
		{"not an archive", DockerArchive{Path: badArchive}, ErrBadLayer, "reading docker archive"},
		{"unknown ref", OCILayout{Path: arm, Ref: "nope"}, nil, `no image named "nope"`},
		{"not a layout", OCILayout{Path: t.TempDir()}, nil, "reading OCI layout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(context.Background(), testConfig(t), tt.src, filepath.Join(t.TempDir(), "out.ext4"))
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %v containing %q", err, tt.is, tt.want)
			}
		})
	}
}
