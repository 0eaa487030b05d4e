package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Dir is a source tree on the host, copied as it is (owners included).
type Dir string

func (d Dir) String() string { return "directory " + string(d) }

func (d Dir) apply(ctx context.Context, st *stager) (RunConfig, error) {
	root := string(d)
	fi, err := os.Stat(root)
	if err != nil {
		return RunConfig{}, fmt.Errorf("source directory: %w", err)
	}
	if !fi.IsDir() {
		return RunConfig{}, fmt.Errorf("source %s is not a directory", root)
	}
	st.layer = make(map[string]bool)
	err = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return st.applyEntry(hdr, f, false)
		}
		return st.applyEntry(hdr, nil, false)
	})
	return RunConfig{}, err
}

// Tarball is a tar archive of a root tree, optionally gzip-compressed
// (detected from its first bytes). Whiteout names in it are ordinary files.
type Tarball string

func (t Tarball) String() string { return "tarball " + string(t) }

func (t Tarball) apply(ctx context.Context, st *stager) (RunConfig, error) {
	f, err := os.Open(string(t))
	if err != nil {
		return RunConfig{}, fmt.Errorf("%w: %v", ErrBadLayer, err)
	}
	defer f.Close()
	r, err := maybeGunzip(f)
	if err != nil {
		return RunConfig{}, err
	}
	return RunConfig{}, st.applyTar(ctx, r, false)
}

func maybeGunzip(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %v", ErrBadLayer, err)
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrBadLayer, err)
		}
		return zr, nil
	}
	return br, nil
}

// OCILayout is an OCI image layout directory (index.json, blobs/). Ref
// selects a manifest by its org.opencontainers.image.ref.name annotation;
// empty means the only linux/amd64 image in the index.
type OCILayout struct {
	Path string
	Ref  string
}

func (o OCILayout) String() string {
	if o.Ref != "" {
		return fmt.Sprintf("OCI layout %s (%s)", o.Path, o.Ref)
	}
	return "OCI layout " + o.Path
}

func (o OCILayout) apply(ctx context.Context, st *stager) (RunConfig, error) {
	idx, err := layout.ImageIndexFromPath(o.Path)
	if err != nil {
		return RunConfig{}, fmt.Errorf("reading OCI layout: %w", err)
	}
	img, err := pickImage(idx, o.Ref)
	if err != nil {
		return RunConfig{}, err
	}
	return applyImage(ctx, st, img)
}

// refAnnotation names an image in an OCI index (image-spec annotations.md).
const refAnnotation = "org.opencontainers.image.ref.name"

// pickImage finds the linux/amd64 image in idx (descending into nested
// indexes), or says which platforms there are.
func pickImage(idx v1.ImageIndex, ref string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index manifest: %w", err)
	}
	var seen []string
	for _, d := range im.Manifests {
		if ref != "" && d.Annotations[refAnnotation] != ref {
			continue
		}
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("reading nested index %s: %w", d.Digest, err)
			}
			img, err := pickImage(child, "")
			if err == nil {
				return img, nil
			}
			if !errors.Is(err, ErrUnsupportedArch) {
				return nil, err
			}
			seen = append(seen, err.Error())
		case d.MediaType.IsImage():
			if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != "amd64") {
				seen = append(seen, d.Platform.OS+"/"+d.Platform.Architecture)
				continue
			}
			return idx.Image(d.Digest)
		}
	}
	if ref != "" && len(seen) == 0 {
		return nil, fmt.Errorf("no image named %q in the OCI layout", ref)
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("the OCI layout holds no image")
	}
	return nil, fmt.Errorf("%w: no linux/amd64 image, only %s; Thaw guests are amd64", ErrUnsupportedArch, strings.Join(seen, ", "))
}

// DockerArchive is a `docker save` tarball. Tag picks one image when the
// archive holds several; empty means the only one.
type DockerArchive struct {
	Path string
	Tag  string
}

func (d DockerArchive) String() string {
	if d.Tag != "" {
		return fmt.Sprintf("docker archive %s (%s)", d.Path, d.Tag)
	}
	return "docker archive " + d.Path
}

func (d DockerArchive) apply(ctx context.Context, st *stager) (RunConfig, error) {
	var tag *name.Tag
	if d.Tag != "" {
		t, err := name.NewTag(d.Tag)
		if err != nil {
			return RunConfig{}, fmt.Errorf("tag %q: %w", d.Tag, err)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(d.Path, tag)
	if err != nil {
		return RunConfig{}, fmt.Errorf("%w: reading docker archive: %v", ErrBadLayer, err)
	}
	return applyImage(ctx, st, img)
}

// applyImage checks the image's platform and applies its layers in order,
// with whiteouts.
func applyImage(ctx context.Context, st *stager, img v1.Image) (RunConfig, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return RunConfig{}, fmt.Errorf("%w: reading image config: %v", ErrBadLayer, err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		return RunConfig{}, fmt.Errorf("%w: the image is for %s/%s; Thaw guests are linux/amd64", ErrUnsupportedArch, cf.OS, cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		return RunConfig{}, fmt.Errorf("%w: listing layers: %v", ErrBadLayer, err)
	}
	for i, l := range layers {
		if err := applyLayer(ctx, st, l); err != nil {
			d, _ := l.Digest()
			return RunConfig{}, fmt.Errorf("layer %d of %d (%s): %w", i+1, len(layers), d, err)
		}
	}
	c := cf.Config
	return RunConfig{Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd, WorkingDir: c.WorkingDir, User: c.User}, nil
}

func applyLayer(ctx context.Context, st *stager, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadLayer, err)
	}
	defer rc.Close()
	if err := st.applyTar(ctx, rc, true); err != nil {
		return err
	}
	// Drain: go-containerregistry verifies the digest at the end of the
	// stream, so a corrupt blob whose tar happened to parse fails here.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("%w: %v", ErrBadLayer, err)
	}
	return nil
}
