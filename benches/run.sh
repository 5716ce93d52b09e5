#!/usr/bin/env bash
# Runs one load scenario against Switchboard, the bare socketioxide server and the Node
# peer (or, with --protocol native, Switchboard's native WebSocket transport and the bare
# native server), one after the other, each server pinned to one core and the load
# generator to the other, then prints the results side by side with Switchboard's ratio to
# each.
#
#   benches/run.sh fanout --sockets 1000 --rate 60000 --duration 10
#   benches/run.sh fanout --publisher typing --sockets 1000 --rate 60000
#   benches/run.sh rooms --sockets 1000 --room-size 10 --rate 60000
#   benches/run.sh connect --sockets 5000 --concurrency 100
#   benches/run.sh idle --sockets 19000 --hold 10
#   benches/run.sh --protocol native fanout --sockets 1000 --rate 60000
#
# Options before the scenario's own (which go to `loadgen`, see `loadgen fanout --help`):
#   --servers LIST   comma-separated, from switchboard,bare,node,bare-native (default:
#                    switchboard,bare,node; node is skipped when Node.js is not
#                    installed); NAME=PATH adds another Switchboard binary under that
#                    name, for before/after runs; NAME@CONFIG runs this Switchboard with
#                    another config file under that name, for feature on/off runs
#                    (benches/history-off.toml, benches/recovery.toml, with
#                    SWITCHBOARD_BROKER__PLUGIN=redis for the Redis broker)
#   --protocol P     socketio (default) or native: the load generator speaks the native
#                    WebSocket protocol (CONTRACT §5, /ws) and the default servers are
#                    switchboard,bare-native (bare and node do not speak it, and are refused)
#   --profile P      release (default) or debug binaries
#   --no-build       use the binaries as they are
#   --smoke          tiny and quick: 20 sockets, 1 s, and fail on any error or loss
#   --out DIR        where the JSON results go (default
#                    target/bench-results/<time>-<scenario>, with -native for that protocol)
#
# Environment: BENCH_SERVER_CPU (default 0) and BENCH_LOAD_CPU (default 1) choose the cores;
# BENCH_PORT (default 3101) is the first port; BENCH_NICE (e.g. -10, as root) runs the server
# and the load generator at a higher priority than other work on a shared machine.
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }

SERVERS=""
PROTOCOL=socketio
PROFILE=release
BUILD=1
SMOKE=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --servers) SERVERS=$2; shift 2 ;;
    --protocol) PROTOCOL=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
SCENARIO=$1; shift
case "$SCENARIO" in fanout|rooms|connect|idle) ;; *) echo "run.sh: unknown scenario $SCENARIO" >&2; usage ;; esac
case "$PROTOCOL" in
  socketio) [[ -n $SERVERS ]] || SERVERS="switchboard,bare,node" ;;
  native) [[ -n $SERVERS ]] || SERVERS="switchboard,bare-native" ;;
  *) echo "run.sh: unknown protocol $PROTOCOL (socketio or native)" >&2; exit 2 ;;
esac
IFS=, read -r -a list <<< "$SERVERS"
for spec in "${list[@]}"; do
  if [[ $PROTOCOL == native && ( $spec == bare || $spec == node ) ]]; then
    echo "run.sh: $spec does not speak the native protocol; with --protocol native use switchboard, bare-native or NAME=PATH" >&2
    exit 2
  fi
  if [[ $PROTOCOL == socketio && $spec == bare-native ]]; then
    echo "run.sh: bare-native speaks only the native protocol; add --protocol native" >&2
    exit 2
  fi
done

SECRET=switchboard-bench-secret-0123456789abcdef
API_KEY=bench-api-key
export BENCH_SECRET=$SECRET BENCH_API_KEY=$API_KEY
SERVER_CPU=${BENCH_SERVER_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
PORT=${BENCH_PORT:-3101}
BIN=$ROOT/target/$PROFILE

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ $BUILD == 1 ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  cargo build "${flag[@]}" -q -p switchboard --bins \
    -p switchboard-bench-bare-socketioxide -p switchboard-bench-bare-native \
    -p switchboard-bench-loadgen
fi

have_node=0
if command -v node >/dev/null 2>&1; then
  have_node=1
  if [[ ! -d benches/peer-node/node_modules/socket.io ]]; then
    (cd benches/peer-node && npm ci --no-audit --no-fund --silent)
  fi
fi

NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")
can_pin() { command -v taskset >/dev/null 2>&1 && [[ $(nproc --all) -gt $1 ]]; }
pin() { # pin CPU cmd...: run pinned when taskset exists and the core does
  local cpu=$1; shift
  if can_pin "$cpu"; then "${NICE[@]}" taskset -c "$cpu" "$@"; else "${NICE[@]}" "$@"; fi
}
start_pinned() { # the same in a background subshell, which becomes the server (so $! is its pid)
  local cpu=$1; shift
  if can_pin "$cpu"; then exec "${NICE[@]}" taskset -c "$cpu" "$@"; else exec "${NICE[@]}" "$@"; fi
}

SERVER_PID=""
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT INT TERM

wait_ready() { # port
  for _ in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

if [[ -z $OUT ]]; then
  OUT=$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$SCENARIO
  [[ $PROTOCOL == native ]] && OUT=$OUT-native
fi
mkdir -p "$OUT"

EXTRA=()
if [[ $SMOKE == 1 ]]; then
  EXTRA=(--sockets 20 --duration 1 --rate 400 --drain 3 --hold 1 --check)
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "args: --protocol $PROTOCOL $SCENARIO ${EXTRA[*]} $*"
  echo "nproc: $(nproc --all); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kernel: $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg); nice: ${BENCH_NICE:-0}"
} > "$OUT/context.txt"

status=0
files=()
i=0
for spec in "${list[@]}"; do
  port=$((PORT + i)); i=$((i + 1))
  name=${spec%%=*}; name=${name%%@*}
  case "$spec" in
    *@*)
      start_pinned "$SERVER_CPU" "$BIN/switchboard" serve --config "${spec#*@}" \
        --listen "127.0.0.1:$port" 2> "$OUT/$name.log" &
      ;;
    *=*)
      start_pinned "$SERVER_CPU" "${spec#*=}" serve --config benches/switchboard.toml \
        --listen "127.0.0.1:$port" 2> "$OUT/$name.log" &
      ;;
    switchboard)
      start_pinned "$SERVER_CPU" "$BIN/switchboard" serve --config benches/switchboard.toml \
        --listen "127.0.0.1:$port" 2> "$OUT/$name.log" &
      ;;
    bare)
      start_pinned "$SERVER_CPU" "$BIN/bare-socketioxide" --listen "127.0.0.1:$port" 2> "$OUT/$name.log" &
      ;;
    bare-native)
      start_pinned "$SERVER_CPU" "$BIN/bare-native" --listen "127.0.0.1:$port" 2> "$OUT/$name.log" &
      ;;
    node)
      if [[ $have_node == 0 ]]; then echo "run.sh: node not installed; skipping the Node peer" >&2; continue; fi
      start_pinned "$SERVER_CPU" node benches/peer-node/server.js --port "$port" 2> "$OUT/$name.log" &
      ;;
    *) echo "run.sh: unknown server $name" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  if ! wait_ready "$port"; then
    echo "run.sh: $name did not start; its log:" >&2
    cat "$OUT/$name.log" >&2 || true
    stop_server
    status=1
    continue
  fi
  echo "== $SCENARIO against $name (pid $SERVER_PID, port $port; load $(cut -d' ' -f1 /proc/loadavg))" >&2
  if ! pin "$LOAD_CPU" "$BIN/loadgen" "$SCENARIO" --protocol "$PROTOCOL" --url "http://127.0.0.1:$port" \
      --pid "$SERVER_PID" --label "$name" --out "$OUT/$name.json" "${EXTRA[@]}" "$@" > /dev/null; then
    echo "run.sh: $SCENARIO against $name failed" >&2
    status=1
  fi
  stop_server
  [[ -f $OUT/$name.json ]] && files+=("$OUT/$name.json")
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/context.txt"
if [[ ${#files[@]} -gt 0 ]]; then
  "$BIN/loadgen" report "${files[@]}"
fi
echo "results: $OUT" >&2
exit $status
