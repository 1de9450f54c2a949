#!/usr/bin/env bash
# Fan-out through one node and through a cluster of two, in one run on one box, the
# way BENCHMARKS.md reports them: full speed (--lead 128) and 40 messages/s to 1,000
# streams (40k deliveries/s). In the cluster, half the streams are on each node and
# the publisher sends through the first, so half the deliveries cross NATS.
# Usage: scripts/bench-cluster.sh [OUT_FILE]. Uses $BENCH_PG_URL (default
# postgres://postgres@127.0.0.1:5432), recreating the database chatroom_bench there,
# and a nats-server of its own on port 50093. Each JSON line gets the CPU use of the
# nats-server as "nats_cpu_percent"; the nodes' is in "server_cpu_percent_by_node",
# per delivery to each node's own streams in "server_cpu_us_per_delivery_by_node" and
# per message in "server_cpu_us_per_message_by_node" (the first node stores each
# message and relays it out, the second takes each in from the bus).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/dev/stdout}
cargo build --release --quiet --bin chatroom --bin chatroom-bench
B=target/release/chatroom-bench
A=127.0.0.1:50091
N2=127.0.0.1:50092
NATS_PORT=50093
pg=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
url="$pg/chatroom_bench"
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

fresh_db() {
    psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS chatroom_bench WITH (FORCE)" 2>/dev/null
    psql "$pg/postgres" -qc "CREATE DATABASE chatroom_bench"
}
node() { # listen-address [extra flags...]; its pid in $last
    local addr=$1; shift
    target/release/chatroom --listen "$addr" --database-url "$url" --log warn "$@" &
    last=$!
    pids+=("$last")
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # nats-pid|"" chatroom-bench fanout arguments...
    local nats=$1; shift
    echo "## chatroom-bench fanout $*" >&2
    psql "$url" -qc CHECKPOINT
    local before=0 start line
    [ -n "$nats" ] && before=$(ticks "$nats")
    start=$(date +%s.%N)
    line=$("$B" --target "$A" --json fanout "$@" | tail -1)
    if [ -n "$nats" ]; then
        local cpu
        cpu=$(awk -v a="$before" -v b="$(ticks "$nats")" -v t0="$start" -v t1="$(date +%s.%N)" \
            -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz / (t1 - t0) * 100 }')
        line="${line%\}},\"nats_cpu_percent\":$cpu}"
    fi
    echo "$line" >>"$out"
}

# One node, no cluster.
fresh_db
node "$A"; one=$last
sleep 2
run "" --subscribers 1000 --connections 10 --duration 10 --lead 128 --server-pid "$one"
run "" --subscribers 1000 --connections 10 --duration 10 --rate 40 --server-pid "$one"
kill -TERM "$one"; wait "$one" || true

# Two nodes over one database and one nats-server.
fresh_db
"$NATS" -a 127.0.0.1 -p "$NATS_PORT" >/dev/null 2>&1 &
nats=$!
pids+=("$nats")
node "$A" --nats-url "nats://127.0.0.1:$NATS_PORT"; a=$last
node "$N2" --nats-url "nats://127.0.0.1:$NATS_PORT"; b=$last
sleep 2
run "$nats" --targets "$A,$N2" --subscribers 1000 --connections 5 --duration 10 --lead 128 --server-pid "$a,$b"
run "$nats" --targets "$A,$N2" --subscribers 1000 --connections 5 --duration 10 --rate 40 --server-pid "$a,$b"
