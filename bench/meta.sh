#!/usr/bin/env bash
# Metadata operations per second, Tessera next to JuiceFS 0.14.2, on each
# metadata engine, with 1 and 4 threads, in one run (bench/mdtest.py:
# create, stat, readdir, rename, unlink of empty files; kernel dentry and
# inode caches dropped before each phase).
#
#   bench/meta.sh [--files 2000] [--engines sqlite,redis,postgres,mysql,etcd]
#
# Both clients use the same server for each engine (started here by
# scripts/services.sh on loopback, data in temporary directories), separate
# databases on it, a local directory as object store (empty files store no
# data) and their default cache times (1 s attributes and entries).
# JuiceFS 0.14.2 has no etcd engine; that row shows Tessera alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
files=2000
engines="sqlite,redis,postgres,mysql,etcd"
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift 2 ;;
        --engines) engines=$2; shift 2 ;;
        *) echo "usage: $0 [--files N] [--engines a,b,...]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root: kernel caches are dropped between phases" >&2; exit 1; }

cache_root=${TESSERA_BENCH_CACHE:-$HOME/.cache/tessera-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-test/target}
source "$root/bench/juicefs.sh"
source "$root/scripts/services.sh"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tessera
tessera="$CARGO_TARGET_DIR/release/tessera"

work=$(mktemp -d /var/tmp/tessera-meta.XXXXXX)
mounts=()
cleanup() {
    for m in "${mounts[@]}"; do fusermount3 -uz "$m" 2>/dev/null || true; done
    stop_services
    rm -rf "$work"
}
trap cleanup EXIT

sql() { # engine database: an empty database of that name
    case $1 in
        postgres) psql "$TESSERA_TEST_POSTGRES_URL" -q -o /dev/null -c "DROP DATABASE IF EXISTS $2" -c "CREATE DATABASE $2" ;;
        mysql) local port=${TESSERA_TEST_MYSQL_URL##*:}
            mariadb --no-defaults -h 127.0.0.1 -P "${port%/*}" -u tessera -ptessera-pass \
                   -e "DROP DATABASE IF EXISTS $2; CREATE DATABASE $2" ;;
    esac
}
urls() { # engine -> tessera URL and juicefs URL on two lines (juicefs "-" when it has no such engine)
    local pg_base my_hostport
    case $1 in
        sqlite) printf '%s\n%s\n' "sqlite://$work/tessera.db" "sqlite3://$work/juicefs.db" ;;
        redis) printf '%s\n%s\n' "$TESSERA_TEST_REDIS_URL/1" "$TESSERA_TEST_REDIS_URL/2" ;;
        postgres) sql postgres bench_t; sql postgres bench_j
            pg_base=${TESSERA_TEST_POSTGRES_URL%/*}
            # JuiceFS 0.14 hands what follows postgres:// to its driver, which
            # reads a URL without the scheme as key=value settings.
            printf '%s\n%s\n' "$pg_base/bench_t" \
                "postgres://host=127.0.0.1 port=${pg_base##*:} user=tessera password=tessera-pass dbname=bench_j sslmode=disable" ;;
        mysql) sql mysql bench_t; sql mysql bench_j
            my_hostport=${TESSERA_TEST_MYSQL_URL#*@}
            my_hostport=${my_hostport%/*}
            printf '%s\n%s\n' "mysql://tessera:tessera-pass@$my_hostport/bench_t" \
                "mysql://tessera:tessera-pass@($my_hostport)/bench_j" ;;
        etcd) printf '%s\n%s\n' "$TESSERA_TEST_ETCD_URL-bench" - ;;
    esac
}

results=$work/results.jsonl
for engine in ${engines//,/ }; do
    case $engine in
        redis) start_redis ;; postgres) start_postgres ;; mysql) start_mysql ;; etcd) start_etcd ;;
    esac
    { read -r t_url; read -r j_url; } <<<"$(urls "$engine")"
    mkdir -p "$work/$engine"/{mnt_t,mnt_j,obj_t,obj_j}
    "$tessera" format "$t_url" bench --storage "file://$work/$engine/obj_t" >/dev/null
    "$tessera" mount "$t_url" "$work/$engine/mnt_t" -d --log "$work/$engine/tessera.log" \
        --metrics none --cache-dir "$work/$engine/cache_t"
    mounts+=("$work/$engine/mnt_t")
    clients=(tessera)
    if [ "$j_url" != - ]; then
        if "$juicefs" format --storage file --bucket "$work/$engine/obj_j/" "$j_url" bench >"$work/$engine/jfs-format.log" 2>&1 &&
           "$juicefs" mount -d --no-usage-report --cache-dir "$work/$engine/cache_j" \
               "$j_url" "$work/$engine/mnt_j" >"$work/$engine/jfs-mount.log" 2>&1; then
            mounts+=("$work/$engine/mnt_j")
            clients+=(juicefs)
        else
            echo "JuiceFS 0.14.2 could not use $engine: $(tail -1 "$work/$engine/jfs-format.log" "$work/$engine/jfs-mount.log")" >&2
        fi
    fi
    for threads in 1 4; do
        for c in "${clients[@]}"; do
            mnt=$work/$engine/mnt_${c:0:1}
            printf '== %s %s, %s thread(s)\n' "$engine" "$c" "$threads" >&2
            python3 "$root/bench/mdtest.py" "$mnt" --threads "$threads" --files "$files" --drop-caches |
                python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(engine=sys.argv[1], client=sys.argv[2]); print(json.dumps(r))' \
                    "$engine" "$c" >>"$results"
        done
    done
    for c in "${clients[@]}"; do fusermount3 -u "$work/$engine/mnt_${c:0:1}"; done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ops = ["create", "stat", "readdir", "rename", "unlink"]
print(f"{'engine':9} {'thr':>3} {'op':8} {'tessera':>10} {'juicefs':>10} {'ratio':>6}")
for engine in dict.fromkeys(r["engine"] for r in rows):
    for thr in (1, 4):
        t = next((r for r in rows if r["engine"] == engine and r["client"] == "tessera" and r["threads"] == thr), None)
        j = next((r for r in rows if r["engine"] == engine and r["client"] == "juicefs" and r["threads"] == thr), None)
        for op in ops:
            tv = t[op] if t else None
            jv = j[op] if j else None
            ratio = f"{tv / jv:6.2f}" if tv and jv else "     -"
            print(f"{engine:9} {thr:3} {op:8} {tv or '-':>10} {jv or '-':>10} {ratio}")
PY
