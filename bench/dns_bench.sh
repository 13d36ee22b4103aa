#!/usr/bin/env bash
# DNS resolver benchmark: dnsperf against `enforcer dns` and against dnsmasq with the same blocklist, in one run.
#
#   bench/dns_bench.sh                     # 15 s per workload
#   DURATION=10 FEED_NAMES=100000 bench/dns_bench.sh
#   SOAK=300 bench/dns_bench.sh            # + a 5-minute memory soak of enforcer dns (RSS sampled every 30 s)
#
# Layout: the server under test is pinned to core $SERVER_CPU (taskset), dnsperf to $CLIENT_CPU; a dnsmasq that
# answers every name (address=/#/192.0.2.1) serves as the local upstream for cache misses (on the client core).
# Both servers get the same blocklist: the shipped lists + a synthetic include feed of $FEED_NAMES names; dnsmasq
# loads it through `enforcer export --format dnsmasq --mode null`; enforcer runs with events and metrics on.
# Workloads: 100 % blocked, 100 % cached allowed (warmed first), 10/90 blocked/cached mix, 100 % cache misses;
# then blocked and cached paced at $PACED_QPS qps with per-query latencies (dnsperf -v) for p50/p99.
# Both servers run at the same time (pinned to the same core); each workload runs against enforcer and then at once
# against dnsmasq, so the load other users put on the machine drifts as little as possible between the two.
# Output: qps, average latency and server CPU time per query (from /proc/PID/stat; robust when dnsperf or a noisy
# neighbour is the limit), ratios to dnsmasq, p50/p99 at the paced rate, RSS before/after.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-15}"
FEED_NAMES="${FEED_NAMES:-100000}"
PACED_QPS="${PACED_QPS:-5000}"
PACED_SECONDS="${PACED_SECONDS:-8}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
SOAK="${SOAK:-0}"
EVENTS="${EVENTS:-1}"  # EVENTS=0 runs enforcer without --events (to see what hit events cost)
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"
UP_PORT=$BASE_PORT
ENF_PORT=$((BASE_PORT + 1))
DM_PORT=$((BASE_PORT + 2))
METRICS_PORT=$((BASE_PORT + 3))

# shellcheck source=bench/dns_bench_common.sh
source "$ROOT/bench/dns_bench_common.sh"
require_tools dnsperf dnsmasq taskset
start_workdir dns-bench

miss_names=$(( DURATION * 60000 ))
"$PY" "$ROOT/bench/dns_bench_data.py" make "$WORK" --feed-names "$FEED_NAMES" --miss-names "$miss_names" >&2
"$PY" -m enforcer export --format dnsmasq --mode null --blocklist "$WORK/blocklists" --output "$WORK/dnsmasq-block.conf"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
perf() {  # perf PORT FILE SECONDS [extra dnsperf args...] -> dnsperf report on stdout
  local port=$1 file=$2 secs=$3; shift 3
  taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$secs" -c 4 -q 200 -t 2 "$@" 2>&1
}

# The local upstream for cache misses.
taskset -c "$CLIENT_CPU" "$DNSMASQ" -k --port "$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --pid-file= --address=/#/192.0.2.1 --local-ttl=3600 --cache-size=0 --user=root \
  --log-facility=/dev/null &
PIDS+=($!)
wait_port "$UP_PORT"

declare -A QPS AVG P50 P99 RSS0 RSS1 LOST CPU

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime of all threads, in clock ticks
HZ=$(getconf CLK_TCK)

measure() {  # measure NAME PORT PID WORKLOAD: one saturation run, qps / avg / lost and CPU µs per answered query
  local name=$1 port=$2 pid=$3 wl=$4 out="$WORK/$1-$4.out" c0 c1 q a l
  c0=$(cpu_ticks "$pid")
  perf "$port" "$WORK/$wl.txt" "$DURATION" >"$out"
  c1=$(cpu_ticks "$pid")
  read -r q a l < <("$PY" "$ROOT/bench/dns_bench_data.py" summary "$out")
  QPS[$name,$wl]=$q; AVG[$name,$wl]=$a; LOST[$name,$wl]=$l
  CPU[$name,$wl]=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v q="$q" -v d="$DURATION" \
    'BEGIN { if (q > 0) printf "%.1f", t / hz * 1e6 / (q * d); else print "n/a" }')
}

paced() {  # paced NAME PORT WORKLOAD: p50/p99 from per-query latencies at $PACED_QPS
  local name=$1 port=$2 wl=$3 out="$WORK/$1-$3-paced.out" p50 p99 _n
  perf "$port" "$WORK/$wl.txt" "$PACED_SECONDS" -Q "$PACED_QPS" -v >"$out"
  read -r p50 p99 _n < <("$PY" "$ROOT/bench/dns_bench_data.py" latency "$out")
  P50[$name,$wl]=$p50; P99[$name,$wl]=$p99
}

# --- both servers up at once; each workload runs against enforcer, then at once against dnsmasq ------------------
# (back to back, so that load from other users of the machine drifts as little as possible between the two)
EVENT_ARGS=()
[ "$EVENTS" = 1 ] && EVENT_ARGS=(--events "$WORK/events.jsonl")
taskset -c "$SERVER_CPU" "$PY" -m enforcer dns --listen "127.0.0.1:$ENF_PORT" --upstream "127.0.0.1:$UP_PORT" \
  --blocklist "$WORK/blocklists" --mode null "${EVENT_ARGS[@]}" --metrics "127.0.0.1:$METRICS_PORT" \
  >"$WORK/enforcer.out" 2>"$WORK/enforcer.err" &
ENF_PID=$!
PIDS+=($ENF_PID)
taskset -c "$SERVER_CPU" "$DNSMASQ" -k --port "$DM_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --pid-file= --server="127.0.0.1#$UP_PORT" --conf-file="$WORK/dnsmasq-block.conf" --cache-size=10000 \
  --user=root --log-facility=/dev/null &
DM_PID=$!
PIDS+=($DM_PID)
wait_port "$ENF_PORT"
wait_port "$DM_PORT"
RSS0[enforcer]=$(rss_kb "$ENF_PID"); RSS0[dnsmasq]=$(rss_kb "$DM_PID")
for port in "$ENF_PORT" "$DM_PORT"; do perf "$port" "$WORK/cached.txt" 30 -n 1 >/dev/null; done  # warm the caches
for wl in blocked cached mix miss; do
  measure enforcer "$ENF_PORT" "$ENF_PID" "$wl"
  measure dnsmasq "$DM_PORT" "$DM_PID" "$wl"
done
for wl in blocked cached; do
  paced enforcer "$ENF_PORT" "$wl"
  paced dnsmasq "$DM_PORT" "$wl"
done
RSS1[enforcer]=$(rss_kb "$ENF_PID"); RSS1[dnsmasq]=$(rss_kb "$DM_PID")

if [ "$SOAK" -gt 0 ]; then
  echo "soak: ${SOAK}s of mixed + miss traffic against enforcer dns, RSS every 30 s (KiB):" >&2
  end=$(( $(date +%s) + SOAK ))
  i=0
  while [ "$(date +%s)" -lt "$end" ]; do
    if (( i % 2 )); then f="$WORK/miss.txt"; else f="$WORK/mix.txt"; fi
    perf "$ENF_PORT" "$f" 30 >/dev/null
    echo "  t=$(( (i + 1) * 30 ))s rss=$(rss_kb "$ENF_PID") cache_entries=$(curl -s "127.0.0.1:$METRICS_PORT/metrics" \
      | awk '/^enforcer_dns_cache_entries/ {print $2}')" >&2
    i=$((i + 1))
  done
fi
events=$(cat "$WORK"/events.jsonl* 2>/dev/null | wc -l)  # the writer rotates at 64 MiB
dropped=$(curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk '/^enforcer_events_dropped_total/ {print $2}')
kill -TERM "$ENF_PID" "$DM_PID"; wait "$ENF_PID" "$DM_PID" || true

# --- report ---------------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "DNS benchmark $(date -u +%FT%TZ): ${DURATION}s per workload, blocklist = shipped + ${FEED_NAMES} feed names,"
echo "server on CPU $SERVER_CPU, dnsperf (-c 4 -q 200) on CPU $CLIENT_CPU; enforcer metrics on, events=$EVENTS."
printf "%-9s | %12s %8s %8s | %12s %8s %8s | %9s %9s\n" workload "enforcer qps" "avg ms" "cpu us/q" \
  "dnsmasq qps" "avg ms" "cpu us/q" "qps ratio" "cpu ratio"
for wl in blocked cached mix miss; do
  printf "%-9s | %12s %8s %8s | %12s %8s %8s | %9s %9s\n" "$wl" "${QPS[enforcer,$wl]}" "${AVG[enforcer,$wl]}" \
    "${CPU[enforcer,$wl]}" "${QPS[dnsmasq,$wl]}" "${AVG[dnsmasq,$wl]}" "${CPU[dnsmasq,$wl]}" \
    "$(ratio "${QPS[enforcer,$wl]}" "${QPS[dnsmasq,$wl]}")" "$(ratio "${CPU[dnsmasq,$wl]}" "${CPU[enforcer,$wl]}")"
done
echo "(qps ratio = enforcer/dnsmasq; cpu ratio = dnsmasq CPU per query / enforcer CPU per query: both 1.0 = parity)"
echo
printf "paced at %s qps  | %-22s | %-22s\n" "$PACED_QPS" "enforcer p50 / p99 ms" "dnsmasq p50 / p99 ms"
for wl in blocked cached; do
  printf "%-17s | %22s | %22s\n" "$wl" "${P50[enforcer,$wl]} / ${P99[enforcer,$wl]}" \
    "${P50[dnsmasq,$wl]} / ${P99[dnsmasq,$wl]}"
done
echo
echo "RSS KiB before -> after: enforcer ${RSS0[enforcer]} -> ${RSS1[enforcer]}; dnsmasq ${RSS0[dnsmasq]} -> ${RSS1[dnsmasq]}"
echo "enforcer hit events written: $events (dropped: ${dropped:-?}); queries lost (enforcer/dnsmasq):" \
  "$(for wl in blocked cached mix miss; do printf '%s %s/%s  ' "$wl" "${LOST[enforcer,$wl]}" "${LOST[dnsmasq,$wl]}"; done)"
