#!/usr/bin/env bash
# `enforcer dns --workers 2` against `--workers 1` on this machine, dnsperf on the same machine, in one run.
#
#   bench/dns_workers_bench.sh                    # 10 s per workload, 2 rounds
#   DURATION=15 ROUNDS=3 bench/dns_workers_bench.sh
#
# No pinning: the workers and dnsperf share the 2 cores, as they would on a 2-core resolver host that also runs its
# own load generator. dnsperf uses 16 client sockets (-c 16) so that SO_REUSEPORT can spread them over the workers
# (the kernel picks a worker per source address and port). Rounds alternate 1 and 2 workers so that load from other
# users of the machine drifts as little as possible between the two; the report gives the median qps per setting and
# the ratio 2 workers / 1 worker per workload. Blocklist: shipped lists + $FEED_NAMES feed names; events and metrics on.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
FEED_NAMES="${FEED_NAMES:-100000}"
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"
UP_PORT=$BASE_PORT
ENF_PORT=$((BASE_PORT + 1))
METRICS_PORT=$((BASE_PORT + 2))

# shellcheck source=bench/dns_bench_common.sh
source "$ROOT/bench/dns_bench_common.sh"
require_tools dnsperf dnsmasq
start_workdir dns-workers-bench

"$PY" "$ROOT/bench/dns_bench_data.py" make "$WORK" --feed-names "$FEED_NAMES" --miss-names 1000 >&2
"$DNSMASQ" -k --port "$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --pid-file= \
  --address=/#/192.0.2.1 --local-ttl=3600 --cache-size=0 --user=root --log-facility=/dev/null &
PIDS+=($!)

wait_port "$UP_PORT"

declare -A RESULTS
run_setting() {  # run_setting WORKERS ROUND
  local workers=$1 round=$2 pid wl out q
  "$PY" -m enforcer dns --workers "$workers" --listen "127.0.0.1:$ENF_PORT" --upstream "127.0.0.1:$UP_PORT" \
    --blocklist "$WORK/blocklists" --events "$WORK/events-$workers-$round.jsonl" \
    --metrics "127.0.0.1:$METRICS_PORT" >"$WORK/enforcer-$workers.out" 2>&1 &
  pid=$!
  wait_port "$ENF_PORT"
  dnsperf -s 127.0.0.1 -p "$ENF_PORT" -d "$WORK/cached.txt" -l 5 -c 16 -q 400 -n 1 >/dev/null 2>&1 || true  # warm
  for wl in blocked cached mix; do
    out="$WORK/w$workers-r$round-$wl.out"
    dnsperf -s 127.0.0.1 -p "$ENF_PORT" -d "$WORK/$wl.txt" -l "$DURATION" -c 16 -q 400 -t 2 >"$out" 2>&1
    read -r q _ _ < <("$PY" "$ROOT/bench/dns_bench_data.py" summary "$out")
    RESULTS[$workers,$wl]="${RESULTS[$workers,$wl]:-} $q"
  done
  kill -TERM "$pid"; wait "$pid" || true
}

for round in $(seq 1 "$ROUNDS"); do
  run_setting 1 "$round"
  run_setting 2 "$round"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.0f", (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "enforcer dns --workers 2 vs --workers 1 $(date -u +%FT%TZ): ${DURATION}s per workload, ${ROUNDS} alternating rounds,"
echo "dnsperf -c 16 -q 400 on the same 2-core machine (no pinning); blocklist = shipped + ${FEED_NAMES} feed names."
printf "%-8s | %14s | %14s | %7s | %s\n" workload "1 worker qps" "2 workers qps" ratio "all rounds (1 | 2)"
for wl in blocked cached mix; do
  one=$(echo "${RESULTS[1,$wl]}" | median); two=$(echo "${RESULTS[2,$wl]}" | median)
  printf "%-8s | %14s | %14s | %7s | %s |%s\n" "$wl" "$one" "$two" \
    "$(awk -v a="$two" -v b="$one" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')" \
    "${RESULTS[1,$wl]}" "${RESULTS[2,$wl]}"
done
