#!/usr/bin/env bash
# The one test command (DESIGN §5). It
#   1. finds PostgreSQL: $DATABASE_URL if set, else 127.0.0.1:5432 if it answers, else a
#      throwaway cluster it starts (installing PostgreSQL with apt-get if it can);
#   2. runs cargo fmt --check, cargo clippy -D warnings, buf lint, and cargo test.
# Every store test runs on SQLite and on PostgreSQL; without PostgreSQL this script
# fails loudly instead of skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS="$ROOT/.tools"
BUF_VERSION=1.75.0

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

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
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            step "installing PostgreSQL (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
                || die "could not install PostgreSQL with apt-get"
            bin=$(pg_bin) || die "PostgreSQL installed but initdb not found"
        else
            die "no PostgreSQL: set DATABASE_URL, run one on 127.0.0.1:5432, or install PostgreSQL"
        fi
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

# Drop databases left by earlier test runs that stopped half-way.
if command -v psql >/dev/null; then
    psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'chatroom_t_%'" 2>/dev/null |
        while read -r db; do
            psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        done
fi

# --- 2. Checks ----------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "buf lint"
BUF=$(command -v buf || true)
if [ -z "$BUF" ]; then
    BUF="$TOOLS/node_modules/.bin/buf"
    if [ ! -x "$BUF" ]; then
        if ! command -v npm >/dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null \
                    || die "could not install npm (needed for buf)"
            else
                die "buf lint needs buf or npm (npm install @bufbuild/buf)"
            fi
        fi
        npm install --silent --no-save --no-audit --no-fund --prefix "$TOOLS" "@bufbuild/buf@$BUF_VERSION" \
            || die "could not install @bufbuild/buf"
    fi
fi
"$BUF" lint

step "cargo test"
cargo test --locked --all-targets
