#!/usr/bin/env bash
# Model loading as inference servers do it, with a store far away: a
# safetensors repository (two checkpoint shards and four adapters, written
# with the `safetensors` package) loaded through `safe_open` over mmap,
# every tensor read in a shuffled order (timed), then compared with what it
# should be (untimed; crates/cli/tests/loaders/safetensors_check.py). The store is a local
# directory whose GETs and HEADs each wait --latency-ms first (the mount's
# hidden --inject-store-latency-ms: this kernel has no netem, so the
# latency is injected in the client; the bandwidth is the disk's).
#
# Per round, kernel caches dropped before each load:
#   local     the same files on the local disk
#   cold      a new mount with an empty cache
#   prefetch  the same with --prefetch-on-open '*.safetensors'
#   warm      a new mount over the cache the cold load filled
# Printed: median seconds and GiB/s of each, and each next to local.
#
#   bench/loaders.sh [--scale 256] [--latency-ms 25] [--rounds 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
scale=256
latency=25
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --scale) scale=$2; shift 2 ;;
        --latency-ms) latency=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--scale N] [--latency-ms MS] [--rounds N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between loads" >&2; exit 1; }
build_tessera
scratch loaders
py=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}/loaders/bin/python
if ! "$py" -c 'import safetensors, numpy' 2>/dev/null; then
    python3 -m venv "$(dirname "$(dirname "$py")")"
    "$(dirname "$py")/pip" install --quiet 'safetensors==0.8.0' 'numpy==2.4.6'
fi
check="$root/crates/cli/tests/loaders/safetensors_check.py"

meta="sqlite://$work/meta.db"
"$tessera" format "$meta" loaders --storage "file://$work/objects" >/dev/null
mnt=$work/mnt
mkdir -p "$mnt" "$work/local"
mounts+=("$mnt")
start() { # extra mount flags...
    "$tessera" mount "$meta" "$mnt" -d --log "$work/mount.log" --metrics none \
        --inject-store-latency-ms "$latency" "$@" >/dev/null
}
log "writing the repository (scale $scale)"
start --cache-dir "$work/cache-w"
"$py" "$check" write "$mnt" 7 "$scale"
"$tessera" umount "$mnt"
"$py" "$check" write "$work/local" 7 "$scale"
bytes=$(du -sb "$work/local" | cut -f1)
log "$(calc "$bytes / 2**30") GiB in 6 files"

load() { # label dir
    drop
    local t0 t1
    t0=$(now)
    "$py" "$check" load "$2" 7 "$scale" >/dev/null
    t1=$(now)
    echo "$1 $(calc "$t1 - $t0")" >>"$work/results"
    # Every tensor compared too, untimed (from the caches the load filled).
    "$py" "$check" check "$2" 7 "$scale" >/dev/null
}
: >"$work/results"
for r in $(seq "$rounds"); do
    load local "$work/local"
    start --cache-dir "$work/cache-c$r"
    load cold "$mnt"
    "$tessera" umount "$mnt"
    start --cache-dir "$work/cache-p$r" --prefetch-on-open '*.safetensors'
    load prefetch "$mnt"
    "$tessera" umount "$mnt"
    start --cache-dir "$work/cache-c$r"
    load warm "$mnt"
    "$tessera" umount "$mnt"
    log "round $r: $(tail -4 "$work/results" | tr '\n' ' ')"
done
python3 - "$work/results" "$bytes" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
gib = int(sys.argv[2]) / 2**30
med = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in ("local", "cold", "prefetch", "warm")}
print(f"{'load':<10}{'s':>8}{'GiB/s':>8}{'x local':>9}")
for k, v in med.items():
    print(f"{k:<10}{v:>8.2f}{gib / v:>8.2f}{v / med['local']:>9.2f}")
PY
