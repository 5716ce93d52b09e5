#!/usr/bin/env bash
# The cross-node path, measured side by side: two server nodes on ONE local redis-server
# (started here on a free port, persistence off), the publisher (HTTP POST /api/v1/emit,
# loadgen's `--publisher http`) on node A, N member sockets split evenly over node A and
# node B (`loadgen --url2`: even sockets on A, odd on B), all in one conversation (fanout);
# and the same workload on ONE node as the latency baseline. Servers, one after the other:
#
#   switchboard-single       one Switchboard node, memory plugins (benches/switchboard.toml)
#   switchboard              two nodes, presence.plugin = broker.plugin = "redis", history
#                            on (the default; benches/switchboard.toml + SWITCHBOARD_* env)
#   switchboard-history-off  the same with history.size = 0 (benches/history-off.toml)
#   node-single              one Node peer (benches/peer-node/server.js), no adapter
#   node                     two Node peers with @socket.io/redis-adapter (Redis pub/sub)
#   node-streams             two Node peers with @socket.io/redis-streams-adapter (the
#                            counterpart of history on: every event goes through a stream)
#
# Server CPU per delivery is summed over BOTH nodes AND the redis-server process
# (/proc/<pid>/stat and task/*/schedstat, read by the loadgen as in benches/run.sh:
# --pid, --pid2, --redis-pid); each part is shown too. Latency runs from the publish's send
# to the member's receipt, whichever node the member is on; with 1000 members in the room
# its p50 is mostly the fan-out's own queue (the median member waits for ~500 writes), so
# the run also reports "first p50": over the publishes, the p50 of each one's earliest
# delivery, the path without that queue (for Switchboard it crosses Redis on both nodes;
# the Node peers serve node A's members directly and only node B's through Redis, so
# their first delivery does not cross Redis). The summary prints the ratios
# Switchboard / Node and each server's "extra p50 from crossing Redis" (two-node p50 minus
# its single-node p50) next to the team's targets (at most 0.8x Node's CPU per delivery, at
# most 1 ms more p50 than one node): reported, never enforced.
#
#   benches/cluster.sh                                   # 1000 sockets, 20k deliveries/s, 10 s
#   benches/cluster.sh --sockets 1000 --rate 30000 --duration 20
#   benches/cluster.sh --servers switchboard,node        # a subset (singles still run)
#   benches/cluster.sh --smoke                           # CI: 20 sockets, 1 s, fails on any
#                                                        # loss, duplicate or error
#
# Options before the loadgen's own (which go to `loadgen fanout`, see its --help):
#   --servers LIST  comma-separated, from switchboard,switchboard-history-off,node,
#                   node-streams (default: all; the node ones are skipped when Node.js is
#                   not installed); the single-node baselines of the servers chosen run too
#   --no-single     skip the single-node baselines
#   --profile P     release (default) or debug binaries
#   --no-build      use the binaries as they are
#   --smoke         tiny and quick (20 sockets, 1 s, 400 deliveries/s) and fail on any
#                   error, loss or duplicate; no timing is checked
#   --out DIR       where the JSON results go (default target/bench-results/<time>-cluster)
#
# Pinning as in benches/run.sh: node A, node B and redis-server all share core 0 (so a
# two-node run has three processes on the one core where a single-node run has one), the
# load generator is on core 1. Environment: BENCH_SERVER_CPU (0), BENCH_LOAD_CPU (1),
# BENCH_PORT (first port tried for the servers, 3121), BENCH_REDIS_PORT (first port tried
# for Redis, 6390), BENCH_NICE (e.g. -10, as root). Needs redis-server and redis-cli, curl
# and jq. Traffic stays on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }

SERVERS="switchboard,switchboard-history-off,node,node-streams"
SINGLE=1
PROFILE=release
BUILD=1
SMOKE=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --servers) SERVERS=$2; shift 2 ;;
    --no-single) SINGLE=0; shift ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done

for tool in redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "cluster.sh: $tool is needed" >&2; exit 2; }
done

SECRET=switchboard-bench-secret-0123456789abcdef
API_KEY=bench-api-key
export BENCH_SECRET=$SECRET BENCH_API_KEY=$API_KEY
SERVER_CPU=${BENCH_SERVER_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
BIN=$ROOT/target/$PROFILE

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ $BUILD == 1 ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  cargo build "${flag[@]}" -q -p switchboard --bin switchboard
  cargo build "${flag[@]}" -q -p switchboard-bench-loadgen
fi

have_node=0
if command -v node >/dev/null 2>&1; then
  have_node=1
  if [[ ! -d benches/peer-node/node_modules/@socket.io/redis-streams-adapter ]]; then
    (cd benches/peer-node && npm ci --no-audit --no-fund --silent)
  fi
fi

# The runs, in order: NAME KIND NODES
runs=()
IFS=, read -r -a chosen <<< "$SERVERS"
want() { local s; for s in "${chosen[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }
for s in "${chosen[@]}"; do
  case "$s" in
    switchboard|switchboard-history-off|node|node-streams) ;;
    *) echo "cluster.sh: unknown server $s" >&2; usage ;;
  esac
done
if want switchboard || want switchboard-history-off; then
  [[ $SINGLE == 1 ]] && runs+=("switchboard-single")
  want switchboard && runs+=("switchboard")
  want switchboard-history-off && runs+=("switchboard-history-off")
fi
if want node || want node-streams; then
  if [[ $have_node == 0 ]]; then
    echo "cluster.sh: node not installed; skipping the Node peer" >&2
  else
    [[ $SINGLE == 1 ]] && runs+=("node-single")
    want node && runs+=("node")
    want node-streams && runs+=("node-streams")
  fi
fi

NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")
can_pin() { command -v taskset >/dev/null 2>&1 && [[ $(nproc --all) -gt $1 ]]; }
pin() { # pin CPU cmd...: run pinned when taskset exists and the core does
  local cpu=$1; shift
  if can_pin "$cpu"; then "${NICE[@]}" taskset -c "$cpu" "$@"; else "${NICE[@]}" "$@"; fi
}
start_pinned() { # the same in a background subshell, which becomes the process (so $! is its pid)
  local cpu=$1; shift
  if can_pin "$cpu"; then exec "${NICE[@]}" taskset -c "$cpu" "$@"; else exec "${NICE[@]}" "$@"; fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # first free port from $1 on, not in the exclusions that follow
  local p=$1 tries=0; shift
  while (( tries < 200 )); do
    if port_free "$p" && [[ " $* " != *" $p "* ]]; then echo "$p"; return 0; fi
    p=$((p + 1)); tries=$((tries + 1))
  done
  echo "cluster.sh: no free port from $1" >&2; return 1
}

PIDS=()
stop_pid() { # pid: TERM, up to 5 s, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_servers() { # every server started (not Redis)
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}
REDIS_PID=""
cleanup() {
  stop_servers
  [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
  REDIS_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() { # port pid: the port answers and /readyz is 200 (Redis connected)
  local port=$1 pid=$2
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

if [[ -z $OUT ]]; then
  OUT=$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)-cluster
  [[ $SMOKE == 1 ]] && OUT=$OUT-smoke
fi
mkdir -p "$OUT"

EXTRA=()
if [[ $SMOKE == 1 ]]; then
  EXTRA=(--sockets 20 --duration 1 --rate 400 --drain 3 --check)
elif [[ $# -eq 0 ]]; then
  EXTRA=(--sockets 1000 --rate 20000 --duration 10)
fi

# Redis: one for every run, flushed between them.
RPORT=$(free_port "${BENCH_REDIS_PORT:-6390}")
start_pinned "$SERVER_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$OUT" --loglevel warning > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!
REDIS_URL="redis://127.0.0.1:$RPORT"
for _ in $(seq 100); do
  [[ $(redis-cli -p "$RPORT" ping 2>/dev/null) == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ $(redis-cli -p "$RPORT" ping 2>/dev/null) != PONG ]]; then
  echo "cluster.sh: redis-server did not start; its log:" >&2
  cat "$OUT/redis.log" >&2 || true
  exit 1
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "args: ${EXTRA[*]} $*"
  echo "runs: ${runs[*]}"
  echo "nproc: $(nproc --all); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kernel: $(uname -r); redis: $(redis-server --version | cut -d' ' -f3); load before: $(cut -d' ' -f1-3 /proc/loadavg); nice: ${BENCH_NICE:-0}"
  echo "pinning: servers and redis-server on core $SERVER_CPU (two nodes + redis share it), loadgen on core $LOAD_CPU"
} > "$OUT/context.txt"
echo "cluster.sh: pinning: node A, node B and redis-server (pid $REDIS_PID, port $RPORT) share core $SERVER_CPU; the load generator is on core $LOAD_CPU" >&2

start_server() { # name kind port log: starts one node, appends its pid to PIDS
  local name=$1 kind=$2 port=$3 log=$4
  local sb_env=(SWITCHBOARD_PRESENCE__PLUGIN=redis SWITCHBOARD_BROKER__PLUGIN=redis
    SWITCHBOARD_REDIS__URL="$REDIS_URL")
  case "$kind" in
    switchboard-single)
      start_pinned "$SERVER_CPU" "$BIN/switchboard" serve --config benches/switchboard.toml \
        --listen "127.0.0.1:$port" 2> "$log" &
      ;;
    switchboard)
      start_pinned "$SERVER_CPU" env "${sb_env[@]}" "$BIN/switchboard" serve \
        --config benches/switchboard.toml --listen "127.0.0.1:$port" 2> "$log" &
      ;;
    switchboard-history-off)
      start_pinned "$SERVER_CPU" env "${sb_env[@]}" "$BIN/switchboard" serve \
        --config benches/history-off.toml --listen "127.0.0.1:$port" 2> "$log" &
      ;;
    node-single)
      start_pinned "$SERVER_CPU" node benches/peer-node/server.js --port "$port" 2> "$log" &
      ;;
    node)
      start_pinned "$SERVER_CPU" node benches/peer-node/server.js --port "$port" \
        --adapter redis --redis "$REDIS_URL" 2> "$log" &
      ;;
    node-streams)
      start_pinned "$SERVER_CPU" node benches/peer-node/server.js --port "$port" \
        --adapter redis-streams --redis "$REDIS_URL" 2> "$log" &
      ;;
  esac
  PIDS+=($!)
  if ! wait_ready "$port" "$!"; then
    echo "cluster.sh: $name did not become ready on port $port; its log:" >&2
    cat "$log" >&2 || true
    return 1
  fi
}

status=0
files=()
for name in "${runs[@]}"; do
  redis-cli -p "$RPORT" flushall > /dev/null
  pa=$(free_port "${BENCH_PORT:-3121}" "$RPORT")
  if ! start_server "$name" "$name" "$pa" "$OUT/$name-a.log"; then
    stop_servers; status=1; continue
  fi
  pid_a=${PIDS[0]}
  lg=(--url "http://127.0.0.1:$pa" --pid "$pid_a")
  where="node A pid $pid_a port $pa"
  if [[ $name != *-single ]]; then
    pb=$(free_port "$((pa + 1))" "$RPORT" "$pa")
    if ! start_server "$name" "$name" "$pb" "$OUT/$name-b.log"; then
      stop_servers; status=1; continue
    fi
    pid_b=${PIDS[1]}
    lg+=(--url2 "http://127.0.0.1:$pb" --pid2 "$pid_b" --redis-pid "$REDIS_PID")
    where="$where, node B pid $pid_b port $pb, redis pid $REDIS_PID"
  fi
  echo "== fanout against $name ($where; load $(cut -d' ' -f1 /proc/loadavg))" >&2
  if ! pin "$LOAD_CPU" "$BIN/loadgen" fanout --publisher http "${lg[@]}" --label "$name" \
      --out "$OUT/$name.json" "${EXTRA[@]}" "$@" > /dev/null; then
    echo "cluster.sh: fanout against $name failed" >&2
    status=1
  fi
  stop_servers
  [[ -f $OUT/$name.json ]] && files+=("$OUT/$name.json")
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/context.txt"

# The side-by-side table, two-node runs first (ratios are the first's to each).
ordered=()
for name in switchboard node node-streams switchboard-history-off switchboard-single node-single; do
  [[ -f $OUT/$name.json ]] && ordered+=("$OUT/$name.json")
done
if [[ ${#ordered[@]} -gt 0 ]]; then
  "$BIN/loadgen" report "${ordered[@]}" | tee "$OUT/report.md"
fi

# The summary: per server, the two-node figures, its single-node p50 and the extra p50.
summary() {
  jq -rn '
    def r(f): if f == null then "-" else (f * 1000 | round / 1000 | tostring) end;
    def diff(a; b): if a == null or b == null then "-" else r(a - b) end;
    def verdict(ok; target): if $smoke == "1" then " (smoke run: not a measurement)"
      else " (target \(target): \(if ok then "met" else "NOT met" end))" end;
    def single(n): if (n | startswith("node")) then "node-single" else "switchboard-single" end;
    ($all | map({key: .server, value: .}) | from_entries) as $by
    | ["switchboard", "switchboard-history-off", "node", "node-streams"]
    | map(select($by[.] != null)) as $pairs
    | "",
      "Summary: two nodes on one Redis (CPU summed over node A + node B + redis-server, all on one core)",
      "",
      "| server | CPU/delivery, us | node A | node B | redis | p50, ms | p99, ms | first p50, ms | single-node p50 / first p50, ms | extra p50 / first p50, ms | delivered | lost | duplicates | errors |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
      ($pairs[] as $n | $by[$n] as $x | $by[single($n)] as $s
        | "| \($n) | \(r($x.server_cpu_us_per_delivery)) | \(r($x.server_cpu_us_per_delivery_by_process.node)) | \(r($x.server_cpu_us_per_delivery_by_process.node2)) | \(r($x.server_cpu_us_per_delivery_by_process.redis)) | \(r($x.latency.p50_ms)) | \(r($x.latency.p99_ms)) | \(r($x.first_delivery_latency.p50_ms)) | \(r($s.latency.p50_ms)) / \(r($s.first_delivery_latency.p50_ms)) | \(diff($x.latency.p50_ms; $s.latency.p50_ms)) / \(diff($x.first_delivery_latency.p50_ms; $s.first_delivery_latency.p50_ms)) | \($x.delivered) | \($x.lost) | \($x.duplicates) | \($x.errors) |"),
      "",
      (def ratio(a; b): if $by[a] == null or $by[b] == null or ($by[b].server_cpu_us_per_delivery // 0) == 0 then empty
          else ($by[a].server_cpu_us_per_delivery / $by[b].server_cpu_us_per_delivery) as $q
          | "CPU per delivery \(a) / \(b): \($q * 100 | round / 100)" + (if a == "switchboard" and b == "node" then verdict($q <= 0.8; "<= 0.8") else "" end) end;
        ratio("switchboard"; "node"), ratio("switchboard"; "node-streams"), ratio("switchboard-history-off"; "node")),
      ($pairs[] as $n | $by[$n] as $x | $by[single($n)] as $s
        | select($s != null and $x.latency.p50_ms != null and $s.latency.p50_ms != null)
        | ($x.latency.p50_ms - $s.latency.p50_ms) as $d
        | (($x.first_delivery_latency.p50_ms // 0) - ($s.first_delivery_latency.p50_ms // 0)) as $f
        | "extra p50 from crossing Redis, \($n) over \(single($n)): all deliveries \(r($d)) ms"
          + (if ($n | startswith("switchboard")) then verdict($d <= 1; "<= 1 ms") else "" end)
          + ", first delivery of a publish \(r($f)) ms"
          + (if ($n | startswith("switchboard")) then verdict($f <= 1; "<= 1 ms") else "" end))
  ' --arg smoke "$SMOKE" --argjson all "$(jq -s . "${files[@]}")"
}
if [[ ${#files[@]} -gt 0 ]]; then
  summary | tee -a "$OUT/report.md"
  echo "pinning: two nodes and redis-server shared core $SERVER_CPU; loadgen on core $LOAD_CPU; load average before/after: $(sed -n 's/^.*load before: \([^;]*\);.*$/\1/p' "$OUT/context.txt") / $(sed -n 's/^load after: //p' "$OUT/context.txt")" | tee -a "$OUT/report.md"
fi
echo "results: $OUT" >&2

if [[ $SMOKE == 1 ]]; then
  if [[ $status != 0 ]]; then echo "cluster smoke: FAILED" >&2; exit 1; fi
  echo "cluster smoke: every run delivered everything once, without errors"
fi
exit $status
