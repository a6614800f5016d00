#!/bin/sh
# Checks the container image without a container engine: builds the binary
# exactly as deploy/Containerfile does (static glibc, the `dist` profile) and runs
# node/tests/container.rs, which starts a node from a root holding nothing
# but that binary. Needs root (chroot). Where a container engine works,
# `docker build -f deploy/Containerfile .` builds the image itself.
set -eu
cd "$(dirname "$0")/.."
target=target/static
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$target \
  cargo build --profile dist --locked -p ferry --target x86_64-unknown-linux-gnu
cp "$target/x86_64-unknown-linux-gnu/dist/ferry" "$target/ferry"
echo "static binary: $(wc -c < "$target/ferry") bytes"
FERRY_STATIC_BIN=$PWD/$target/ferry cargo test -p ferry --test container
