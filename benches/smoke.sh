#!/usr/bin/env bash
# CI smoke run of the load benchmark: builds the servers and the load generator (debug, as
# the tests build them) and runs every scenario once at a tiny size against Switchboard and,
# when Node.js is installed, the Node peer; then again with the native WebSocket protocol
# against Switchboard and the bare native server. Fails if a scenario errors, loses or
# duplicates a delivery. No timing is checked: the numbers of a smoke run mean nothing.
# When redis-server is installed, also the cross-node smoke (benches/cluster.sh --smoke):
# two Switchboard nodes on one Redis, and two Node peers with each Redis adapter.
set -euo pipefail
cd "$(dirname "$0")/.."

servers=switchboard
if command -v node >/dev/null 2>&1; then servers=switchboard,node; fi

cargo build -q -p switchboard --bins -p switchboard-bench-loadgen \
  -p switchboard-bench-bare-socketioxide -p switchboard-bench-bare-native

run() {
  echo "smoke: $*"
  benches/run.sh --profile debug --no-build --smoke --servers "$servers" "$@"
}

native() {
  echo "smoke: --protocol native $*"
  benches/run.sh --profile debug --no-build --smoke --protocol native \
    --servers switchboard,bare-native "$@"
}

failed=0
run fanout || failed=1
run fanout --publisher typing || failed=1
run rooms --room-size 5 || failed=1
run connect || failed=1
run idle || failed=1
native fanout || failed=1
native fanout --publisher typing || failed=1
native rooms --room-size 5 || failed=1
native connect || failed=1
native idle || failed=1
if command -v redis-server >/dev/null 2>&1; then
  echo "smoke: benches/cluster.sh --smoke"
  benches/cluster.sh --profile debug --no-build --smoke || failed=1
else
  echo "smoke: redis-server not installed; skipping benches/cluster.sh --smoke"
fi

if [[ $failed != 0 ]]; then
  echo "smoke: FAILED" >&2
  exit 1
fi
echo "smoke: every scenario ran without errors or losses"
