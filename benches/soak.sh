#!/usr/bin/env bash
# Soak test, run by hand: three Switchboard nodes (release build, benches/switchboard.toml
# with presence.plugin = broker.plugin = "redis") on one local redis-server (started here on
# a free port, persistence off), 10,000 Socket.IO connections spread over them with steady
# churn, and steady HTTP publishing into their rooms, for an hour by default.
#
#   benches/soak.sh                                   # 1 hour, 10,000 sockets
#   benches/soak.sh --duration 120 --sockets 1000     # the CI-sized run, about 2 min 10 s
#   benches/soak.sh --duration 600 --churn 200 --publish-rate 100
#
# The load is `loadgen soak` (benches/loadgen/src/soak.rs, one thread on core 1): sockets
# are users s0… (sockets/5 users), each in one conversation c0… (sockets/10 rooms) at a
# time; sockets/100 times a second one of them switches rooms, leaves and rejoins later, or
# drops its connection (half with a WebSocket close, half by closing the TCP connection)
# and reconnects to the next node; 4 keep-alive HTTP connections (on nodes A, B, C, A)
# publish `message:received` at 50/s in all, round robin over the rooms. It counts, for
# every membership, each event published into the room after the member's join was acked
# that the member's node had delivered to anybody before the member sent its leave (for a
# dropped connection: that came before one the member did get; at the end: every accepted
# event): one the member did not get is LOST (also counted: duplicates, reordered, strays
# — an event of a room the socket is not in —, errors).
#
# Every --interval seconds the script prints one row per sample: each node's RSS
# (/proc/<pid>/status VmRSS), threads (Threads; tokio tasks are not visible from outside)
# and, from its /metrics, switchboard_connections, switchboard_rooms (rooms with local
# members) and switchboard_redis_broker_rooms (rooms it subscribed in Redis); Redis's key
# count (DBSIZE), its pub/sub channels (PUBSUB CHANNELS, and those of rooms), the
# subscribers of the room channels (sum of PUBSUB NUMSUB), PUBSUB SHARDCHANNELS, and its
# used_memory; and the load generator's live sockets, members and losses so far.
#
# At the end it FAILS (exit 1) on:
#   * any lost, duplicate, reordered or stray delivery, any error of the load generator
#     (a refused join, a failed connect or publish, a "localOnly" publish);
#   * growth after the warm-up (--warmup, default a quarter of --duration): a node's RSS
#     or Redis's used_memory whose lowest value over the last quarter of the samples is
#     above the first sample after the warm-up by more than --rss-tolerance percent
#     (default 10) plus --rss-slack MiB (default 8); a node's thread count more than 16
#     above it; Redis's keys, channels or room channels whose lowest value over the last
#     quarter is above the first after the warm-up by more than --count-tolerance percent
#     (default 10) plus 16; keys above 2 x rooms + users + 3 x nodes + 16, or room channels
#     above the number of rooms, at any sample;
#   * state that does not track the live rooms once the churn has stopped and every socket
#     is back in a room: each node's connections and rooms must equal what the load
#     generator holds there, each node's Redis subscriptions its rooms, the room channels
#     in Redis the rooms with members, their subscribers the sum over nodes, presence's
#     user keys and `online` set the users connected, its node hashes the connections;
#   * leftovers once every socket has closed: connections, rooms, subscriptions, room
#     channels, presence user keys and node hashes must all drop to 0 (only the rooms'
#     history streams, which expire after history.ttl, and the nodes' own keys remain).
# The waits for those states are bounded (--settle, default 30 s); no speed is checked.
#
# Options (the others go to `loadgen soak`: --churn, --publish-rate, --rooms, --users,
# --publishers, --seed, ...):
#   --duration S       seconds of churn and publishing (default 3600)
#   --sockets N        sockets (default 10000)
#   --nodes N          Switchboard nodes (default 3)
#   --interval S       seconds between samples (default 60, 10 when --duration < 600)
#   --warmup S         samples in the first S seconds of the churn are not used for growth
#                      (default duration/4)
#   --rss-tolerance P / --rss-slack MiB / --count-tolerance P   (10 / 8 / 10)
#   --settle S         limit on each convergence wait at the end (default 30)
#   --profile P        release (default) or debug binaries
#   --no-build         use the binaries as they are
#   --out DIR          results (default target/bench-results/<time>-soak): samples.tsv,
#                      soak.json (the load generator's counts), node and redis logs,
#                      each node's final /metrics (metrics-A.txt ...)
#
# Pinning as in benches/run.sh: the nodes and redis-server on core 0, the load generator
# on core 1 (BENCH_SERVER_CPU, BENCH_LOAD_CPU); BENCH_PORT (3131) and BENCH_REDIS_PORT
# (6395) are the first ports tried. Needs redis-server, redis-cli, curl and jq. Traffic
# stays on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }

DURATION=3600
SOCKETS=10000
NODES=3
INTERVAL=""
WARMUP=""
RSS_TOL=10
RSS_SLACK=8
COUNT_TOL=10
SETTLE=30
PROFILE=release
BUILD=1
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --sockets) SOCKETS=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --rss-tolerance) RSS_TOL=$2; shift 2 ;;
    --rss-slack) RSS_SLACK=$2; shift 2 ;;
    --count-tolerance) COUNT_TOL=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
DURATION=${DURATION%.*}
[[ -n $INTERVAL ]] || { if (( DURATION < 600 )); then INTERVAL=10; else INTERVAL=60; fi; }
[[ -n $WARMUP ]] || WARMUP=$((DURATION / 4))
(( NODES >= 1 && NODES <= 26 )) || { echo "soak.sh: --nodes 1..26" >&2; exit 2; }

for tool in redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "soak.sh: $tool is needed" >&2; exit 2; }
done

SECRET=switchboard-bench-secret-0123456789abcdef
API_KEY=bench-api-key
export BENCH_SECRET=$SECRET BENCH_API_KEY=$API_KEY
SERVER_CPU=${BENCH_SERVER_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
BIN=$ROOT/target/$PROFILE
PREFIX="switchboard:"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ $BUILD == 1 ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  cargo build "${flag[@]}" -q -p switchboard --bin switchboard
  cargo build "${flag[@]}" -q -p switchboard-bench-loadgen
fi

can_pin() { command -v taskset >/dev/null 2>&1 && [[ $(nproc --all) -gt $1 ]]; }
start_pinned() { # in a background subshell, which becomes the process (so $! is its pid)
  local cpu=$1; shift
  if can_pin "$cpu"; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # first free port from $1 on, not among the others given
  local p=$1 tries=0; shift
  while (( tries < 200 )); do
    if port_free "$p" && [[ " $* " != *" $p "* ]]; then echo "$p"; return 0; fi
    p=$((p + 1)); tries=$((tries + 1))
  done
  echo "soak.sh: no free port from $1" >&2; return 1
}

PIDS=()        # nodes
PORTS=()
REDIS_PID=""
LG_PID=""
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  [[ -n $LG_PID ]] && stop_pid "$LG_PID"
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  [[ -n $REDIS_PID ]] && stop_pid "$REDIS_PID"
  LG_PID=""; PIDS=(); REDIS_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -n $OUT ]] || OUT=$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)-soak
STATE=$OUT/state
mkdir -p "$OUT" "$STATE"
rm -f "$STATE"/*.json "$STATE/release"

# ---- Redis and the nodes --------------------------------------------------------------

RPORT=$(free_port "${BENCH_REDIS_PORT:-6395}")
start_pinned "$SERVER_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$OUT" --loglevel warning > "$OUT/redis.log" 2>&1 &
REDIS_PID=$!
rc() { redis-cli -p "$RPORT" --raw "$@"; }
for _ in $(seq 100); do
  [[ $(rc ping 2>/dev/null) == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || break
  sleep 0.1
done
[[ $(rc ping 2>/dev/null) == PONG ]] || { echo "soak.sh: redis-server did not start" >&2; cat "$OUT/redis.log" >&2; exit 1; }

NAMES=(A B C D E F G H I J K L M N O P Q R S T U V W X Y Z)
port=${BENCH_PORT:-3131}
urls=()
for ((k = 0; k < NODES; k++)); do
  port=$(free_port "$port" "$RPORT" "${PORTS[@]}")
  start_pinned "$SERVER_CPU" env SWITCHBOARD_PRESENCE__PLUGIN=redis SWITCHBOARD_BROKER__PLUGIN=redis \
    SWITCHBOARD_REDIS__URL="redis://127.0.0.1:$RPORT" SWITCHBOARD_REDIS__KEY_PREFIX="$PREFIX" \
    "$BIN/switchboard" serve --config benches/switchboard.toml --listen "127.0.0.1:$port" \
    2> "$OUT/node-${NAMES[k]}.log" &
  PIDS+=($!)
  PORTS+=("$port")
  urls+=(--url "http://127.0.0.1:$port")
  ok=0
  for _ in $(seq 150); do
    kill -0 "${PIDS[k]}" 2>/dev/null || break
    if [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; then ok=1; break; fi
    sleep 0.1
  done
  if [[ $ok != 1 ]]; then
    echo "soak.sh: node ${NAMES[k]} did not become ready; its log:" >&2
    cat "$OUT/node-${NAMES[k]}.log" >&2 || true
    exit 1
  fi
  port=$((port + 1))
done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "args: --duration $DURATION --sockets $SOCKETS --nodes $NODES --interval $INTERVAL --warmup $WARMUP $*"
  echo "nproc: $(nproc --all); kernel: $(uname -r); redis: $(redis-server --version | cut -d' ' -f3)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "pinning: $NODES nodes and redis-server on core $SERVER_CPU, loadgen on core $LOAD_CPU"
} > "$OUT/context.txt"
echo "soak.sh: $NODES nodes (pids ${PIDS[*]}, ports ${PORTS[*]}) and redis-server (pid $REDIS_PID, port $RPORT) on core $SERVER_CPU; loadgen on core $LOAD_CPU; results in $OUT" >&2

# ---- The load -------------------------------------------------------------------------

if can_pin "$LOAD_CPU"; then lg_pin=(taskset -c "$LOAD_CPU"); else lg_pin=(); fi
"${lg_pin[@]}" "$BIN/loadgen" soak "${urls[@]}" --sockets "$SOCKETS" --duration "$DURATION" \
  --state-dir "$STATE" --out "$OUT/soak.json" --release-timeout $((SETTLE * 4 + 60)) "$@" \
  > /dev/null 2> "$OUT/loadgen.log" &
LG_PID=$!

# ---- Samples ---------------------------------------------------------------------------

metric() { # text name: the value of an unlabelled sample (0 when absent)
  awk -v n="$2" '$1 == n { v = $2 } END { printf "%d", v + 0 }' <<< "$1"
}
room_channels() { rc pubsub channels "${PREFIX}room:*"; }
numsub_sum() {
  room_channels | xargs -r -n 200 redis-cli -p "$RPORT" --raw pubsub numsub \
    | awk 'NR % 2 == 0 { s += $1 } END { printf "%d", s + 0 }'
}
count_keys() { rc --scan --pattern "$1" | wc -l; }
node_hash_total() {
  local total=0 k
  while read -r k; do
    [[ -n $k ]] && total=$((total + $(rc hlen "$k")))
  done < <(rc --scan --pattern "${PREFIX}{presence}:node:*")
  echo "$total"
}

# One sample into the globals S_* (arrays per node).
sample() {
  S_RSS=(); S_THR=(); S_CONN=(); S_ROOMS=(); S_BROKER=(); S_LOST=()
  local k m
  for ((k = 0; k < NODES; k++)); do
    S_RSS+=("$(awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/${PIDS[k]}/status" 2>/dev/null || echo 0)")
    S_THR+=("$(awk '/^Threads:/ { print $2 }' "/proc/${PIDS[k]}/status" 2>/dev/null || echo 0)")
    m=$(curl -s -m 5 "http://127.0.0.1:${PORTS[k]}/metrics" || true)
    S_CONN+=("$(metric "$m" switchboard_connections)")
    S_ROOMS+=("$(metric "$m" switchboard_rooms)")
    S_BROKER+=("$(metric "$m" switchboard_redis_broker_rooms)")
    S_LOST+=("$(metric "$m" switchboard_redis_broker_lost_total)")
  done
  S_KEYS=$(rc dbsize)
  S_CHANS=$(rc pubsub channels | grep -c . || true)
  S_RCHANS=$(room_channels | grep -c . || true)
  S_NUMSUB=$(numsub_sum)
  S_SHARD=$(rc pubsub shardchannels | grep -c . || true)
  S_RMEM=$(rc info memory | awk -F: '/^used_memory:/ { printf "%d", $2 / 1048576 }')
  S_RRSS=$(awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/$REDIS_PID/status" 2>/dev/null || echo 0)
}
join() { local IFS=/; echo "$*"; }
sum() { local s=0 x; for x in "$@"; do s=$((s + x)); done; echo "$s"; }

T0=$(date +%s)
printf '%s\n' "t_s phase lg_conn lg_members lg_lost rss_mib threads connections rooms broker_rooms keys channels room_channels numsub shard_channels redis_used_mib redis_rss_mib" \
  > "$OUT/samples.tsv"
printf '%6s %-7s %6s %6s %4s | %-17s %-11s %-17s %-17s %-17s | %6s %5s %5s %6s %5s %5s\n' \
  t phase conn memb lost "rss MiB" threads connections rooms "redis subs" keys chans rooms numsub shard "r MiB" >&2
row() { # phase: one sample, printed and recorded
  local phase=$1 st lc lm ll
  st=$(cat "$STATE/status.json" 2>/dev/null || echo '{}')
  lc=$(jq -r '.connected // 0' <<< "$st"); lm=$(jq -r '.members // 0' <<< "$st"); ll=$(jq -r '.lost // 0' <<< "$st")
  [[ $phase == auto ]] && phase=$(jq -r '.phase // "setup"' <<< "$st")
  sample
  local t=$(( $(date +%s) - T0 ))
  printf '%6s %-7s %6s %6s %4s | %-17s %-11s %-17s %-17s %-17s | %6s %5s %5s %6s %5s %5s\n' \
    "$t" "$phase" "$lc" "$lm" "$ll" "$(join "${S_RSS[@]}")" "$(join "${S_THR[@]}")" "$(join "${S_CONN[@]}")" \
    "$(join "${S_ROOMS[@]}")" "$(join "${S_BROKER[@]}")" "$S_KEYS" "$S_CHANS" "$S_RCHANS" "$S_NUMSUB" \
    "$S_SHARD" "$S_RMEM" >&2
  echo "$t $phase $lc $lm $ll $(join "${S_RSS[@]}") $(join "${S_THR[@]}") $(join "${S_CONN[@]}") $(join "${S_ROOMS[@]}") $(join "${S_BROKER[@]}") $S_KEYS $S_CHANS $S_RCHANS $S_NUMSUB $S_SHARD $S_RMEM $S_RRSS" \
    >> "$OUT/samples.tsv"
}

FAIL=()
fail() { FAIL+=("$*"); echo "soak.sh: FAIL: $*" >&2; }

# Until the load generator is quiet (or gone), bounded by the run's length.
deadline=$(( T0 + DURATION + 600 + 4 * SETTLE + 300 ))
next=$T0
while :; do
  if [[ -f $STATE/quiet.json ]]; then break; fi
  if ! kill -0 "$LG_PID" 2>/dev/null; then break; fi
  if (( $(date +%s) >= deadline )); then fail "the load generator did not finish in time"; break; fi
  if (( $(date +%s) >= next )); then
    row auto
    next=$(( next + INTERVAL ))
  fi
  sleep 1
done

# ---- At rest, every socket in a room: the nodes and Redis against the load generator --

converge() { # what check-fn: retries check-fn for up to SETTLE seconds; its last message on failure
  local what=$1 fn=$2 until=$(( $(date +%s) + SETTLE )) msg
  while :; do
    if msg=$($fn); then return 0; fi
    if (( $(date +%s) >= until )); then fail "$what: $msg"; return 1; fi
    sleep 1
  done
}

if [[ -f $STATE/quiet.json ]]; then
  Q=$(cat "$STATE/quiet.json")
  check_settled() {
    sample
    local k want bad=()
    for ((k = 0; k < NODES; k++)); do
      want=$(jq -r ".connected_per_node[$k]" <<< "$Q")
      [[ ${S_CONN[k]} == "$want" ]] || bad+=("node ${NAMES[k]} has ${S_CONN[k]} connections, the load generator $want")
      want=$(jq -r ".rooms_with_members_per_node[$k]" <<< "$Q")
      [[ ${S_ROOMS[k]} == "$want" ]] || bad+=("node ${NAMES[k]} has ${S_ROOMS[k]} rooms, the load generator's members are in $want there")
      [[ ${S_BROKER[k]} == "${S_ROOMS[k]}" ]] || bad+=("node ${NAMES[k]} is subscribed to ${S_BROKER[k]} rooms in Redis for ${S_ROOMS[k]} rooms")
    done
    want=$(jq -r '.rooms_with_members' <<< "$Q")
    [[ $S_RCHANS == "$want" ]] || bad+=("Redis has $S_RCHANS room channels for $want rooms with members")
    want=$(sum "${S_ROOMS[@]}")
    [[ $S_NUMSUB == "$want" ]] || bad+=("the room channels have $S_NUMSUB subscribers for $want node-rooms")
    local users; users=$(jq -r '.users_connected' <<< "$Q")
    local ukeys; ukeys=$(count_keys "${PREFIX}{presence}:user:*")
    [[ $ukeys == "$users" ]] || bad+=("$ukeys presence user keys for $users users connected")
    local online; online=$(rc scard "${PREFIX}{presence}:online")
    [[ $online == "$users" ]] || bad+=("the online set has $online users for $users connected")
    local hashes; hashes=$(node_hash_total)
    want=$(jq -r '.connected' <<< "$Q")
    [[ $hashes == "$want" ]] || bad+=("the node hashes hold $hashes connections for $want")
    if [[ ${#bad[@]} -gt 0 ]]; then local IFS=';'; echo "${bad[*]}"; return 1; fi
  }
  converge "at rest" check_settled || true
  row settled
  touch "$STATE/release"
fi

# ---- Everybody gone: nothing may be left -------------------------------------------------

for _ in $(seq $((SETTLE * 4 + 120))); do kill -0 "$LG_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$LG_PID" 2>/dev/null; then fail "the load generator did not exit"; stop_pid "$LG_PID"; fi
wait "$LG_PID" 2>/dev/null || true
LG_PID=""

ROOMS=$(jq -r '.rooms // 0' "$OUT/soak.json" 2>/dev/null || echo 0)
USERS=$(jq -r '.users // 0' "$OUT/soak.json" 2>/dev/null || echo 0)
check_empty() {
  sample
  local k bad=()
  for ((k = 0; k < NODES; k++)); do
    (( S_CONN[k] == 0 )) || bad+=("node ${NAMES[k]} still has ${S_CONN[k]} connections")
    (( S_ROOMS[k] == 0 )) || bad+=("node ${NAMES[k]} still has ${S_ROOMS[k]} rooms")
    (( S_BROKER[k] == 0 )) || bad+=("node ${NAMES[k]} is still subscribed to ${S_BROKER[k]} rooms")
  done
  (( S_RCHANS == 0 )) || bad+=("Redis still has $S_RCHANS room channels")
  local ukeys; ukeys=$(count_keys "${PREFIX}{presence}:user:*")
  (( ukeys == 0 )) || bad+=("$ukeys presence user keys left")
  local online; online=$(rc scard "${PREFIX}{presence}:online")
  (( online == 0 )) || bad+=("$online users left in the online set")
  local hashes; hashes=$(node_hash_total)
  (( hashes == 0 )) || bad+=("$hashes connections left in the node hashes")
  local bound=$(( 2 * ROOMS + 3 * NODES + 8 ))
  (( S_KEYS <= bound )) || bad+=("$S_KEYS keys left (at most $bound: two per room's history, the nodes' own)")
  if [[ ${#bad[@]} -gt 0 ]]; then local IFS=';'; echo "${bad[*]}"; return 1; fi
}
converge "after every socket closed" check_empty || true
row closed

# Each node's final metrics (cumulative: how long events took, what failed), kept with the run.
for ((k = 0; k < NODES; k++)); do
  curl -s -m 5 "http://127.0.0.1:${PORTS[k]}/metrics" > "$OUT/metrics-${NAMES[k]}.txt" || true
done

# ---- Verdict ---------------------------------------------------------------------------

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/context.txt"
if [[ -f $OUT/soak.json ]]; then
  jq -r '"load generator: \(.sockets) sockets, \(.rooms) rooms, \(.users) users, \(.ran_s) s of churn: \(.connects) connects, \(.joins) joins, \(.leaves) leaves, \(.switches) switches, \(.pauses) pauses, \(.drops) drops (\(.drops_abrupt) abrupt); \(.publishes) publishes, \(.deliveries) deliveries, \(.memberships_checked) memberships checked, \(.required) deliveries required: lost \(.lost), duplicates \(.duplicates), reordered \(.reordered), strays \(.strays), errors \(.errors), localOnly \(.local_only), failed publishes \(.publish_failures); latency p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms"' \
    "$OUT/soak.json" >&2
  for k in lost duplicates reordered strays errors local_only publish_failures unknown; do
    v=$(jq -r ".$k // 0" "$OUT/soak.json")
    (( v == 0 )) || fail "$k: $v"
  done
  jq -r '(.error_samples + .loss_samples)[]? | "  sample: \(.)"' "$OUT/soak.json" >&2
else
  fail "the load generator wrote no result (see $OUT/loadgen.log)"
  tail -20 "$OUT/loadgen.log" >&2 || true
fi

# Growth, over the samples of the run phase after the warm-up.
growth() {
  awk -v warm="$WARMUP" -v nodes="$NODES" -v rtol="$RSS_TOL" -v rslack="$RSS_SLACK" \
      -v ctol="$COUNT_TOL" -v rooms="$ROOMS" -v users="$USERS" '
    NR == 1 { next }
    $2 == "run" || $2 == "settle" || $2 == "setup" {
      # every sample: absolute bounds
      if ($11 > 2 * rooms + users + 3 * nodes + 16)
        printf "keys %d above 2 x %d rooms + %d users + %d at t=%ds\n", $11, rooms, users, 3 * nodes + 16, $1
      if ($13 > rooms) printf "%d room channels for %d rooms at t=%ds\n", $13, rooms, $1
    }
    $2 == "run" && !started { t0run = $1; started = 1 }
    $2 == "run" && $1 - t0run >= warm {
      n++
      split($6, r, "/"); split($7, th, "/")
      for (k = 1; k <= nodes; k++) { rss[n, k] = r[k]; thr[n, k] = th[k] }
      keys[n] = $11; chans[n] = $12; rch[n] = $13; rmem[n] = $16
    }
    END {
      if (n < 2) { print "SKIP fewer than two samples after the warm-up: growth not checked"; exit }
      q = int(n / 4); if (q < 1) q = 1
      for (k = 1; k <= nodes; k++) {
        low = 1e18; hi = 0
        for (i = n - q + 1; i <= n; i++) if (rss[i, k] < low) low = rss[i, k]
        lim = rss[1, k] * (1 + rtol / 100) + rslack
        if (low > lim) printf "node %s RSS grew from %d to %d MiB after the warm-up (limit %d)\n", substr("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k, 1), rss[1, k], low, lim
        for (i = 1; i <= n; i++) if (thr[i, k] > hi) hi = thr[i, k]
        if (hi > thr[1, k] + 16) printf "node %s threads grew from %d to %d\n", substr("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k, 1), thr[1, k], hi
      }
      check("keys", keys); check("channels", chans); check("room channels", rch)
      low = 1e18; for (i = n - q + 1; i <= n; i++) if (rmem[i] < low) low = rmem[i]
      lim = rmem[1] * (1 + rtol / 100) + rslack
      if (low > lim) printf "Redis used_memory grew from %d to %d MiB after the warm-up (limit %d)\n", rmem[1], low, lim
    }
    function check(name, a,    i, low, lim) {
      low = 1e18; for (i = n - q + 1; i <= n; i++) if (a[i] < low) low = a[i]
      lim = a[1] * (1 + ctol / 100) + 16
      if (low > lim) printf "%s grew from %d to %d after the warm-up (limit %d)\n", name, a[1], low, lim
    }
  ' "$OUT/samples.tsv"
}
while read -r line; do
  [[ -n $line ]] || continue
  if [[ $line == SKIP* ]]; then echo "soak.sh: ${line#SKIP }" >&2; else fail "$line"; fi
done < <(growth)

# Warnings and errors the nodes logged (reported, not judged), but the start-up one about
# the permissive rooms.policy of benches/switchboard.toml.
for ((k = 0; k < NODES; k++)); do
  logged=$(grep -E ' (ERROR|WARN) ' "$OUT/node-${NAMES[k]}.log" 2>/dev/null | grep -v 'rooms.policy lets any' || true)
  if [[ -n $logged ]]; then
    echo "soak.sh: node ${NAMES[k]} logged $(grep -c . <<< "$logged") warnings or errors; the first:" >&2
    head -3 <<< "$logged" >&2
  fi
done
echo "soak.sh: samples in $OUT/samples.tsv; load average before $(sed -n 's/^load before: //p' "$OUT/context.txt"), after $(cut -d' ' -f1-3 /proc/loadavg)" >&2

if [[ ${#FAIL[@]} -gt 0 ]]; then
  echo "soak: FAILED (${#FAIL[@]}):" >&2
  printf '  %s\n' "${FAIL[@]}" >&2
  exit 1
fi
echo "soak: passed: nothing lost, no growth after the warm-up, Redis and the nodes track the live rooms and empty out"
