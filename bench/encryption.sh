#!/usr/bin/env bash
# What encryption at rest costs, in one run: two volumes on the local disk
# (file:// storage, no compression), one plain and one formatted with
# --encrypt-key. Each round, for each volume in turn: a --gib GiB file is
# written (dd, 4 MiB writes, fsync) and read back through a fresh mount with
# an empty cache (kernel caches dropped), so every block is sealed on the
# way out and opened on the way in. Printed per volume: medians of write
# and read seconds and the mount's CPU seconds per GiB (user + system, from
# /proc), and what encryption adds per GiB.
#
#   bench/encryption.sh [--gib 1] [--rounds 3]
#
# Needs root (to drop the kernel caches) and openssl (for the key).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
gib=1
rounds=3
while [ $# -gt 0 ]; do
    case $1 in
        --gib) gib=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--gib N] [--rounds N]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between reads" >&2; exit 1; }
build_tessera
scratch encryption

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
log "source file: $gib GiB of random bytes"
dd if=/dev/urandom of="$work/src" bs=4M count=$((gib * 256)) status=none

for v in plain enc; do
    flags=()
    [ $v = enc ] && flags=(--encrypt-key "$work/key.pem")
    "$tessera" format "sqlite://$work/$v.db" "bench-$v" --storage "file://$work/objects-$v" "${flags[@]}" >/dev/null
done

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)

# mount VOLUME ROUND → sets $mpid; the mount has an empty cache of its own
mount_fresh() {
    local v=$1 tag=$2 flags=()
    [ $v = enc ] && flags=(--encrypt-key "$work/key.pem")
    mkdir -p "$work/mnt-$v"
    "$tessera" mount "sqlite://$work/$v.db" "$work/mnt-$v" --cache-dir "$work/cache-$v-$tag" \
        --metrics none "${flags[@]}" 2>>"$work/mount-$v.log" &
    mpid=$!
    pids+=("$mpid")
    mounts+=("$work/mnt-$v")
    for _ in $(seq 200); do mountpoint -q "$work/mnt-$v" && return; sleep 0.05; done
    echo "mount of $v did not come up" >&2; exit 1
}

unmount() {
    "$tessera" umount "$work/mnt-$1" >/dev/null
    wait "$mpid" 2>/dev/null || true
}

results=$work/results
: >"$results"
for r in $(seq "$rounds"); do
    for v in plain enc; do
        drop
        mount_fresh $v "w$r"
        c0=$(cpu_of "$mpid"); t0=$(now)
        dd if="$work/src" of="$work/mnt-$v/f" bs=4M conv=fsync status=none
        t1=$(now); c1=$(cpu_of "$mpid")
        unmount $v
        drop
        mount_fresh $v "r$r"
        c2=$(cpu_of "$mpid"); t2=$(now)
        dd if="$work/mnt-$v/f" of=/dev/null bs=4M status=none
        t3=$(now); c3=$(cpu_of "$mpid")
        cmp -s "$work/src" "$work/mnt-$v/f" || { echo "$v: the file read back differs" >&2; exit 1; }
        rm "$work/mnt-$v/f"
        unmount $v
        echo "$v $(calc "$t1-$t0") $(calc "$t3-$t2") $(calc "($c1-$c0)/$ticks/$gib") $(calc "($c3-$c2)/$ticks/$gib")" >>"$results"
        log "round $r $v: $(tail -1 "$results")"
    done
done

python3 - "$results" "$gib" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
gib = float(sys.argv[2])
med = {}
for v in ("plain", "enc"):
    cols = list(zip(*[[float(x) for x in r[1:]] for r in rows if r[0] == v]))
    med[v] = [statistics.median(c) for c in cols]
print(f"{'volume':<10}{'write s':>9}{'GiB/s':>7}{'read s':>9}{'GiB/s':>7}{'write CPU s/GiB':>17}{'read CPU s/GiB':>16}")
for v, name in (("plain", "plain"), ("enc", "encrypted")):
    w, r, cw, cr = med[v]
    print(f"{name:<10}{w:>9.2f}{gib / w:>7.2f}{r:>9.2f}{gib / r:>7.2f}{cw:>17.2f}{cr:>16.2f}")
w = med["enc"][0] / med["plain"][0]
r = med["enc"][1] / med["plain"][1]
print(f"encrypted/plain time: write {w:.2f}x, read {r:.2f}x; "
      f"added CPU per GiB: write {med['enc'][2] - med['plain'][2]:+.2f} s, read {med['enc'][3] - med['plain'][3]:+.2f} s")
EOF
