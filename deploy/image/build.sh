#!/usr/bin/env bash
# Builds the nnspin container image without a daemon: stages its file system under target/image/rootfs,
# builds deploy/image/Containerfile from it with buildah, and writes an OCI archive.
#
#   deploy/image/build.sh [--profile release|dev] [--model NAME]... [--tag NAME] [--archive FILE]
#
# --profile   the host build to ship (release, the default; dev reuses the debug build the tests use)
# --model     bake models/NAME into the image at /app/models/NAME (repeatable; default: none, mount them)
# --tag       the image name in buildah's local storage (default nnspin:0.1.0)
# --archive   where the OCI archive goes (default target/image/nnspin.oci.tar); load it with
#             `podman load -i FILE` or push it with `skopeo copy oci-archive:FILE docker://REGISTRY/nnspin:TAG`
#
# Needs buildah (Debian: apt-get install buildah) and what tools/setup.sh prepares (the wheels' libraries).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release tag=nnspin:0.1.0 archive=target/image/nnspin.oci.tar models=()
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --model) models+=("$2"); shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --archive) archive=$2; shift 2 ;;
        *) echo "build.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) binary=target/release/nnspin ;;
    dev) binary=target/debug/nnspin ;;
    *) echo "build.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
command -v buildah >/dev/null || { echo "build.sh: buildah is needed (apt-get install buildah)" >&2; exit 1; }
site=$(echo .venv/lib/python3*/site-packages)
[ -d "$site/onnxruntime" ] && [ -d "$site/openvino" ] || {
    echo "build.sh: the onnxruntime and openvino wheels are needed in .venv (run tools/setup.sh)" >&2; exit 1; }

step() { printf '\n==> %s\n' "$*" >&2; }

step "Building the host ($profile) and the components"
cargo build --profile "$profile" -p nnspin
cargo build --release --target wasm32-wasip2 -p nnspin-openai -p nnspin-locallab

step "Staging the file system in target/image/rootfs"
root=target/image/rootfs
rm -rf "$root"
mkdir -p "$root"/{usr/local/bin,opt/onnxruntime/lib,opt/openvino/libs,etc,app/models,proc,sys,dev,tmp}
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/usr/local/bin/nnspin"
# Line tables are most of the binary (185 MB of a release build, 37 without); symbols stay for backtraces.
strip --strip-debug "$root/usr/local/bin/nnspin"
# The app as the repository has it: spin.toml names its components by paths relative to itself.
install -m 0644 spin.toml "$root/app/spin.toml"
sed -n 's/^source = "\(.*\)"$/\1/p' spin.toml | while read -r wasm; do
    install -D -m 0644 "$wasm" "$root/app/$wasm"
done
for name in "${models[@]}"; do
    [ -d "models/$name" ] || { echo "build.sh: models/$name does not exist" >&2; exit 1; }
    cp -r "models/$name" "$root/app/models/$name"
done
# ONNX Runtime: the library and the loader of its GPU providers (the CPU wheel has no GPU providers).
cp "$site"/onnxruntime/capi/libonnxruntime*.so* "$root/opt/onnxruntime/lib/"
# OpenVINO: its core, C API, CPU and GPU plugins and the two front ends nnspin reads (ONNX and IR); the
# other front ends (PaddlePaddle, PyTorch, TensorFlow, JAX, GGUF) are not needed.
for lib in "$site"/openvino/libs/*.so*; do
    case $(basename "$lib") in
        *paddle* | *pytorch* | *tensorflow* | *jax* | *gguf*) ;;
        *) cp "$lib" "$root/opt/openvino/libs/" ;;
    esac
done
# The system libraries every ELF file above links (libc, libstdc++, the loader), at their own paths.
find "$root/usr/local/bin" "$root/opt" -type f | while read -r elf; do
    ldd "$elf" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }'
done | sort -u | while read -r lib; do
    case $lib in "$PWD"/* | */site-packages/*) continue ;; esac
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
# OpenCL, which OpenVINO's GPU plugin links, is the GPU node's (its driver installs it): not in the image.
printf 'root:x:0:0:root:/:/sbin/nologin\nnnspin:x:10001:10001:nnspin:/app:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnnspin:x:10001:\n' >"$root/etc/group"

step "Building the image $tag"
buildah build --layers=false --quiet -f deploy/image/Containerfile -t "$tag" "$root" >/dev/null
mkdir -p "$(dirname "$archive")"
rm -f "$archive"
buildah push --quiet "$tag" "oci-archive:$archive:$tag"
echo "$archive ($(du -h "$archive" | cut -f1)): $tag"
