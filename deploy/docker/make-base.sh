#!/usr/bin/env bash
# Build the base image the FedSilo image starts from, without Docker Hub: a minimal Debian 12
# root file system made with debootstrap from the Debian mirror, imported as a Docker image.
#   usage: deploy/docker/make-base.sh [IMAGE_TAG]     (as root; default fedsilo-base:bookworm)
# Where Docker Hub is reachable, `--build-arg BASE_IMAGE=debian:bookworm-slim` skips this step.
set -euo pipefail
tag=${1:-fedsilo-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "make-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
root=$(mktemp -d /tmp/fedsilo-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "make-base: debootstrap bookworm from $mirror (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "make-base: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
