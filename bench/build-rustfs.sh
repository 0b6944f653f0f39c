#!/usr/bin/env bash
# Build the S3 server bench/peers.sh runs against: rustfs 1.0.1 from
# crates.io, into a cache outside the clone (about 80 minutes and 10 GB of
# RAM on 2 cores; done once, reused after).
#
# rustfs needs rustc >= 1.98.1 (installed with rustup next to the project's
# toolchain) and protoc (Debian protobuf-compiler).
set -euo pipefail
cache_root=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}
prefix=$cache_root/rustfs
if [ -x "$prefix/bin/rustfs" ]; then
    echo "rustfs already built: $prefix/bin/rustfs"
    exit 0
fi
command -v protoc >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
}
rustup toolchain list | grep -q '^1.98.1' || rustup toolchain install 1.98.1 --profile minimal
mkdir -p "$cache_root"
CARGO_TARGET_DIR=$cache_root/rustfs-target nice -n 19 \
    cargo +1.98.1 install --locked rustfs@1.0.1 --root "$prefix"
echo "built $prefix/bin/rustfs"
