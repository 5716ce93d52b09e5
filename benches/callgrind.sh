#!/usr/bin/env bash
# User-space instructions per delivery of the `rooms` scenario, counted by callgrind: free
# of the run-to-run spread of CPU time on a shared machine, so small changes to the publish
# path show. Each server runs under `valgrind --tool=callgrind` twice, with `loadgen rooms`
# (100 sockets in rooms of 10, 500 deliveries/s, 2 publisher connections) for a short and a
# long run; the difference of the two totals over the difference of the deliveries is the
# count of one delivery, start-up and shutdown cancelled out. The kernel's share (the
# writes to the sockets, the same for every server) is not counted.
#
#   benches/callgrind.sh                                   # switchboard and bare, Socket.IO
#   benches/callgrind.sh --protocol native                 # switchboard and bare-native
#   benches/callgrind.sh --servers switchboard,before=PATH # a before/after pair
#   benches/callgrind.sh --servers off@benches/history-off.toml  # switchboard, another config
#   benches/callgrind.sh --cache                           # also cache misses per delivery
#
# `--cache` simulates the caches too (slower): data reads and writes that miss the first
# level cache, and those that miss the last level, per delivery. A server that keeps more
# memory live (room history) can run the same instructions slower; this shows it.
#
# Needs valgrind and the release binaries (benches/run.sh builds them). Results, and the
# callgrind files for callgrind_annotate, go to target/callgrind/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROTOCOL=socketio
SERVERS=""
SHORT=4
LONG=14
CACHE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --protocol) PROTOCOL=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --short) SHORT=$2; shift 2 ;;
    --long) LONG=$2; shift 2 ;;
    --cache) CACHE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z $SERVERS ]]; then
  if [[ $PROTOCOL == native ]]; then SERVERS=switchboard,bare-native; else SERVERS=switchboard,bare; fi
fi
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
BIN=$ROOT/target/release
OUT=$ROOT/target/callgrind
mkdir -p "$OUT"
export BENCH_SECRET=switchboard-bench-secret-0123456789abcdef BENCH_API_KEY=bench-api-key
PORT=${BENCH_PORT:-3121}
can_pin() { command -v taskset >/dev/null 2>&1 && [[ $(nproc --all) -gt 1 ]]; }
pin() { local cpu=$1; shift; if can_pin; then taskset -c "$cpu" "$@"; else "$@"; fi; }

CG_OPTS=()
[[ $CACHE == 1 ]] && CG_OPTS=(--cache-sim=yes)

# One run: prints "instructions D1-misses LL-misses delivered lost" (misses 0 without --cache).
run() {
  local name=$1 duration=$2 cmd=()
  case $name in
    switchboard) cmd=("$BIN/switchboard" serve --config benches/switchboard.toml) ;;
    bare) cmd=("$BIN/bare-socketioxide") ;;
    bare-native) cmd=("$BIN/bare-native") ;;
    *@*) cmd=("$BIN/switchboard" serve --config "${name#*@}") ;;
    *=*) cmd=("${name#*=}" serve --config benches/switchboard.toml) ;;
    *) echo "callgrind.sh: unknown server $name" >&2; exit 2 ;;
  esac
  local label=${name%%[=@]*}
  local file=$OUT/$label-$PROTOCOL-$duration.out
  rm -f "$file"
  (
    vg=(valgrind --tool=callgrind "${CG_OPTS[@]}" --callgrind-out-file="$file" "${cmd[@]}" --listen "127.0.0.1:$PORT")
    if can_pin; then exec taskset -c 0 "${vg[@]}"; else exec "${vg[@]}"; fi
  ) > "$OUT/$label-$PROTOCOL-$duration.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  pin 1 "$BIN/loadgen" rooms --protocol "$PROTOCOL" --url "http://127.0.0.1:$PORT" \
    --label "$label" --out "$OUT/$label-$PROTOCOL-$duration.json" --sockets 100 \
    --room-size 10 --rate 500 --publishers 2 --duration "$duration" --setup-timeout 120 \
    > /dev/null
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$file" "$OUT/$label-$PROTOCOL-$duration.json" <<'PY'
import json, sys
events, total = [], None
for line in open(sys.argv[1]):
    if line.startswith('events:'):
        events = line.split()[1:]
    if line.startswith(('summary:', 'totals:')):
        total = dict(zip(events, map(int, line.split()[1:])))
d1 = total.get('D1mr', 0) + total.get('D1mw', 0)
ll = total.get('DLmr', 0) + total.get('DLmw', 0)
d = json.load(open(sys.argv[2]))
print(total['Ir'], d1, ll, d['delivered'], d['lost'])
PY
}

# A table row: server protocol instructions [D1-misses LL-misses] lost.
row() {
  if [[ $CACHE == 1 ]]; then
    printf '| %-12s | %-9s | %22s | %18s | %18s | %s |\n' "$@"
  else
    printf '| %-12s | %-9s | %22s | %s |\n' "$1" "$2" "$3" "${@: -1}"
  fi
}
row server protocol "instructions/delivery" "D1 misses/delivery" "LL misses/delivery" lost
row --- --- ---: ---: ---: ---
IFS=, read -r -a list <<< "$SERVERS"
for name in "${list[@]}"; do
  read -r a d1a lla da la <<< "$(run "$name" "$SHORT")"
  read -r b d1b llb db lb <<< "$(run "$name" "$LONG")"
  n=$((db - da))
  row "${name%%[=@]*}" "$PROTOCOL" "$(( (b - a) / n ))" "$(( (d1b - d1a) / n ))" \
    "$(( (llb - lla) / n ))" "$((la + lb))"
done
