#!/usr/bin/env bash
# Runs every chatroom-bench scenario against a fresh release server, the way
# BENCHMARKS.md reports them. Usage: scripts/bench.sh sqlite|postgres [OUT_FILE]
# PostgreSQL: uses $BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432) and
# recreates the database chatroom_bench there. BENCH_AUTH=jwt runs the server with
# --auth jwt and the bench with a token per user (verified per call and per stream);
# BENCH_METRICS=1 runs the server with --metrics-listen; BENCH_LOG=info with that log filter
# (default warn).
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: scripts/bench.sh sqlite|postgres [OUT_FILE]}
out=${2:-/dev/stdout}
cargo build --release --quiet --bin chatroom --bin chatroom-bench
B=target/release/chatroom-bench
T=127.0.0.1:50090

case "$store" in
    sqlite)
        dir=$(mktemp -d)
        url="sqlite://$dir/bench.db" ;;
    postgres)
        pg=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
        psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS chatroom_bench WITH (FORCE)" 2>/dev/null
        psql "$pg/postgres" -qc "CREATE DATABASE chatroom_bench"
        url="$pg/chatroom_bench" ;;
    *) echo "unknown store $store" >&2; exit 2 ;;
esac

auth=()
if [ "${BENCH_AUTH:-header}" = jwt ]; then
    export CHATROOM_BENCH_JWT_SECRET=bench-secret-not-for-production
    auth=(--auth jwt --jwt-secret "$CHATROOM_BENCH_JWT_SECRET")
fi
# BENCH_METRICS=1 serves Prometheus metrics meanwhile (to show recording them is cheap).
if [ "${BENCH_METRICS:-0}" = 1 ]; then
    auth+=(--metrics-listen 127.0.0.1:50091)
fi
pid=
start() {
    [ -n "$pid" ] && { kill -TERM "$pid"; wait "$pid" || true; }
    target/release/chatroom --listen "$T" --database-url "$url" --log "${BENCH_LOG:-warn}" "${auth[@]}" &
    pid=$!
    sleep 2
}
settle() { # each scenario starts from a written-back database, not the last one's backlog
    if [ "$store" = postgres ]; then psql "$url" -qc CHECKPOINT; fi
}
run() { # scenario arguments...
    echo "## chatroom-bench $*" >&2
    settle
    "$B" --target "$T" --json "$@" --server-pid "$pid" | tail -1 >>"$out"
}
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null' EXIT

start
run fanout --subscribers 1000 --connections 10 --duration 10 --lead 128
run fanout --subscribers 1000 --connections 10 --duration 10 --rate 50
# The realistic rate: 40 messages/s to 1,000 streams (40k deliveries/s); what it
# costs per delivery is the figure that matters here, not the peak.
run fanout --subscribers 1000 --connections 10 --duration 10 --rate 40
run fanout --subscribers 10000 --connections 100 --duration 10 --lead 13
run ingest --rooms 100 --duration 10
run ingest --rooms 100 --duration 10 --rate 5000
run ingest --rooms 100 --duration 10 --unary
echo "## chatroom-bench joins --users 5000" >&2
settle
"$B" --target "$T" --json joins --users 5000 | tail -1 >>"$out"
start  # idle memory is measured on a fresh process
run idle --subscribers 10000 --connections 10
start  # many small rooms, each on a fresh process: memory per live room and stream
run rooms --rooms 10000 --streams-per-room 1 --connections 100 --rate 1
start
run rooms --rooms 1000 --streams-per-room 10 --connections 100 --rate 5
