#!/usr/bin/env bash
# Build Tessera and mount a volume on the embedded defaults: SQLite metadata
# and a local directory as object store.
#
#   scripts/quickstart.sh [MOUNTPOINT]     (default /mnt/tessera)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mountpoint=${1:-/mnt/tessera}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v protoc >/dev/null || need+=(protobuf-compiler) # builds the etcd client's gRPC code
if [ ${#need[@]} -gt 0 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo install --quiet --locked --path "$root/crates/cli" --root "$HOME/.local"
bin="$HOME/.local/bin/tessera"

if [ "$(id -u)" = 0 ]; then state=/var/lib/tessera; else state=$HOME/.tessera; fi
mkdir -p "$state/objects" "$mountpoint"
"$bin" format "sqlite://$state/meta.db" myvolume --storage "file://$state/objects"
"$bin" mount "sqlite://$state/meta.db" "$mountpoint" -d --log "$state/mount.log"
echo "Tessera volume 'myvolume' is mounted on $mountpoint."
echo "Unmount with: $bin umount $mountpoint"
