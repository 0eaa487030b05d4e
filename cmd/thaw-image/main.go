// Command thaw-image builds an ext4 root filesystem for a sandbox template
// from a directory, a tarball, an OCI image layout or a `docker save`
// archive, with thaw-agent injected as /sbin/init. It mounts nothing. On
// success it prints the result as JSON (path, sizes, and the image's run
// configuration: env, cmd, working directory, user).
//
// Usage:
//
//	thaw-image -agent PATH -size 1G -o OUT.ext4 (-dir DIR | -tar FILE | -oci DIR [-ref NAME] | -docker-archive FILE [-ref TAG])
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/thawvm/thaw/internal/image"
)

type options struct {
	cfg image.Config
	src image.Source
	out string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("thaw-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var size, maxContent, dir, tarball, oci, docker, ref string
	fs.StringVar(&o.cfg.AgentPath, "agent", "", "static thaw-agent binary to inject (required)")
	fs.StringVar(&size, "size", "", "disk size, e.g. 1G or 512M (required)")
	fs.StringVar(&maxContent, "max-content", "", "cap on extracted content (default: the disk size)")
	fs.StringVar(&o.out, "o", "", "output image path (required)")
	fs.StringVar(&o.cfg.Label, "label", "thaw-root", "file system label")
	fs.StringVar(&dir, "dir", "", "build from this directory")
	fs.StringVar(&tarball, "tar", "", "build from this tarball (optionally gzip-compressed)")
	fs.StringVar(&oci, "oci", "", "build from this OCI image layout directory")
	fs.StringVar(&docker, "docker-archive", "", "build from this `docker save` archive")
	fs.StringVar(&ref, "ref", "", "image name in the OCI layout, or tag in the docker archive")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.cfg.DiskSize, err = parseSize("-size", size); err != nil {
		return o, err
	}
	if maxContent != "" {
		if o.cfg.MaxContentBytes, err = parseSize("-max-content", maxContent); err != nil {
			return o, err
		}
	}
	if o.out == "" {
		return o, errors.New("-o is required: where to write the image")
	}
	var srcs []image.Source
	if dir != "" {
		srcs = append(srcs, image.Dir(dir))
	}
	if tarball != "" {
		srcs = append(srcs, image.Tarball(tarball))
	}
	if oci != "" {
		srcs = append(srcs, image.OCILayout{Path: oci, Ref: ref})
	}
	if docker != "" {
		srcs = append(srcs, image.DockerArchive{Path: docker, Tag: ref})
	}
	if len(srcs) != 1 {
		return o, errors.New("give exactly one of -dir, -tar, -oci, -docker-archive")
	}
	if ref != "" && oci == "" && docker == "" {
		return o, errors.New("-ref applies only to -oci and -docker-archive")
	}
	o.src = srcs[0]
	return o, o.cfg.Validate()
}

// parseSize reads a byte count with an optional K, M, G or T suffix
// (binary units).
func parseSize(flagName, s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("%s is required, e.g. %s 1G", flagName, flagName)
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	num := s
	if mult != 1 {
		num = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%s %q: want a positive size such as 512M or 2G", flagName, s)
	}
	return n * mult, nil
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "thaw-image:", err)
		os.Exit(2)
	}
	o.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := image.Build(ctx, o.cfg, o.src, o.out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "thaw-image:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(res)
}
