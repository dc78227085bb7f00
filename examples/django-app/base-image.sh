#!/usr/bin/env bash
# Make the demo's base image as a rootfs tarball: Debian bookworm (minbase) with Python 3.
# There is no Docker Hub here, so instead of `FROM python:3.11-slim` we build an equivalent
# from the Debian mirror and import it:
#   docker import OUT.tar localhost/debian-python:bookworm
#   pybuild import OUT.tar localhost/debian-python:bookworm
# Usage: base-image.sh OUT.tar   (as root; needs mmdebstrap and a plain-HTTP Debian mirror)
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT.tar" >&2
    exit 2
fi
out=$1
# The mirror the host's apt already uses; plain HTTP (apt verifies signatures itself), so no
# TLS inside the chroot. Override with MIRROR=... on another network.
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Write next to the target and rename at the end: an interrupted run leaves no half tarball
# that a later run (demo.sh caches it) would mistake for a good one.
tmp="$out.tmp.$$.tar"
trap 'rm -f "$tmp"' EXIT

start=$(date +%s)
# minbase: only Essential packages + apt. The merged-usr hook makes /usr merged with plain
# symlinks instead of installing the usrmerge package, which drags in ~45 MB of perl. No Recommends (they would pull in compilers via
# python3-pip -> python3-dev/build-essential). Docs, man pages and locales are dropped the way
# the official *-slim images do it, keeping copyright files for licence compliance.
mmdebstrap --variant=minbase --format=tar \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    bookworm "$tmp" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
mv "$tmp" "$out"
trap - EXIT
echo "base image: $out ($(du -h "$out" | cut -f1)) in $(( $(date +%s) - start ))s"
