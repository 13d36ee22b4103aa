#!/usr/bin/env bash
# Before/after of the resolver's hot path: `enforcer dns` from two source trees and dnsmasq, in ONE run, alternating.
#
#   BASE=/tmp/wt-base bench/dns_ab.sh      # BASE: a worktree of the commit to compare against (git worktree add)
#   ROUNDS=4 DURATION=8 BASE=... bench/dns_ab.sh
#
# The same setup as bench/dns_bench.sh (servers pinned to core $SERVER_CPU, dnsperf to $CLIENT_CPU, a local dnsmasq as
# the upstream, the shipped lists + a $FEED_NAMES-name feed, events and metrics on), with three servers up at once:
# enforcer from $BASE, enforcer from this tree, and dnsmasq. Each round runs blocked, then cached, against the three
# back to back (the order rotates every round), so load from other users of the machine falls on all of them alike.
# Output: per round and workload the qps of each, as ratios to dnsmasq's qps in the same round; then the median ratio
# per workload and side, and after/before. Uses the venv of this tree for both (only the enforcer sources differ).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
BASE="${BASE:?set BASE to a worktree of the commit to compare against}"
DURATION="${DURATION:-8}"
ROUNDS="${ROUNDS:-4}"
FEED_NAMES="${FEED_NAMES:-100000}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"
UP_PORT=$BASE_PORT
DM_PORT=$((BASE_PORT + 1))
OLD_PORT=$((BASE_PORT + 2))
NEW_PORT=$((BASE_PORT + 3))

# shellcheck source=bench/dns_bench_common.sh
source "$ROOT/bench/dns_bench_common.sh"
require_tools dnsperf dnsmasq taskset
start_workdir dns-ab

"$PY" "$ROOT/bench/dns_bench_data.py" make "$WORK" --feed-names "$FEED_NAMES" --miss-names 1000 >&2
"$PY" -m enforcer export --format dnsmasq --mode null --blocklist "$WORK/blocklists" --output "$WORK/dnsmasq-block.conf"

taskset -c "$CLIENT_CPU" "$DNSMASQ" -k --port "$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --pid-file= --address=/#/192.0.2.1 --local-ttl=3600 --cache-size=0 --user=root \
  --log-facility=/dev/null &
PIDS+=($!)
taskset -c "$SERVER_CPU" "$DNSMASQ" -k --port "$DM_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --pid-file= --server="127.0.0.1#$UP_PORT" --conf-file="$WORK/dnsmasq-block.conf" --cache-size=10000 \
  --user=root --log-facility=/dev/null &
PIDS+=($!)
start_enforcer() {  # start_enforcer TREE PORT NAME
  (cd "$1" && exec taskset -c "$SERVER_CPU" "$PY" -m enforcer dns --listen "127.0.0.1:$2" \
    --upstream "127.0.0.1:$UP_PORT" --blocklist "$WORK/blocklists" --mode null --events "$WORK/events-$3.jsonl" \
    --metrics "127.0.0.1:0" >"$WORK/$3.out" 2>"$WORK/$3.err") &
  PIDS+=($!)
}
start_enforcer "$BASE" "$OLD_PORT" before
start_enforcer "$ROOT" "$NEW_PORT" after
for port in "$UP_PORT" "$DM_PORT" "$OLD_PORT" "$NEW_PORT"; do wait_port "$port"; done

perf() {  # perf PORT FILE SECONDS -> qps
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$3" -c 4 -q 200 -t 2 >"$WORK/perf.out" 2>&1
  "$PY" "$ROOT/bench/dns_bench_data.py" summary "$WORK/perf.out" | awk '{print $1}'
}
for port in "$DM_PORT" "$OLD_PORT" "$NEW_PORT"; do perf "$port" "$WORK/cached.txt" 10 >/dev/null; done  # warm

declare -A PORT=([dnsmasq]=$DM_PORT [before]=$OLD_PORT [after]=$NEW_PORT)
ORDERS=("before after dnsmasq" "after dnsmasq before" "dnsmasq before after")
RESULTS="$WORK/results.txt"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-5s %-8s | %12s %12s %12s | %13s %12s\n" round workload "before qps" "after qps" "dnsmasq qps" \
  "before/dnsm" "after/dnsm"
for round in $(seq 1 "$ROUNDS"); do
  for wl in blocked cached; do
    declare -A Q=()
    for side in ${ORDERS[$(( (round - 1) % 3 ))]}; do Q[$side]=$(perf "${PORT[$side]}" "$WORK/$wl.txt" "$DURATION"); done
    rb=$(awk -v a="${Q[before]}" -v b="${Q[dnsmasq]}" 'BEGIN { printf "%.3f", a / b }')
    ra=$(awk -v a="${Q[after]}" -v b="${Q[dnsmasq]}" 'BEGIN { printf "%.3f", a / b }')
    printf "%-5s %-8s | %12s %12s %12s | %13s %12s\n" "$round" "$wl" "${Q[before]}" "${Q[after]}" "${Q[dnsmasq]}" \
      "$rb" "$ra"
    echo "$wl $rb $ra" >>"$RESULTS"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for wl in blocked cached; do
  "$PY" - "$RESULTS" "$wl" <<'PYEOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.split()[0] == sys.argv[2]]
before = statistics.median(float(r[1]) for r in rows)
after = statistics.median(float(r[2]) for r in rows)
print(f"{sys.argv[2]:8s} median qps/dnsmasq: before {before:.3f}, after {after:.3f}; after/before {after / before:.3f}")
PYEOF
done
