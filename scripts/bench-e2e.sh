#!/usr/bin/env bash
# End-to-end benchmark: a local three-node cluster (three `gateway` processes on
# loopback, real QUIC, real redb files with fsync) driven by `bank bench` with 1, 16,
# 64 and 256 concurrent clients. Prints one `bank bench` table per row.
#
#   ./scripts/bench-e2e.sh                      # deposits only, 10 s per row
#   CLIENTS="16 64" SECS=20 ./scripts/bench-e2e.sh
#   MIX="deposit=40,transfer=40,balance=20" ./scripts/bench-e2e.sh
#   BASE_PORT=27000 ./scripts/bench-e2e.sh      # ports BASE_PORT .. BASE_PORT+22
#
# Everything runs on this machine: the three nodes and the clients share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-"1 16 64 256"}
SECS=${SECS:-10}
MIX=${MIX:-"deposit=100"}
BASE_PORT=${BASE_PORT:-27000}

cargo build --release -p gateway -p bank-app --bins
gateway=target/release/gateway
bank=target/release/bank

dir=$(mktemp -d "${TMPDIR:-/tmp}/bank-bench.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"$gateway" init-cluster --nodes 3 --dir "$dir/cluster" --base-port "$BASE_PORT" --cluster-id bench >/dev/null
for i in 1 2 3; do
    RUST_LOG=${RUST_LOG:-warn} "$gateway" run --config "$dir/cluster/node-$i/node.toml" \
        >"$dir/node-$i.log" 2>&1 &
    pids+=($!)
done

cluster="127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 11)),127.0.0.1:$((BASE_PORT + 21))"
# Wait (up to 30 s) until some node reports itself leader.
for _ in $(seq 1 300); do
    for i in 0 1 2; do
        if "$gateway" status --json --timeout-ms 500 --admin "127.0.0.1:$((BASE_PORT + 10 * i + 2))" 2>/dev/null |
            grep -q '"role": *"leader"'; then
            break 2
        fi
    done
    sleep 0.1
done

for n in $CLIENTS; do
    echo "== $n clients, $SECS s, mix $MIX"
    "$bank" --cluster "$cluster" --ca "$dir/cluster/ca.pem" bench \
        --clients "$n" --duration "$SECS" --mix "$MIX" --accounts 1000
done
