#!/usr/bin/env bash
# What sealed blocks cost: the same write and cold read through a mount of
# a layout-1 volume (bare blocks) and a layout-2 volume (each block sealed
# with per-piece CRC32C bound to its key, checked on every fetch), side by
# side, rounds alternating. The store is a local directory, so the
# checksum work is not hidden behind a network; caches are memory only and
# dropped between phases. Reports GiB/s and the mount's CPU seconds per GiB.
#
#   bench/integrity.sh [--size-gib 2] [--rounds 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
size_gib=2
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --size-gib) size_gib=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--size-gib N] [--rounds N]" >&2; exit 2 ;;
    esac
done
scratch integrity
build_tessera
count=$((size_gib * 1024))

cpu_of() { # pid -> CPU seconds so far
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

mount_vol() { # dir
    "$tessera" mount "sqlite://$1/meta.db" "$1/mnt" -d --log "$1/mount.log" \
        --cache-dir memory --mem-cache-size 64M --metrics none >/dev/null
    mounts+=("$1/mnt")
    pgrep -f "tessera mount sqlite://$1/meta.db" | head -n1
}

printf '%-6s %-7s %10s %12s\n' layout phase "GiB/s" "CPU s/GiB" >"$work/results"
for round in $(seq "$rounds"); do
    for layout in 1 2; do
        d="$work/r$round-v$layout"
        mkdir -p "$d/mnt"
        "$tessera" format "sqlite://$d/meta.db" "bench$layout" --storage "file://$d/objects" \
            --layout-version "$layout" >/dev/null
        pid=$(mount_vol "$d")
        c0=$(cpu_of "$pid"); t0=$(now)
        dd if=/dev/zero of="$d/mnt/f" bs=4M count=$((count / 4)) conv=fsync status=none
        c1=$(cpu_of "$pid"); t1=$(now)
        printf '%-6s %-7s %10.2f %12.3f\n' "$layout" write \
            "$(calc "$size_gib / ($t1 - $t0)")" "$(calc "($c1 - $c0) / $size_gib")" >>"$work/results"
        "$tessera" umount "$d/mnt"
        drop
        pid=$(mount_vol "$d")
        c0=$(cpu_of "$pid"); t0=$(now)
        cat "$d/mnt/f" >/dev/null
        c1=$(cpu_of "$pid"); t1=$(now)
        printf '%-6s %-7s %10.2f %12.3f\n' "$layout" read \
            "$(calc "$size_gib / ($t1 - $t0)")" "$(calc "($c1 - $c0) / $size_gib")" >>"$work/results"
        "$tessera" umount "$d/mnt"
        rm -rf "$d"
    done
done
cat "$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
for phase in ("write", "read"):
    med = {v: (statistics.median(float(r[2]) for r in rows if r[0] == v and r[1] == phase),
               statistics.median(float(r[3]) for r in rows if r[0] == v and r[1] == phase))
           for v in ("1", "2")}
    print(f"{phase}: bare {med['1'][0]:.2f} GiB/s {med['1'][1]:.3f} CPU s/GiB; "
          f"sealed {med['2'][0]:.2f} GiB/s {med['2'][1]:.3f} CPU s/GiB; "
          f"sealed/bare speed {med['2'][0] / med['1'][0]:.2f}, "
          f"extra CPU {med['2'][1] - med['1'][1]:+.3f} s/GiB")
PY
