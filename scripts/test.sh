#!/usr/bin/env bash
# The whole test suite: unit tests, the metadata conformance suite on every
# engine (SQLite, and Redis — direct, via Sentinel and over TLS —,
# PostgreSQL, MariaDB and etcd servers started here), multi-mount tests on
# each server engine, tests that mount real volumes (integrity: kill -9
# rounds with fsck and gc, corruption rounds, damaged objects; tar, cp -a,
# rsync, git and sqlite3 on a mount), the S3 path
# against a real S3-compatible server (moto) on loopback, the external
# suites pjdfstest, fsx and fio, and kubernetes-validate over the
# deployment manifests.
#
# Installs what it needs when missing (Debian packages, cargo tools, a
# Python venv) into a cache outside the clone, starts servers on private
# loopback ports and stops them (by PID) when it exits.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TESSERA_CACHE:-$HOME/.cache/tessera-test}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
# Incremental data is of no use to a test run and piles up in the kept
# target directory (20 GB of it after a few days of runs here).
export CARGO_INCREMENTAL=0
mkdir -p "$cache"
work=$(mktemp -d /tmp/tessera-test.XXXXXX)
# pjdfstest switches to unprivileged users, who must reach the test dirs.
chmod 755 "$work"
pids=()
mounts=()
passed=0
failed=0
failures=()

cleanup() {
    for m in "${mounts[@]}"; do
        "$bin" umount "$m" >/dev/null 2>&1 || fusermount3 -uz "$m" >/dev/null 2>&1 || true
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_services
    rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=scripts/services.sh
source "$root/scripts/services.sh"

log() { printf '\n=== %s\n' "$*"; }
record() { # name status
    if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "suite $1: ok"
    else failed=$((failed + 1)); failures+=("$1"); echo "suite $1: FAILED"; fi
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

log "dependencies"
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fio >/dev/null || need+=(fio)
# Real tools run on a mount by crates/cli/tests/tools.rs.
command -v rsync >/dev/null || need+=(rsync)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v git >/dev/null || need+=(git)
command -v setfacl >/dev/null || need+=(acl)
command -v protoc >/dev/null || need+=(protobuf-compiler) # the etcd client's gRPC code
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: FUSE tests cannot run" >&2; exit 1; }
id tests >/dev/null 2>&1 || as_root useradd -M -U tests
getent group nogroup >/dev/null || as_root groupadd nogroup

tools="$cache/tools"
# Pinned, with the crates' own lock files, so a new release cannot break CI.
for spec in pjdfstest@0.2.2 fsx@0.3.2; do
    tool=${spec%@*}
    if [ ! -x "$tools/bin/$tool" ]; then
        log "installing $spec"
        cargo install --quiet --locked --root "$tools" "$spec"
    fi
done
export PATH="$tools/bin:$PATH"
if [ ! -x "$cache/moto/bin/moto_server" ]; then
    log "installing moto"
    python3 -m venv "$cache/moto"
    "$cache/moto/bin/pip" install --quiet 'moto[server]==5.2.5'
fi

# Model loaders as inference servers run them (crates/cli/tests/tools.rs).
if [ ! -x "$cache/loaders/bin/python" ] || ! "$cache/loaders/bin/python" -c 'import safetensors, numpy' 2>/dev/null; then
    log "installing safetensors and numpy"
    python3 -m venv "$cache/loaders"
    "$cache/loaders/bin/pip" install --quiet 'safetensors==0.8.0' 'numpy==2.4.6'
fi
export TESSERA_TEST_PYTHON="$cache/loaders/bin/python"

log "build"
cd "$root"
cargo build --workspace --quiet
bin="$CARGO_TARGET_DIR/debug/tessera"

log "moto S3 server on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOTO_RECORDER_FILEPATH="$work/moto-requests.jsonl" "$cache/moto/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    "$cache/moto/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.2
done
"$cache/moto/bin/python" - "$port" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
s3.create_bucket(Bucket="tessera-test")
PY

log "metadata servers: redis-server, PostgreSQL, MariaDB, etcd (loopback, temporary data)"
start_redis
start_postgres
start_mysql
start_etcd
echo "redis: $TESSERA_TEST_REDIS_URL; postgres: ${TESSERA_TEST_POSTGRES_URL/:tessera-pass@/:****@}; mysql: ${TESSERA_TEST_MYSQL_URL/:tessera-pass@/:****@}; etcd: $TESSERA_TEST_ETCD_URL"

log "cargo test (unit, conformance, mounted volumes, S3)"
export TESSERA_TEST_S3_ENDPOINT="http://127.0.0.1:$port" TESSERA_TEST_S3_BUCKET=tessera-test
set +e
# --no-fail-fast: every test binary runs even when an earlier one fails, so
# one failure never hides the rest; the failed ones are listed below.
cargo test --workspace --no-fail-fast -- --include-ignored 2>&1 | tee "$work/cargo-test.log"
rc=${PIPESTATUS[0]}
set -e
echo "cargo test: $(grep -c '^test result: ok' "$work/cargo-test.log") test binaries passed, $(grep -c '^test result: FAILED' "$work/cargo-test.log") failed"
grep -E '^---- .* stdout ----$' "$work/cargo-test.log" | sed 's/^---- \(.*\) stdout ----$/  failed test: \1/' || true
record "cargo test" "$rc"

mount_volume() { # dir -> prints mountpoint
    local d=$1
    mkdir -p "$d/mnt"
    "$bin" format "sqlite://$d/meta.db" suite --storage "file://$d/objects" >/dev/null
    "$bin" mount "sqlite://$d/meta.db" "$d/mnt" -d --log "$d/mount.log" --cache-dir "$d/cache" --metrics none >/dev/null
    mounts+=("$d/mnt")
}

log "pjdfstest"
cat >"$work/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.02

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML
mkdir -p "$work/local"
(cd "$work/local" && pjdfstest -c "$work/pjdfstest.toml" -p "$work/local" >"$work/pjd-local.log" 2>&1 || true)
mount_volume "$work/pjd"
(cd "$work/pjd/mnt" && pjdfstest -c "$work/pjdfstest.toml" -p "$work/pjd/mnt" >"$work/pjd-tessera.log" 2>&1 || true)
echo "local disk: $(grep '^Summary' "$work/pjd-local.log")"
echo "tessera:    $(grep '^Summary' "$work/pjd-tessera.log")"
awk '$NF == "ok" {print $1}' "$work/pjd-local.log" | sort >"$work/pjd-local.ok"
awk '$NF == "ok" {print $1}' "$work/pjd-tessera.log" | sort >"$work/pjd-tessera.ok"
grep -v '^#' tests/pjdfstest-known-failures.txt | awk 'NF {print $1}' | sort >"$work/pjd-known"
comm -23 "$work/pjd-local.ok" "$work/pjd-tessera.ok" | comm -23 - "$work/pjd-known" >"$work/pjd-regressions"
if [ -s "$work/pjd-regressions" ] || ! grep -q '^Summary' "$work/pjd-tessera.log"; then
    echo "tests that pass on the local disk but not on Tessera (and are not in tests/pjdfstest-known-failures.txt):"
    cat "$work/pjd-regressions"
    grep -A3 FAILED "$work/pjd-tessera.log" | head -50 || true
    record pjdfstest 1
else
    record pjdfstest 0
fi

log "fsx (100,000 operations)"
set +e
(cd "$work/pjd/mnt" && fsx -N 100000 -S 7 -q fsx.dat >"$work/fsx.log" 2>&1)
rc=$?
set -e
tail -n 3 "$work/fsx.log"
record fsx "$rc"

log "fio with crc32c verification"
set +e
(cd "$work/pjd/mnt" && fio --name=verify --filename=fio.dat --size=64M --bs=4k --rw=randrw \
    --ioengine=psync --verify=crc32c --do_verify=1 --verify_fatal=1 >"$work/fio.log" 2>&1)
rc=$?
set -e
grep -E 'err=|verify:' "$work/fio.log" | head -n 5
if [ "$rc" = 0 ] && grep -q 'err= 0' "$work/fio.log"; then record fio 0; else cat "$work/fio.log"; record fio 1; fi

log "kubernetes-validate (deploy/kubernetes, strict, Kubernetes 1.31) and the Helm chart"
kv="$cache/kubernetes-validate"
if [ ! -x "$kv/bin/kubernetes-validate" ]; then
    python3 -m venv "$kv"
    "$kv/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi
set +e
"$kv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 deploy/kubernetes/*.yaml deploy/kubernetes/examples/*.yaml
rc=$?
# The Helm chart with its default values renders to exactly the plain
# manifests (helm is not installable here: scripts/render-chart.py renders
# the subset of the template language the chart keeps to, and refuses the
# rest).
"$kv/bin/python" scripts/render-chart.py deploy/helm/tessera "$work/chart" || rc=1
for f in "$work"/chart/*.yaml; do
    plain=$(ls deploy/kubernetes/*-"$(basename "$f")")
    diff -u "$plain" "$f" || { echo "the chart renders $(basename "$f") unlike $plain"; rc=1; }
done
# ... and with other values it renders objects that validate too.
"$kv/bin/python" scripts/render-chart.py deploy/helm/tessera "$work/chart-other" deploy/helm/ci/other-values.yaml || rc=1
"$kv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "$work"/chart-other/*.yaml || rc=1
set -e
record kubernetes-validate "$rc"

echo
echo "suites: $passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
    echo "failed: ${failures[*]}"
    exit 1
fi
