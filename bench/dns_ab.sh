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
# Output: per round and workload the qps of each as a ratio to dnsmasq's qps in the same round, and each server's CPU
# time per answered query (from /proc/PID/stat: steadier than qps when a neighbour takes the core); then the medians
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
declare -A PID=([dnsmasq]=$!)
start_enforcer() {  # start_enforcer TREE PORT NAME
  (cd "$1" && exec taskset -c "$SERVER_CPU" "$PY" -m enforcer dns --listen "127.0.0.1:$2" \
    --upstream "127.0.0.1:$UP_PORT" --blocklist "$WORK/blocklists" --mode null --events "$WORK/events-$3.jsonl" \
    --metrics "127.0.0.1:0" >"$WORK/$3.out" 2>"$WORK/$3.err") &
  PIDS+=($!)
  PID[$3]=$!
}
start_enforcer "$BASE" "$OLD_PORT" before
start_enforcer "$ROOT" "$NEW_PORT" after
for port in "$UP_PORT" "$DM_PORT" "$OLD_PORT" "$NEW_PORT"; do wait_port "$port"; done

perf() {  # perf PORT FILE SECONDS -> qps
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$3" -c 4 -q 200 -t 2 >"$WORK/perf.out" 2>&1
  "$PY" "$ROOT/bench/dns_bench_data.py" summary "$WORK/perf.out" | awk '{print $1}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
measure() {  # measure SIDE WORKLOAD -> "qps cpu_us_per_query"
  local c0 c1 q
  c0=$(cpu_ticks "${PID[$1]}")
  q=$(perf "${PORT[$1]}" "$WORK/$2.txt" "$DURATION")
  c1=$(cpu_ticks "${PID[$1]}")
  awk -v q="$q" -v t=$((c1 - c0)) -v hz="$HZ" -v d="$DURATION" 'BEGIN { printf "%s %.1f\n", q, t / hz * 1e6 / (q * d) }'
}
for port in "$DM_PORT" "$OLD_PORT" "$NEW_PORT"; do perf "$port" "$WORK/cached.txt" 10 >/dev/null; done  # warm

declare -A PORT=([dnsmasq]=$DM_PORT [before]=$OLD_PORT [after]=$NEW_PORT)
ORDERS=("before after dnsmasq" "after dnsmasq before" "dnsmasq before after")
RESULTS="$WORK/results.txt"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-5s %-8s | %10s %10s %10s | %11s %11s | %s\n" round workload "before qps" "after qps" "dnsm qps" \
  "before/dnsm" "after/dnsm" "cpu us/q before after dnsmasq"
for round in $(seq 1 "$ROUNDS"); do
  for wl in blocked cached; do
    declare -A Q=() C=()
    for side in ${ORDERS[$(( (round - 1) % 3 ))]}; do read -r "Q[$side]" "C[$side]" < <(measure "$side" "$wl"); done
    rb=$(awk -v a="${Q[before]}" -v b="${Q[dnsmasq]}" 'BEGIN { printf "%.3f", a / b }')
    ra=$(awk -v a="${Q[after]}" -v b="${Q[dnsmasq]}" 'BEGIN { printf "%.3f", a / b }')
    printf "%-5s %-8s | %10s %10s %10s | %11s %11s | %s %s %s\n" "$round" "$wl" "${Q[before]}" "${Q[after]}" \
      "${Q[dnsmasq]}" "$rb" "$ra" "${C[before]}" "${C[after]}" "${C[dnsmasq]}"
    echo "$wl $rb $ra ${C[before]} ${C[after]}" >>"$RESULTS"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for wl in blocked cached; do
  "$PY" - "$RESULTS" "$wl" <<'PYEOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.split()[0] == sys.argv[2]]
before, after = (statistics.median(float(r[i]) for r in rows) for i in (1, 2))
cpu_b, cpu_a = (statistics.median(float(r[i]) for r in rows) for i in (3, 4))
print(f"{sys.argv[2]:8s} median qps/dnsmasq: before {before:.3f}, after {after:.3f} (after/before {after / before:.3f});"
      f" median cpu us/query: before {cpu_b:.1f}, after {cpu_a:.1f} (after/before {cpu_a / cpu_b:.3f})")
PYEOF
done
