#!/usr/bin/env bash
# Builds deploy/container/Containerfile with buildah (vfs storage, chroot isolation; no image
# registry is reachable here) on a Debian base made by debootstrap, with the host's Rust
# toolchain and crate cache mounted at the official rust image's paths, then runs the image.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${FLOWWATCH_CI_WORK:-/var/tmp/flowwatch-ci}
mkdir -p "$work/target"
bah() { buildah --storage-driver vfs --root "$work/storage" --runroot "$work/run" "$@"; }
base=localhost/flowwatch-ci-debian:bookworm
image=localhost/flowwatch:ci
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  echo "debootstrap: a minimal Debian bookworm from $mirror"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; exit 1; }
  ctr=$(bah from scratch)
  cp -a "$work/rootfs/." "$(bah mount "$ctr")/"
  bah umount "$ctr" >/dev/null
  bah commit --quiet "$ctr" "$base" >/dev/null
  bah rm "$ctr" >/dev/null
  rm -rf "$work/rootfs"
fi

cargo fetch --locked --quiet
bah build --quiet --isolation chroot --layers=false \
  --build-arg BUILDER_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" --build-arg CARGO_NET_OFFLINE=true \
  --volume "${CARGO_HOME:-$HOME/.cargo}:/usr/local/cargo" \
  --volume "${RUSTUP_HOME:-$HOME/.rustup}:/usr/local/rustup" \
  --volume "$work/target:/build/target" \
  -f deploy/container/Containerfile -t "$image" . >/dev/null

user=$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || { echo "the image runs as '$user', not 65532:65532"; exit 1; }
ctr=$(bah from "$image")
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
version=$(bah run --isolation chroot "$ctr" -- /usr/local/bin/flowwatch --version)
[ "$version" = "flowwatch $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ] || { echo "unexpected version: $version"; exit 1; }
bah run --isolation chroot "$ctr" -- /usr/local/bin/flowwatch check-config --config /etc/flowwatch/flowwatch.toml | head -n 2
uid=$(bah run --isolation chroot "$ctr" -- /bin/sh -c 'id -u')
[ "$uid" = 65532 ] || { echo "the container runs as uid $uid"; exit 1; }
size=$(bah images --format "{{.Size}}" "$image" 2>/dev/null | head -n 1)
echo "image $image: $version, runs as uid $uid, check-config ok (size $size)"
