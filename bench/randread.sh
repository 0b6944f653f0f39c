#!/usr/bin/env bash
# Small random reads of a file whose blocks are all on the node's disk
# cache (a dataset sampled record by record, a loader that seeks): `fio
# --rw=randread` for --runtime seconds with --jobs readers, side by side,
# on one machine, one after the other in each round:
#   tessera   a fresh mount over a disk cache that a whole read filled
#             (SQLite metadata, file:// store), the page cache dropped;
#   also      the same with another tessera binary (--also PATH: an older
#             build, to compare two commits in one run);
#   juicefs   JuiceFS 0.14.2 (sqlite3, file bucket) over its own full disk
#             cache of the same file;
#   disk      the same file on the local disk, read with O_DIRECT: the
#             disk's own rate for reads that all reach it (a reference, not
#             a like-for-like: in the mounts, reads of pages the kernel
#             already holds never reach the file system).
# Printed: IOPS per round, and the mount's range reads and disk bytes.
#
#   bench/randread.sh [--size-mib 1024] [--bs 4k] [--jobs 4] [--runtime 15]
#                     [--rounds 2] [--also PATH]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
size_mib=1024
bs=4k
jobs=4
runtime=15
rounds=2
also=
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --bs) bs=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --also) also=$2; shift 2 ;;
        *) echo "usage: $0 [--size-mib N] [--bs SIZE] [--jobs N] [--runtime S] [--rounds N] [--also PATH]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between runs" >&2; exit 1; }
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cache_root=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}
source "$root/bench/juicefs.sh"
build_tessera
scratch randread

log "a ${size_mib} MiB file, on the local disk and in both volumes"
head -c "${size_mib}M" /dev/urandom >"$work/file"
mkdir -p "$work/mnt" "$work/jmnt"
"$tessera" format "sqlite://$work/tessera.db" randread --storage "file://$work/objects" >/dev/null
"$juicefs" format --storage file --bucket "$work/jobjects/" "sqlite3://$work/juicefs.db" randread >/dev/null 2>&1

tessera_mount() { # binary
    "$1" mount "sqlite://$work/tessera.db" "$work/mnt" -d --log "$work/mount.log" \
        --cache-dir "$work/cache" --free-space-ratio 0.01 --metrics none >/dev/null
    mounts+=("$work/mnt")
}
juicefs_mount() {
    "$juicefs" mount -d --no-usage-report "sqlite3://$work/juicefs.db" "$work/jmnt" --cache-dir "$work/jcache" \
        --cache-size 102400 --free-space-ratio 0.01 --log "$work/juicefs.log" >/dev/null 2>&1
    mounts+=("$work/jmnt")
}
# Written, then read whole once, so that every block is on each disk cache
# (blocks are written to it in the background: wait until all are there).
settle() { # cache dir
    local t
    for t in $(seq 120); do
        [ "$(du -sb "$1" 2>/dev/null | cut -f1)" -ge $((size_mib << 20)) ] && return 0
        sleep 1
    done
    echo "warning: the disk cache $1 holds $(du -sh "$1" | cut -f1) of the ${size_mib} MiB after 120 s" >&2
}
# A new mount reads it: the writer's own blocks may still be in memory.
tessera_mount "$tessera"
cp "$work/file" "$work/mnt/file"
"$tessera" umount "$work/mnt"
tessera_mount "$tessera"
cat "$work/mnt/file" >/dev/null
settle "$work/cache"
"$tessera" umount "$work/mnt"
juicefs_mount
cp "$work/file" "$work/jmnt/file"
"$juicefs" umount "$work/jmnt" >/dev/null 2>&1
juicefs_mount
"$juicefs" warmup "$work/jmnt/file" >/dev/null 2>&1
settle "$work/jcache"
"$juicefs" umount "$work/jmnt" >/dev/null 2>&1
log "disk caches: tessera $(du -sh "$work/cache" | cut -f1), juicefs $(du -sh "$work/jcache" | cut -f1)"

fio_iops() { # file [fio flags]
    local f=$1
    shift
    fio --name=randread --filename="$f" --rw=randread --bs="$bs" --numjobs="$jobs" \
        --runtime="$runtime" --time_based --group_reporting --ioengine=psync "$@" 2>&1 |
        sed -n 's/.*read: IOPS=\([^,]*\),.*/\1/p'
}
tessera_round() { # label binary
    tessera_mount "$2"
    drop
    local iops
    iops=$(fio_iops "$work/mnt/file")
    local stats
    stats=$(grep -E '^tessera_(disk_range_reads_total|tier_read_bytes_total\{tier="(disk|object)"\})' "$work/mnt/.stats" |
        sed 's/tessera_//; s/_total//' | tr '\n' ' ')
    printf '%-22s %10s   %s\n' "$1" "$iops" "$stats"
    "$2" umount "$work/mnt"
}
for r in $(seq "$rounds"); do
    log "round $r: IOPS of $jobs readers of $bs for ${runtime}s"
    tessera_round tessera "$tessera"
    [ -n "$also" ] && tessera_round "tessera ($(basename "$also"))" "$also"
    juicefs_mount
    drop
    printf '%-22s %10s\n' "juicefs 0.14.2" "$(fio_iops "$work/jmnt/file")"
    "$juicefs" umount "$work/jmnt" >/dev/null 2>&1
    drop
    printf '%-22s %10s\n' "local disk, O_DIRECT" "$(fio_iops "$work/file" --direct=1)"
done
