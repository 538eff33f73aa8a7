#!/usr/bin/env bash
# Build the FedSilo image: deploy/docker/build.sh [TAG] [docker build options...]
# Makes the base image first when it is missing (deploy/docker/make-base.sh), and hands the build
# this machine's CPU torch wheel when pip has one on disk (else the image gets it from PyTorch's
# CPU index). Builds on the host network: no Docker bridge is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-fedsilo:latest}; shift || true
base=fedsilo-base:bookworm
if [[ " $* " != *" BASE_IMAGE="* ]] && ! docker image inspect "$base" >/dev/null 2>&1; then
  deploy/docker/make-base.sh "$base"
fi
mkdir -p deploy/docker/wheels
rm -f deploy/docker/wheels/*.whl deploy/docker/wheels/pip-ca.crt
for dir in $(pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p") /opt/wheels; do
  for wheel in "$dir"/torch-2.13.0+cpu-cp311-*.whl; do
    [ -f "$wheel" ] && cp "$wheel" deploy/docker/wheels/ && break 2
  done
done
# A registry reached through a TLS-inspecting proxy: pip in the build trusts what pip here trusts
# (the bundle is used during the build only and removed with the build files).
cert=$(pip config list 2>/dev/null | sed -n "s/.*\.cert='\(.*\)'/\1/p" | head -1)
[ -n "$cert" ] && [ -f "$cert" ] && cp "$cert" deploy/docker/wheels/pip-ca.crt
docker build --network host -f deploy/docker/Dockerfile -t "$tag" "$@" .
echo "build: $tag"
