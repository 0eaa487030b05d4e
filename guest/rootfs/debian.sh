#!/usr/bin/env bash
# Builds the Debian base root filesystem for the demo template: a minimal
# bookworm (debootstrap --variant=minbase) with python3, as a tarball that
# internal/image turns into an ext4 disk (thaw-agent is injected there, not
# here).
#
# The mirror is the one this machine's apt already uses, read at run time from
# `apt-get indextargets`, so no outside host is written down here.
#
# The result is cached outside the checkout, under
#   ${THAW_CACHE:-/var/cache/thaw}/rootfs/<sha256 of this script, the package
#   list and the mirror>/debian-bookworm.tar
# and built once: a second run prints the cached path and does nothing else.
# Prints the tarball's path on stdout; everything else goes to stderr.
#
#   debian.sh                 build if needed, print the path
#   debian.sh --cached-path   print the path if it is built, else exit 1
#
# Needs root to build (debootstrap creates device nodes and chowns files).
set -euo pipefail

only_cached=0
case ${1:-} in
"") ;;
--cached-path) only_cached=1 ;;
*) echo "usage: $0 [--cached-path]" >&2; exit 2 ;;
esac

SUITE=bookworm
ARCH=amd64
VARIANT=minbase
# Packages on top of minbase: python3 for the demo; ca-certificates so
# programs in the sandbox can speak TLS; iproute2 for network set-up.
PACKAGES=(python3 ca-certificates iproute2)

log() { echo "debian.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
	awk -v s="$SUITE" '$2 == s && $3 == "Packages" { print $1; exit }')
[[ -n $mirror ]] || die "no apt source for $SUITE found in this machine's apt configuration (/etc/apt/sources.list*); add one or set up apt first"

script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
key=$(printf '%s\n' "$script_hash" "$SUITE" "$ARCH" "$VARIANT" "$mirror" "${PACKAGES[@]}" | sha256sum | cut -c1-16)
cache=${THAW_CACHE:-/var/cache/thaw}/rootfs/$key
out=$cache/debian-$SUITE.tar

if [[ -s $out ]]; then
	log "cached: $out"
	echo "$out"
	exit 0
fi
((only_cached)) && exit 1

[[ $(id -u) == 0 ]] || die "needs root (debootstrap creates device nodes and sets ownership); run it as root"
command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/setup (it installs scripts/apt-packages)"

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "debootstrap $SUITE ($VARIANT, +${PACKAGES[*]}) from $mirror into $work/root"
include=$(IFS=,; echo "${PACKAGES[*]}")
if ! debootstrap --arch="$ARCH" --variant="$VARIANT" --include="$include" \
	"$SUITE" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
	tail -n 30 "$work/debootstrap.log" >&2
	die "debootstrap failed (log above)"
fi

# Trim what a sandbox never needs and what makes builds differ.
rm -rf "$work/root"/var/cache/apt/archives/*.deb \
	"$work/root"/var/lib/apt/lists/* \
	"$work/root"/var/log/* \
	"$work/root"/tmp/* \
	"$work/root"/dev/*
echo "thaw" >"$work/root/etc/hostname"

# Sorted names, numeric owners and one fixed mtime keep the tarball stable
# for a given package set.
tar --sort=name --numeric-owner --mtime='2025-01-01 00:00:00Z' \
	-C "$work/root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
log "built: $out ($(du -h "$out" | cut -f1))"
echo "$out"
