#!/usr/bin/env bash
# Builds the demo template's root disk: the Debian base from debian.sh with
# thaw-agent injected as /sbin/init, as an ext4 image (internal/image via
# cmd/thaw-image; no loop mounts).
#
# Cached under ${THAW_CACHE:-/var/cache/thaw}/images/<key>/debian.ext4, the
# key hashing this script, the base tarball (itself content-keyed), the disk
# size, and the agent and image-builder binaries (built with -trimpath, so
# the same source gives the same bytes). A second run prints the cached path and does nothing else.
# Prints the image path on stdout; progress goes to stderr.
#
# THAW_ROOTFS_SIZE sets the disk size (default 1G). Needs root (debian.sh
# does; the image build itself would not).
set -euo pipefail
cd "$(dirname "$0")/../.."

size=${THAW_ROOTFS_SIZE:-1G}
tarball=$(guest/rootfs/debian.sh)

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
# Stripped (-s -w): smaller to page in; Go stack traces need no DWARF.
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin/thaw-agent" ./cmd/thaw-agent
go build -trimpath -o "$bin/thaw-image" ./cmd/thaw-image

key=$({
	sha256sum <guest/rootfs/debian-image.sh
	echo "$tarball $size"
	sha256sum <"$bin/thaw-agent"
	sha256sum <"$bin/thaw-image"
} | sha256sum | cut -c1-16)
out=${THAW_CACHE:-/var/cache/thaw}/images/$key/debian.ext4
if [[ -s $out ]]; then
	echo "debian-image.sh: cached: $out" >&2
	echo "$out"
	exit 0
fi
mkdir -p "$(dirname "$out")"
"$bin/thaw-image" -agent "$bin/thaw-agent" -size "$size" -tar "$tarball" -o "$out.partial" >&2
mv "$out.partial" "$out"
echo "debian-image.sh: built: $out" >&2
echo "$out"
