#!/usr/bin/env bash
# The cache group, in one run. A 4 GiB file in a volume whose blocks live on
# an S3-compatible server on loopback (rustfs); three `tessera cache-server`
# members on 127.0.0.2-4 that hold it after `tessera warmup --cache-group`;
# one client on the same machine:
#
#   1. iperf3 on loopback, 3 streams: the network ceiling of this machine;
#   2. `tessera cache-group bench`: every block of the file from its owner
#      (6 in flight, no FUSE), members reading their disks (kernel caches
#      dropped), then again with the blocks in the members' page cache (the
#      network and CPU alone), then the same blocks from object storage —
#      GB/s, client CPU seconds per GB, and the ratio;
#   3. the file read with dd through a `--no-sharing` mount (FUSE) — GB/s;
#
# and the members' CPU seconds per GB served during 2 and 3 (from /proc).
#
#   bench/group.sh [--size-mib 4096] [--threads 6] [--profile]
#
# --threads: requests in flight in the block client. Two per member (6)
# moved more than 16 or 32 on this 2-core machine (5.16-5.44 GB/s against
# 4.96-5.34 from the members' page cache): fewer threads to wake.
# --profile: a system-wide perf sample of each pass, summarised after the
# table (CPU share by thread, hottest functions).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
size_mib=4096
threads=6
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) size_mib=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        *) echo "usage: $0 [--size-mib N] [--threads N] [--profile]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between reads" >&2; exit 1; }
need_rustfs
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

log "three members"
members=()
for i in 2 3 4; do
    "$tessera" cache-server "$meta" --group bench --listen "127.0.0.$i:$(port)" \
        --cache-dir "$work/member$i" --cache-size 64G --free-space-ratio 0.02 --metrics none \
        >"$work/member$i.log" 2>&1 &
    pids+=($!)
    members+=($!)
done
sleep 3
"$tessera" mount "$meta" "$work/client" -d --log "$work/client.log" --cache-dir memory \
    --metrics none --cache-group bench --no-sharing >/dev/null
mounts+=("$work/client")
sleep 2
"$tessera" warmup --cache-group bench "$work/client/model.bin" >&2
"$tessera" warmup --cache-group bench --check "$work/client/model.bin" >&2

log "iperf3 on loopback"
iport=$(port)
iperf3 -s -B 127.0.0.1 -p "$iport" -1 >/dev/null 2>&1 &
pids+=($!)
sleep 1
iperf_gbs=$(iperf3 -c 127.0.0.1 -p "$iport" -P 3 -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e9)')

log "group vs object storage, no FUSE"
drop
m0=$(ticks "${members[@]}")
profile_start "group, block client, members read their disks"
"$tessera" cache-group bench "$meta" bench /model.bin --threads "$threads" --group-only | tee "$work/gbench.out" >&2
profile_stop
m1=$(ticks "${members[@]}")
log "again, the blocks now in the members' page cache"
profile_start "group, block client, blocks in the members' page cache"
"$tessera" cache-group bench "$meta" bench /model.bin --threads "$threads" --group-only | tee "$work/gbench_hot.out" >&2
profile_stop
m2=$(ticks "${members[@]}")
"$tessera" cache-group bench "$meta" bench /model.bin --threads "$threads" | tee "$work/gbench2.out" >&2
gb=$(calc "$size_mib * 1048576 / 1e9")
member_cpu=$(calc "($m1 - $m0) / $clk / $gb")
member_cpu_hot=$(calc "($m2 - $m1) / $clk / $gb")

log "through a --no-sharing mount"
drop
m0=$(ticks "${members[@]}")
client_pid=$(pgrep -f "tessera mount $meta $work/client")
c0=$(ticks "$client_pid")
profile_start "group through the FUSE mount (dd)"
t0=$(now)
dd if="$work/client/model.bin" of=/dev/null bs=4M status=none
t1=$(now)
profile_stop
c1=$(ticks "$client_pid")
m1=$(ticks "${members[@]}")
fuse_gbs=$(calc "$gb / ($t1 - $t0)")
fuse_client_cpu=$(calc "($c1 - $c0) / $clk / $gb")
fuse_member_cpu=$(calc "($m1 - $m0) / $clk / $gb")

group_line=$(grep '^group' "$work/gbench.out")
hot_line=$(grep '^group' "$work/gbench_hot.out")
object_line=$(grep '^object' "$work/gbench2.out")
group_gbs=$(sed -E 's/.*: ([0-9.]+) GB\/s.*/\1/' <<<"$group_line")
hot_gbs=$(sed -E 's/.*: ([0-9.]+) GB\/s.*/\1/' <<<"$hot_line")
printf '\nCache group: %s MiB file, 3 members on 127.0.0.2-4, one client, rustfs on loopback\n' "$size_mib"
printf '| path | GB/s | vs iperf3 |\n|---|---:|---:|\n'
printf '| iperf3 loopback, 3 streams | %.2f | 1.00 |\n' "$iperf_gbs"
printf '| group, block client (%s in flight), members read their disks | %.2f | %.2f |\n' "$threads" "$group_gbs" "$(calc "$group_gbs/$iperf_gbs")"
printf '| group, block client, blocks in the members'"'"' page cache | %.2f | %.2f |\n' "$hot_gbs" "$(calc "$hot_gbs/$iperf_gbs")"
printf '| group, through FUSE (dd) | %.2f | %.2f |\n' "$fuse_gbs" "$(calc "$fuse_gbs/$iperf_gbs")"
printf '\n%s\n%s\n%s\n' "$group_line" "$hot_line" "$object_line"
printf 'members: %.3f CPU s per GB served (block client), %.3f (page cache warm), %.3f (FUSE read)\n' \
    "$member_cpu" "$member_cpu_hot" "$fuse_member_cpu"
printf 'client mount: %.3f CPU s per GB read through FUSE\n' "$fuse_client_cpu"
if [ -s "$work/profile.txt" ]; then cat "$work/profile.txt"; fi
