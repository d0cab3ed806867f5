#!/usr/bin/env bash
# Builds the images the real-node tests run, without a registry, and writes them as archives
# that containerd imports (`ctr -n k8s.io images import <tar>`):
#   ghcr.io/dowser-dev/dowser:0.1.0          deploy/Dockerfile
#   ghcr.io/dowser-dev/modbus-broker:0.1.0   examples/brokers/modbus/Dockerfile
#   localhost/dowser/pause:catatonit         the pod sandbox image (Debian's catatonit -P)
# with buildah (Debian package) from a base image made by mmdebstrap from Debian packages. The
# Dockerfiles take the binaries prebuilt (`--build-arg BINARY=prebuilt`): no Rust toolchain is
# fetched inside a build, nothing is pulled.
#
# Which binaries: by default the dev-profile binaries that `cargo test` builds anyway (the
# same code, unoptimised, debug info stripped), so the images cost no extra compilation; the
# shipped release profile (fat LTO) takes ~5 min more on 2 cores. DOWSER_IMAGE_PROFILE=release
# builds the images from it. DOWSER_IMAGE_DOWSER_BIN and DOWSER_IMAGE_BROKER_BIN name binaries
# built already (the real-node tests pass the ones `cargo test` built, whose features the
# whole workspace unifies) instead.
#
# Everything is cached by content in ${DOWSER_CACHE:-~/.cache/dowser}: the base image by the
# command that makes it, each image by its binary, Dockerfile and base. Prints the images'
# sizes on stderr, `DOWSER_PAUSE_IMAGE=<name>` and, on its last stdout line, the directory that
# holds exactly the three archives (also named in <dir>/pause-image).
# Usage: tests/node/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/prereqs.sh

profile=${DOWSER_IMAGE_PROFILE:-dev}
dowser_image=ghcr.io/dowser-dev/dowser:0.1.0
broker_image=ghcr.io/dowser-dev/modbus-broker:0.1.0
pause_image=localhost/dowser/pause:catatonit
images=$cache/images
out=$images/node
mkdir -p "$images" "$out"

command -v buildah >/dev/null && command -v mmdebstrap >/dev/null && [ -x /usr/bin/catatonit ] ||
  apt_install buildah mmdebstrap catatonit

# buildah's own storage, apart from any system-wide one.
# vfs: no overlay mounts for buildah to leave behind (bud leaves some with overlay).
bh() { buildah --storage-driver vfs --root "$images/buildah/root" --runroot "$images/buildah/run" "$@"; }
key_of() { cat "$@" | sha256sum | cut -c1-16; }

# The base: glibc, libgcc, time zones and /etc/services from Debian bookworm, extracted by
# mmdebstrap (no shell, no package manager: the binaries need glibc only).
base_cmd=(mmdebstrap --quiet --format=tar --variant=extract --include=base-files,libc6,libgcc-s1,netbase,tzdata
  --dpkgopt='path-exclude=/usr/share/doc/*' --skip=output/dev bookworm)
base_key=$(printf '%s\n' "${base_cmd[@]}" | sha256sum | cut -c1-16)
base_image=localhost/dowser-base:bookworm-$base_key
if ! bh inspect --type image "$base_image" >/dev/null 2>&1; then
  step "base image from Debian packages (mmdebstrap bookworm)"
  if [ ! -s "$images/base-$base_key.tar" ]; then
    "${base_cmd[@]}" "$images/base-$base_key.tar.part"
    mv "$images/base-$base_key.tar.part" "$images/base-$base_key.tar"
  fi
  ctr=$(bh from scratch)
  bh add --quiet "$ctr" "$images/base-$base_key.tar" / >/dev/null
  bh commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

# Cargo builds the binaries (or finds them fresh); prints the executable's path.
binary() {
  local package=$1 bin=$2 args=(build --locked -p "$1" --bin "$2" --message-format=json-render-diagnostics)
  [ "$profile" = dev ] || args+=(--profile "$profile")
  cargo "${args[@]}" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        path = m["executable"]
print(path)' "$bin"
}

# image NAME DOCKERFILE BINARY-NAME BINARY-PATH: builds NAME from the prebuilt binary unless an
# archive of the same content exists; leaves the archive in $out.
image() {
  local name=$1 dockerfile=$2 bin=$3 path=$4 ctx key tar
  ctx=$(mktemp -d)
  strip --strip-debug -o "$ctx/$bin" "$path"
  key=$(printf '%s\n' "$base_key" | key_of - "$dockerfile" "$ctx/$bin")
  tar=$images/$bin-$key.tar
  if [ ! -s "$tar" ]; then
    step "image $name ($dockerfile, $profile binary)"
    bh bud --quiet --layers=false -f "$dockerfile" --build-arg BINARY=prebuilt \
      --build-arg BASE_IMAGE="$base_image" -t "$name" "$ctx" >/dev/null
    rm -f "$tar.part"
    bh push --quiet "$name" "docker-archive:$tar.part:$name"
    mv "$tar.part" "$tar"
  fi
  rm -rf "$ctx"
  for old in "$images/$bin"-*.tar; do [ "$old" = "$tar" ] || rm -f "$old"; done
  ln -f "$tar" "$out/$bin.tar"
}

step "binaries for the images (cargo, $profile profile)"
dowser_bin=${DOWSER_IMAGE_DOWSER_BIN:-$(binary dowser dowser)}
broker_bin=${DOWSER_IMAGE_BROKER_BIN:-$(binary modbus-broker modbus-broker)}

image "$dowser_image" deploy/Dockerfile dowser "$dowser_bin"
image "$broker_image" examples/brokers/modbus/Dockerfile modbus-broker "$broker_bin"

# The sandbox image: catatonit in pause mode (sleeps, reaps, exits on SIGINT/SIGTERM), a
# static binary from Debian's catatonit package, alone in the image.
pause_key=$(printf '%s\n' "$pause_image" | key_of - /usr/bin/catatonit)
pause_tar=$images/pause-$pause_key.tar
if [ ! -s "$pause_tar" ]; then
  step "image $pause_image (Debian's catatonit)"
  ctr=$(bh from scratch)
  bh copy --quiet "$ctr" /usr/bin/catatonit /catatonit >/dev/null
  bh config --entrypoint '["/catatonit", "-P"]' --user 65535:65535 "$ctr"
  bh commit --quiet --rm "$ctr" "$pause_image" >/dev/null
  rm -f "$pause_tar.part"
  bh push --quiet "$pause_image" "docker-archive:$pause_tar.part:$pause_image"
  mv "$pause_tar.part" "$pause_tar"
fi
ln -f "$pause_tar" "$out/pause.tar"
for old in "$images"/pause-*.tar "$images"/base-*.tar; do
  [ "$old" = "$pause_tar" ] || [ "$old" = "$images/base-$base_key.tar" ] || rm -f "$old"
done
bh rmi --prune >/dev/null 2>&1 || true   # images of earlier binaries, now untagged
echo "$pause_image" >"$out/pause-image"

for t in "$out"/*.tar; do
  printf '%-22s %6s MiB archive\n' "$(basename "$t")" \
    "$(awk -v b="$(stat -c %s "$t")" 'BEGIN {printf "%.1f", b / 1048576}')" >&2
done
echo "DOWSER_PAUSE_IMAGE=$pause_image"
echo "$out"
