#!/usr/bin/env bash
# Build the real CPU image from the repository's Dockerfile with buildah (no Docker engine, no registry):
# takes this checkout, makes (and caches) a Debian base image with python3 + venv via debootstrap, and
# makes the local image localhost/cxr-serve:ci (`buildah bud --isolation chroot --target cpu`).
#
# usage: scripts/container_build.sh [--base-only] [--gpu]
#   needs root, buildah and debootstrap (apt-get install -y --no-install-recommends buildah debootstrap)
#   --base-only  make (or find) the base image and stop
#   --gpu        also try the gpu target; it needs the nvidia/cuda base image from a registry, so it is
#                skipped unless CUDA_IMAGE names an image already in local storage
# Environment:
#   CXR_CONTAINER_CACHE  cache folder for the base root filesystem (default ~/.cache/cxr-container)
#   CXR_BASE_SUITE       Debian suite of the base (default bookworm: python3 is 3.11)
#   CXR_DEBIAN_MIRROR    Debian mirror (default: the first deb.debian.org-style URI in /etc/apt, else
#                        http://deb.debian.org/debian)
#   CXR_BASE_IMAGE       base image tag (default localhost/cxr-base-python:$CXR_BASE_SUITE)
#   CXR_IMAGE            image tag to build (default localhost/cxr-serve:ci)
#   CXR_REBUILD_BASE=1   ignore the cached base
#   PIP_INDEX_URL        passed into the build (--build-arg) when set; the default is https://pypi.org/simple
#   CXR_BUILD_CA         CA bundle pip trusts in the build (default: $PIP_CERT, pip's global.cert, else
#                        /etc/ssl/certs/ca-certificates.crt); mounted for RUN steps, not part of the image
#   MODEL                passed on as --build-arg MODEL=... (a path inside the build context)
# Prints "base image: ...", "image: ... size ..." and timings; exits non-zero on any failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
base_only=0
want_gpu=0
for arg in "$@"; do
  case "$arg" in
    --base-only) base_only=1 ;;
    --gpu) want_gpu=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "error: buildah builds with --isolation chroot and debootstrap need root" >&2
  exit 2
fi
for tool in buildah debootstrap; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not installed: apt-get install -y --no-install-recommends buildah debootstrap" >&2
    exit 2
  fi
done

suite=${CXR_BASE_SUITE:-bookworm}
cache=${CXR_CONTAINER_CACHE:-$HOME/.cache/cxr-container}
base_image=${CXR_BASE_IMAGE:-localhost/cxr-base-python:$suite}
image=${CXR_IMAGE:-localhost/cxr-serve:ci}
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
# What goes into the base; the official python:3.11-slim-bookworm has the same, plus its own CPython build.
packages=python3,python3-venv,ca-certificates
if [ -z "${CXR_DEBIAN_MIRROR:-}" ]; then
  CXR_DEBIAN_MIRROR=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d 2>/dev/null | awk '{print $2}' | head -n 1 || true)
  CXR_DEBIAN_MIRROR=${CXR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
mirror=$CXR_DEBIAN_MIRROR
# the cache key: suite, architecture and package list (the mirror does not change what a suite holds)
key=$(printf '%s\n' "$suite" "$arch" "$packages" "minbase" | sha256sum | cut -c1-12)
tarball=$cache/base-$suite-$arch-$key.tar.gz

t0=$(date +%s)
log() { echo "[container_build $(( $(date +%s) - t0 ))s] $*"; }

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
image_label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null; }

make_rootfs_tarball() {
  local root
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  log "debootstrap $suite ($arch, minbase + $packages) from $mirror"
  if ! debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$root" "$mirror" \
    >"$cache/debootstrap.log" 2>&1; then
    tail -n 30 "$cache/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    rm -rf "$root"
    echo "error: debootstrap failed (log: $cache/debootstrap.log)" >&2
    exit 1
  fi
  # what a slim image leaves out: the package cache and lists (apt-get update restores the lists)
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/debootstrap
  "$root/usr/bin/python3" --version >/dev/null 2>&1 || chroot "$root" python3 --version >/dev/null
  tar -C "$root" --numeric-owner --xattrs -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  log "cached the base root filesystem: $tarball ($(du -h "$tarball" | cut -f1))"
}

make_base_image() {
  if [ "${CXR_REBUILD_BASE:-0}" != 1 ] && have_image "$base_image" \
    && [ "$(image_label "$base_image" org.cxr.base-key)" = "$key" ]; then
    log "base image: $base_image (cached in local storage, key $key)"
    return
  fi
  local how="from the cached root filesystem"
  if [ "${CXR_REBUILD_BASE:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    make_rootfs_tarball
    how="by debootstrap"
  else
    log "using the cached root filesystem $tarball"
  fi
  local ctr mnt
  ctr=$(buildah from --pull=never scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" --numeric-owner --xattrs -xzf "$tarball"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd '["python3"]' \
    --label org.cxr.base-key="$key" \
    --label org.cxr.base-suite="$suite" \
    --label org.opencontainers.image.description="Debian $suite minbase + $packages (debootstrap)" \
    "$ctr"
  buildah commit --rm --quiet "$ctr" "$base_image" >/dev/null
  log "base image: $base_image (built $how, key $key)"
}

t_base=$(date +%s)
make_base_image
echo "base image: $base_image ($(( $(date +%s) - t_base ))s)"
[ "$base_only" = 1 ] && exit 0

build_args=(--build-arg "PYTHON_IMAGE=$base_image")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
# pip inside the build trusts this machine's CA bundle too (a TLS-inspecting proxy signs with its own CA,
# which the base image's bundle lacks); it is bind-mounted for the RUN steps only, never copied in.
ca=${CXR_BUILD_CA:-${PIP_CERT:-}}
[ -z "$ca" ] && ca=$(pip config get global.cert 2>/dev/null || true)
[ -z "$ca" ] && [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=/etc/ssl/certs/ca-certificates.crt
if [ -n "$ca" ] && [ -f "$ca" ]; then
  build_args+=(--volume "$ca:/run/cxr-build-ca.pem:ro" --build-arg PIP_CERT=/run/cxr-build-ca.pem)
fi
[ -n "${MODEL:-}" ] && build_args+=(--build-arg "MODEL=$MODEL")

# --format docker keeps the HEALTHCHECK (the OCI image config has no field for it);
# --layers reuses unchanged steps; --pull=never: the base lies in local storage, no registry is asked.
t_img=$(date +%s)
log "buildah bud --target cpu -t $image"
(cd "$repo" && buildah bud --isolation chroot --format docker --layers --force-rm --pull=never \
  "${build_args[@]}" --target cpu -t "$image" -f Dockerfile .)
size=$(buildah images --format '{{.Size}}' "$image" | head -n 1)
echo "image: $image size $size ($(( $(date +%s) - t_img ))s)"

if [ "$want_gpu" = 1 ]; then
  cuda_image=${CUDA_IMAGE:-}
  if [ -n "$cuda_image" ] && have_image "$cuda_image"; then
    log "buildah bud --target gpu -t ${image%:*}:ci-gpu (CUDA base $cuda_image)"
    (cd "$repo" && buildah bud --isolation chroot --format docker --layers --force-rm --pull=never \
      "${build_args[@]}" --build-arg "CUDA_IMAGE=$cuda_image" --target gpu -t "${image%:*}:ci-gpu" .)
  else
    echo "skipped the gpu target: it builds FROM nvidia/cuda (a registry image), which cannot be pulled" \
      "here; load one into local storage and set CUDA_IMAGE=<its tag> to build it" >&2
  fi
fi
echo "total: $(( $(date +%s) - t0 ))s"
