#!/usr/bin/env bash
# `enforcer dns --workers 2` against `--workers 1` on this machine, dnsperf on the same machine, in one run.
#
#   bench/dns_workers_bench.sh                    # 10 s per workload, 2 rounds
#   DURATION=15 ROUNDS=3 bench/dns_workers_bench.sh
#   PIN=1 bench/dns_workers_bench.sh              # dnsperf pinned to core $CLIENT_CPU (the workers are not pinned)
#
# No pinning by default: the workers and dnsperf share the 2 cores, as they would on a 2-core resolver host that also
# runs its own load generator. dnsperf uses 16 client sockets (-c 16) so that SO_REUSEPORT can spread them over the
# workers (the kernel picks a worker per source address and port). Rounds alternate 1 and 2 workers so that load from
# other users of the machine drifts as little as possible between the two; the report gives the median qps per
# setting and the ratio 2 workers / 1 worker per workload. Blocklist: shipped lists + $FEED_NAMES feed names; events
# and metrics on.
#
# Where the cores go: for every run the CPU time of the resolver (all its processes: /proc/PID/stat of the parent and
# its children, read just before it stops) and of dnsperf (/usr/bin/time), as a share of the DURATION x 2 cores the
# machine had. With one worker the resolver can use at most one core; with two, whatever dnsperf leaves.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
FEED_NAMES="${FEED_NAMES:-100000}"
PIN="${PIN:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"
UP_PORT=$BASE_PORT
ENF_PORT=$((BASE_PORT + 1))
METRICS_PORT=$((BASE_PORT + 2))

# shellcheck source=bench/dns_bench_common.sh
source "$ROOT/bench/dns_bench_common.sh"
require_tools dnsperf dnsmasq taskset
start_workdir dns-workers-bench

"$PY" "$ROOT/bench/dns_bench_data.py" make "$WORK" --feed-names "$FEED_NAMES" --miss-names 1000 >&2
"$DNSMASQ" -k --port "$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --pid-file= \
  --address=/#/192.0.2.1 --local-ttl=3600 --cache-size=0 --user=root --log-facility=/dev/null &
PIDS+=($!)

wait_port "$UP_PORT"

client() {  # client ARGS... : dnsperf, pinned with PIN=1, its user+system CPU seconds written to $WORK/client.cpu
  local pin=()
  [ "$PIN" = 1 ] && pin=(taskset -c "$CLIENT_CPU")
  /usr/bin/time -f "%U %S" -o "$WORK/client.cpu" "${pin[@]}" dnsperf "$@"
}
tree_ticks() {  # tree_ticks PID -> utime+stime of PID and its children (the workers), in clock ticks
  local pid=$1 total=0 child
  for child in "$pid" $(pgrep -P "$pid" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)

declare -A RESULTS CPU_SERVER CPU_CLIENT
run_setting() {  # run_setting WORKERS ROUND
  local workers=$1 round=$2 pid wl out q t0 t1
  "$PY" -m enforcer dns --workers "$workers" --listen "127.0.0.1:$ENF_PORT" --upstream "127.0.0.1:$UP_PORT" \
    --blocklist "$WORK/blocklists" --events "$WORK/events-$workers-$round.jsonl" \
    --metrics "127.0.0.1:$METRICS_PORT" >"$WORK/enforcer-$workers.out" 2>&1 &
  pid=$!
  wait_port "$ENF_PORT"
  client -s 127.0.0.1 -p "$ENF_PORT" -d "$WORK/cached.txt" -l 5 -c 16 -q 400 -n 1 >/dev/null 2>&1 || true  # warm
  for wl in blocked cached mix; do
    out="$WORK/w$workers-r$round-$wl.out"
    t0=$(tree_ticks "$pid")
    client -s 127.0.0.1 -p "$ENF_PORT" -d "$WORK/$wl.txt" -l "$DURATION" -c 16 -q 400 -t 2 >"$out" 2>&1
    t1=$(tree_ticks "$pid")
    read -r q _ _ < <("$PY" "$ROOT/bench/dns_bench_data.py" summary "$out")
    RESULTS[$workers,$wl]="${RESULTS[$workers,$wl]:-} $q"
    # Shares of the 2 x DURATION core-seconds: the resolver's processes, and dnsperf.
    CPU_SERVER[$workers,$wl]="${CPU_SERVER[$workers,$wl]:-} $(awk -v t=$((t1 - t0)) -v hz="$HZ" -v d="$DURATION" \
      'BEGIN { printf "%.2f", t / hz / d }')"
    CPU_CLIENT[$workers,$wl]="${CPU_CLIENT[$workers,$wl]:-} $(awk -v d="$DURATION" \
      '{ printf "%.2f", ($1 + $2) / d }' "$WORK/client.cpu")"
  done
  kill -TERM "$pid"; wait "$pid" || true
}

for round in $(seq 1 "$ROUNDS"); do
  run_setting 1 "$round"
  run_setting 2 "$round"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.2f", (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "enforcer dns --workers 2 vs --workers 1 $(date -u +%FT%TZ): ${DURATION}s per workload, ${ROUNDS} alternating rounds,"
echo "dnsperf -c 16 -q 400 on the same 2-core machine ($([ "$PIN" = 1 ] && echo "dnsperf pinned to core $CLIENT_CPU" || echo "no pinning")); blocklist = shipped + ${FEED_NAMES} feed names."
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s | %12s | %12s | %6s | %-22s | %-22s | %s\n" workload "1 worker qps" "2 workers qps" ratio \
  "cores: server 1w / 2w" "cores: dnsperf 1w / 2w" "all rounds (1 | 2)"
for wl in blocked cached mix; do
  one=$(echo "${RESULTS[1,$wl]}" | median); two=$(echo "${RESULTS[2,$wl]}" | median)
  printf "%-8s | %12s | %12s | %6s | %-22s | %-22s | %s |%s\n" "$wl" "$one" "$two" \
    "$(awk -v a="$two" -v b="$one" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')" \
    "$(echo "${CPU_SERVER[1,$wl]}" | median) / $(echo "${CPU_SERVER[2,$wl]}" | median)" \
    "$(echo "${CPU_CLIENT[1,$wl]}" | median) / $(echo "${CPU_CLIENT[2,$wl]}" | median)" \
    "${RESULTS[1,$wl]}" "${RESULTS[2,$wl]}"
done
