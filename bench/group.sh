#!/usr/bin/env bash
# The cache group, in one run. A 4 GiB file in a volume whose blocks live on
# an S3-compatible server on loopback (rustfs if built, else SeaweedFS); three `tessera cache-server`
# members on 127.0.0.2-4 that hold it after `tessera warmup --cache-group`;
# one client on the same machine:
#
#   1. iperf3 on loopback, 3 streams: the network ceiling of this machine;
#   2. the members' memory tiers big enough for their share (pooled memory,
#      kernel caches dropped): every block fetched from its owner by
#      `tessera cache-group bench` (no FUSE), then the file read with dd
#      through a `--no-sharing` mount;
#   3. the members restarted with small memory tiers (pooled disks): the
#      block client again with the members reading their disks (kernel
#      caches dropped), then with the blocks in their page cache, then the
#      same blocks from object storage; and dd through the mount;
#   4. the FUSE ceiling: dd through a mount that has the whole file in its
#      own memory tier (no network, no disk) —
#
# GB/s, CPU seconds per GB of the client (from its own report or /proc) and
# of the members (/proc), the ratio to iperf3 and to object storage.
#
#   bench/group.sh [--size-mib 4096] [--threads 6] [--member-mem 2G] [--profile]
#
# --threads: requests in flight in the block client. Two per member (6)
# moved more than 16 or 32 on this 2-core machine (5.16-5.44 GB/s against
# 4.96-5.34 from the members' page cache): fewer threads to wake.
# --member-mem: each member's memory tier in pass 2.
# --profile: a system-wide perf sample of each pass, summarised after the
# table (CPU share by thread, hottest functions).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
size_mib=4096
threads=6
member_mem=2G
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --member-mem) member_mem=$2; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        *) echo "usage: $0 [--size-mib N] [--threads N] [--member-mem SIZE] [--profile]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between reads" >&2; exit 1; }
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
if [ -n "${PROFILE:-}" ]; then command -v perf >/dev/null || need+=(linux-perf); fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
build_tessera

scratch group
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
clk=$(getconf CLK_TCK)

start_rustfs "$work" groupbench

log "volume with a $size_mib MiB file"
meta="sqlite://$work/meta.db"
"$tessera" format "$meta" groupbench --storage s3://groupbench/vol >/dev/null
mkdir -p "$work/writer" "$work/client"
"$tessera" mount "$meta" "$work/writer" -d --log "$work/writer.log" --cache-dir memory --metrics none >/dev/null
mounts+=("$work/writer")
head -c $((size_mib << 20)) /dev/urandom >"$work/writer/model.bin"
"$tessera" umount "$work/writer"

log "three members, each with a $member_mem memory tier"
member_ports=()
for i in 2 3 4; do member_ports+=("$(port)"); done
members=()
start_members() {
    members=()
    for k in 0 1 2; do
        local i=$((k + 2))
        "$tessera" cache-server "$meta" --cache-group bench --group-listen "127.0.0.$i:${member_ports[$k]}" \
            --cache-dir "$work/member$i" --cache-size 64G --free-space-ratio 0.02 --metrics none \
            --mem-cache-size "$1" >>"$work/member$i.log" 2>&1 &
        pids+=($!)
        members+=($!)
    done
    sleep 3
}
stop_members() {
    kill "${members[@]}"
    local p q keep=()
    for p in "${members[@]}"; do
        while kill -0 "$p" 2>/dev/null; do sleep 0.2; done
    done
    for q in "${pids[@]}"; do
        [[ " ${members[*]} " == *" $q "* ]] || keep+=("$q")
    done
    pids=("${keep[@]}")
}
start_members "$member_mem"
mount_client() {
    "$tessera" mount "$meta" "$work/client" -d --log "$work/client.log" --cache-dir memory \
        --metrics none --cache-group bench --no-sharing "$@" >/dev/null
    sleep 1
}
mount_client
mounts+=("$work/client")
sleep 1
"$tessera" warmup --cache-group bench "$work/client/model.bin" >&2
"$tessera" warmup --cache-group bench --check "$work/client/model.bin" >&2

log "iperf3 on loopback"
iport=$(port)
iperf3 -s -B 127.0.0.1 -p "$iport" -1 >/dev/null 2>&1 &
pids+=($!)
sleep 1
iperf_gbs=$(iperf3 -c 127.0.0.1 -p "$iport" -P 3 -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e9)')
gb=$(calc "$size_mib * 1048576 / 1e9")

# block_pass LABEL OUT: the block client over the whole file; members' CPU
# seconds per GB into $member_cpu.
block_pass() {
    local m0 m1
    m0=$(ticks "${members[@]}")
    profile_start "$1"
    "$tessera" cache-group bench "$meta" bench /model.bin --threads "$threads" --group-only | tee "$work/$2" >&2
    profile_stop
    m1=$(ticks "${members[@]}")
    member_cpu=$(calc "($m1 - $m0) / $clk / $gb")
}
# fuse_pass LABEL: dd of the file through the client mount, whose kernel
# page cache is dropped first; GB/s, client and member CPU s per GB.
fuse_pass() {
    local m0 m1 c0 c1 t0 t1 client_pid
    dd if="$work/client/model.bin" iflag=nocache count=0 status=none
    client_pid=$(pgrep -f "tessera mount $meta $work/client")
    m0=$(ticks "${members[@]}")
    c0=$(ticks "$client_pid")
    profile_start "$1"
    t0=$(now)
    dd if="$work/client/model.bin" of=/dev/null bs=4M status=none
    t1=$(now)
    profile_stop
    c1=$(ticks "$client_pid")
    m1=$(ticks "${members[@]}")
    fuse_gbs=$(calc "$gb / ($t1 - $t0)")
    fuse_client_cpu=$(calc "($c1 - $c0) / $clk / $gb")
    fuse_member_cpu=$(calc "($m1 - $m0) / $clk / $gb")
}
gbs_of() { sed -E 's/.*: ([0-9.]+) GB\/s.*/\1/' <<<"$1"; }
cpu_of() { sed -E 's/.*client CPU ([0-9.]+) s per GB.*/\1/' <<<"$1"; }
row() { printf '| %s | %.2f | %.2f | %s | %s |\n' "$1" "$2" "$(calc "$2/$iperf_gbs")" "$3" "$4"; }

log "blocks in the members' memory tiers (kernel caches dropped)"
drop
block_pass "group, block client, members' memory tiers" gbench_mem.out
mem_member_cpu=$member_cpu
fuse_pass "group through FUSE (dd), members' memory tiers"
mem_fuse=("$fuse_gbs" "$fuse_client_cpu" "$fuse_member_cpu")

log "members restarted with 64M memory tiers: blocks from their disks"
stop_members
start_members 64M
"$tessera" umount "$work/client"
mount_client
sleep 2
drop
block_pass "group, block client, members read their disks" gbench.out
disk_member_cpu=$member_cpu
block_pass "group, block client, blocks in the members' page cache" gbench_hot.out
hot_member_cpu=$member_cpu
"$tessera" cache-group bench "$meta" bench /model.bin --threads "$threads" | tee "$work/gbench2.out" >&2
drop
fuse_pass "group through FUSE (dd), members read their disks"
disk_fuse=("$fuse_gbs" "$fuse_client_cpu" "$fuse_member_cpu")

log "the FUSE ceiling: the whole file in the mount's own memory tier"
"$tessera" umount "$work/client"
mount_client --mem-cache-size $((size_mib + 1024))M
dd if="$work/client/model.bin" of=/dev/null bs=4M status=none
fuse_pass "FUSE alone (dd), blocks in the mount's memory"
ceiling=("$fuse_gbs" "$fuse_client_cpu")

mem_line=$(grep '^group' "$work/gbench_mem.out")
disk_line=$(grep '^group' "$work/gbench.out")
hot_line=$(grep '^group' "$work/gbench_hot.out")
object_line=$(grep '^object' "$work/gbench2.out")
printf '\nCache group: %s MiB file, 3 members on 127.0.0.2-4, one client, %s on loopback\n' "$size_mib" "$s3_server"
printf '| path | GB/s | vs iperf3 | client CPU s/GB | members CPU s/GB |\n|---|---:|---:|---:|---:|\n'
row "iperf3 loopback, 3 streams" "$iperf_gbs" "" ""
row "block client ($threads in flight), members' memory tiers ($member_mem)" "$(gbs_of "$mem_line")" "$(cpu_of "$mem_line")" "$(calc "round($mem_member_cpu, 3)")"
row "through FUSE (dd), members' memory tiers" "${mem_fuse[0]}" "$(calc "round(${mem_fuse[1]}, 3)")" "$(calc "round(${mem_fuse[2]}, 3)")"
row "block client, members read their disks" "$(gbs_of "$disk_line")" "$(cpu_of "$disk_line")" "$(calc "round($disk_member_cpu, 3)")"
row "block client, blocks in the members' page cache" "$(gbs_of "$hot_line")" "$(cpu_of "$hot_line")" "$(calc "round($hot_member_cpu, 3)")"
row "through FUSE (dd), members read their disks" "${disk_fuse[0]}" "$(calc "round(${disk_fuse[1]}, 3)")" "$(calc "round(${disk_fuse[2]}, 3)")"
row "FUSE alone (dd), file in the mount's memory tier" "${ceiling[0]}" "$(calc "round(${ceiling[1]}, 3)")" ""
printf '\n%s\n%s\n%s\n%s\n' "$mem_line" "$disk_line" "$hot_line" "$object_line"
if [ -s "$work/profile.txt" ]; then cat "$work/profile.txt"; fi
