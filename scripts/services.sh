# Start private database servers for the tests, on loopback ports with data
# in temporary directories. Source this file; each start_* function installs
# its Debian package when missing (failing loudly if it cannot), starts one
# server, exports its URL and records its PID in $service_pids for
# stop_services. Nothing here touches servers it did not start.
#
#   start_redis     -> TESSERA_TEST_REDIS_URL    (redis://127.0.0.1:PORT), and
#                      TESSERA_TEST_REDIS_SENTINEL_URL (a Sentinel watching it) and
#                      TESSERA_TEST_REDISS_URL (a second server speaking TLS only)
#   start_postgres  -> TESSERA_TEST_POSTGRES_URL (postgres://tessera:…@127.0.0.1:PORT/tessera)
#   start_mysql     -> TESSERA_TEST_MYSQL_URL    (mysql://tessera:…@127.0.0.1:PORT/tessera, MariaDB)
#   start_etcd      -> TESSERA_TEST_ETCD_URL     (etcd://127.0.0.1:PORT/tessera)

service_pids=()
service_dirs=()
service_stops=()

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ensure_packages() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

wait_port() { # port seconds
    for _ in $(seq $(($2 * 10))); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

start_redis() {
    ensure_packages redis-server openssl
    local port dir
    port=$(free_port)
    dir=$(mktemp -d /tmp/tessera-redis.XXXXXX)
    service_dirs+=("$dir")
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly no \
        --protected-mode yes --daemonize no >"$dir/log" 2>&1 &
    service_pids+=($!)
    export TESSERA_TEST_REDIS_PID=$!
    wait_port "$port" 10
    export TESSERA_TEST_REDIS_URL="redis://127.0.0.1:$port"

    # A Sentinel that knows the server above as master "tessera".
    local sport
    sport=$(free_port)
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor tessera 127.0.0.1 %s 1\n' \
        "$sport" "$dir" "$port" >"$dir/sentinel.conf"
    redis-server "$dir/sentinel.conf" --sentinel >"$dir/sentinel.log" 2>&1 &
    service_pids+=($!)
    wait_port "$sport" 10
    export TESSERA_TEST_REDIS_SENTINEL_URL="redis+sentinel://tessera@127.0.0.1:$sport/15"

    # A TLS-only server with a throwaway CA and certificate.
    local tport
    tport=$(free_port)
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tessera-test-ca \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout "$dir/tls.key" -out "$dir/tls.csr" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/tls.ext"
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/tls.ext" -out "$dir/tls.crt" >/dev/null 2>&1
    redis-server --bind 127.0.0.1 --port 0 --tls-port "$tport" --dir "$dir" --save '' \
        --dbfilename tls.rdb --tls-cert-file "$dir/tls.crt" --tls-key-file "$dir/tls.key" \
        --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients no --daemonize no >"$dir/tls.log" 2>&1 &
    service_pids+=($!)
    wait_port "$tport" 10
    # Signed by a throwaway CA the client is told to trust.
    export TESSERA_TEST_REDISS_URL="rediss://127.0.0.1:$tport/0?tls-cacert=$dir/ca.crt"
}

start_postgres() {
    ensure_packages postgresql
    local port dir bin
    port=$(free_port)
    dir=$(mktemp -d /tmp/tessera-pg.XXXXXX)
    service_dirs+=("$dir")
    chown postgres "$dir"
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1
    runuser -u postgres -- "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" \
        -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 >"$dir/log" 2>&1 &
    service_pids+=($!)
    service_stops+=("runuser -u postgres -- $bin/pg_ctl -D $dir/data stop -m immediate")
    wait_port "$port" 30
    for _ in $(seq 50); do
        runuser -u postgres -- psql -h 127.0.0.1 -p "$port" -U postgres -Atc "select 1" >/dev/null 2>&1 && break
        sleep 0.2
    done
    runuser -u postgres -- psql -h 127.0.0.1 -p "$port" -U postgres -q \
        -c "CREATE USER tessera PASSWORD 'tessera-pass' CREATEDB" -c "CREATE DATABASE tessera OWNER tessera" >/dev/null
    export TESSERA_TEST_POSTGRES_URL="postgres://tessera:tessera-pass@127.0.0.1:$port/tessera"
}

start_mysql() {
    ensure_packages mariadb-server
    local port dir
    port=$(free_port)
    dir=$(mktemp -d /tmp/tessera-mysql.XXXXXX)
    service_dirs+=("$dir")
    mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
        --auth-root-authentication-method=socket >"$dir/install.log" 2>&1
    mariadbd --no-defaults --datadir="$dir/data" --user=root --port="$port" \
        --bind-address=127.0.0.1 --socket="$dir/sock" --pid-file="$dir/pid" \
        --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=128M \
        --innodb-flush-log-at-trx-commit=2 --max-connections=300 >"$dir/log" 2>&1 &
    service_pids+=($!)
    wait_port "$port" 60
    mariadb --no-defaults -S "$dir/sock" -u root -e \
        "CREATE USER 'tessera'@'127.0.0.1' IDENTIFIED BY 'tessera-pass';
         GRANT ALL ON *.* TO 'tessera'@'127.0.0.1'; CREATE DATABASE tessera;"
    export TESSERA_TEST_MYSQL_URL="mysql://tessera:tessera-pass@127.0.0.1:$port/tessera"
}

start_etcd() {
    ensure_packages etcd-server
    local port peer dir
    port=$(free_port)
    peer=$(free_port)
    dir=$(mktemp -d /tmp/tessera-etcd.XXXXXX)
    service_dirs+=("$dir")
    # --max-txn-ops: a transaction compares every key it read (see
    # crates/meta/src/engines/etcd.rs); etcd's default of 128 is small.
    etcd --name tessera-test --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "tessera-test=http://127.0.0.1:$peer" --max-txn-ops 10240 \
        --quota-backend-bytes 4294967296 >"$dir/log" 2>&1 &
    service_pids+=($!)
    wait_port "$port" 30
    export TESSERA_TEST_ETCD_URL="etcd://127.0.0.1:$port/tessera"
}

stop_services() {
    for c in "${service_stops[@]}"; do $c >/dev/null 2>&1 || true; done
    for p in "${service_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${service_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${service_dirs[@]}"; do rm -rf "$d"; done
    service_pids=()
    service_dirs=()
    service_stops=()
}
