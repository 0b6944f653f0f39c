#!/usr/bin/env bash
# Sequential write and read of a 1 GiB file on a file:// volume, next to dd
# on the same disk, in one run. Kernel caches are dropped before each read.
#
#   bench/seq.sh [SIZE_MIB]     (default 1024)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1024}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-test/target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tessera
bin="$CARGO_TARGET_DIR/release/tessera"
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
trap '"$bin" umount "$work/mnt" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/mnt" "$work/raw"
"$bin" format "sqlite://$work/meta.db" bench --storage "file://$work/objects" >/dev/null
"$bin" mount "sqlite://$work/meta.db" "$work/mnt" -d --log "$work/mount.log" >/dev/null

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
mibs() { # label command...
    local label=$1; shift
    local t0 t1
    t0=$(date +%s.%N); "$@" 2>/dev/null; t1=$(date +%s.%N)
    python3 -c "print(f'{\"$label\":<28} {$size/($t1-$t0):8.1f} MiB/s')"
}
echo "sequential, ${size} MiB, bs=1M"
mibs "dd write, local disk" dd if=/dev/zero of="$work/raw/f" bs=1M count="$size" conv=fsync
mibs "dd write, tessera" dd if=/dev/zero of="$work/mnt/f" bs=1M count="$size" conv=fsync
drop
mibs "dd read, local disk (cold)" dd if="$work/raw/f" of=/dev/null bs=1M
drop
mibs "dd read, tessera (cold)" dd if="$work/mnt/f" of=/dev/null bs=1M
