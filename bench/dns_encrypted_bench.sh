#!/usr/bin/env bash
# Encrypted DNS benchmark: dnsperf -m dot and -m doh against `enforcer dns`, Unbound (tls-port, https-port) and
# dnsdist (addTLSLocal, addDOHLocal) in one run, same upstream, same blocklist; TLS handshakes per second
# (openssl s_time -new) beside Unbound's; RSS of enforcer holding $IDLE idle DoT connections.
#
#   bench/dns_encrypted_bench.sh                      # 10 s per workload, 20k feed names, 10,000 idle connections
#   DURATION=20 FEED_NAMES=100000 IDLE=10000 bench/dns_encrypted_bench.sh
#   ROUNDS=3 DURATION=5 IDLE=0 bench/dns_encrypted_bench.sh   # 3 rounds of every workload, medians; no idle test
#
# Layout: every server is pinned to core $SERVER_CPU (one core each, as the issue's targets are "on one core"),
# dnsperf/openssl/the idle client to $CLIENT_CPU. The upstream for cache misses is a dnsmasq answering every name.
# Blocklist: the shipped lists + a synthetic feed of $FEED_NAMES names (bench/dns_bench_data.py); Unbound gets it as
# local-zones (`enforcer export --format unbound --mode null`), dnsdist as a SuffixMatchNode spoofing 0.0.0.0 (the
# `domains` export). Workloads: 100 % blocked names and 100 % cached allowed names (warmed first), each for DoT and
# DoH (POST, HTTP/2), dnsperf -c 4 -q 200 (4 connections, 200 queries in flight). With ROUNDS > 1 the servers take
# turns within each round and the table shows each figure's median over the rounds (every round is printed too).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-10}"
FEED_NAMES="${FEED_NAMES:-20000}"
IDLE="${IDLE:-10000}"
ROUNDS="${ROUNDS:-1}"
HANDSHAKE_SECONDS="${HANDSHAKE_SECONDS:-8}"
SERVER_CPU="${SERVER_CPU:-0}"
CLIENT_CPU="${CLIENT_CPU:-1}"
BASE_PORT="${BASE_PORT:-$((20000 + RANDOM % 20000))}"
UP_PORT=$BASE_PORT
ENF_PORT=$((BASE_PORT + 1)); ENF_DOT=$((BASE_PORT + 2)); ENF_DOH=$((BASE_PORT + 3)); ENF_METRICS=$((BASE_PORT + 4))
UB_DOT=$((BASE_PORT + 5)); UB_DOH=$((BASE_PORT + 6)); UB_PORT=$((BASE_PORT + 7))
DD_PORT=$((BASE_PORT + 8)); DD_DOT=$((BASE_PORT + 9)); DD_DOH=$((BASE_PORT + 10))

# shellcheck source=bench/dns_bench_common.sh
source "$ROOT/bench/dns_bench_common.sh"
require_tools dnsperf dnsmasq unbound dnsdist openssl taskset
start_workdir dns-enc-bench
ulimit -n "$(ulimit -Hn)"  # the idle-connection measure needs $IDLE descriptors on both sides

"$PY" "$ROOT/bench/dns_bench_data.py" make "$WORK" --feed-names "$FEED_NAMES" --miss-names 1000 >&2
"$PY" -m enforcer export --format unbound --mode null --blocklist "$WORK/blocklists" --output "$WORK/unbound-block.conf"
"$PY" -m enforcer export --format domains --blocklist "$WORK/blocklists" --output "$WORK/domains.txt"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=dns.bench.test" \
  -addext "subjectAltName=DNS:dns.bench.test,IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

taskset -c "$CLIENT_CPU" "$DNSMASQ" -k --port "$UP_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
  --no-hosts --pid-file= --address=/#/192.0.2.1 --local-ttl=3600 --cache-size=0 --user=root \
  --log-facility=/dev/null &
PIDS+=($!)
wait_port "$UP_PORT"

# --- enforcer ---------------------------------------------------------------------------------------------------
taskset -c "$SERVER_CPU" "$PY" -m enforcer dns --listen "127.0.0.1:$ENF_PORT" --upstream "127.0.0.1:$UP_PORT" \
  --blocklist "$WORK/blocklists" --mode null --events "$WORK/events.jsonl" --metrics "127.0.0.1:$ENF_METRICS" \
  --dot "127.0.0.1:$ENF_DOT" --doh "127.0.0.1:$ENF_DOH" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
  --tls-max-per-source $((IDLE + 100)) --tls-max-connections $((IDLE + 100)) --tls-idle-timeout 600 \
  >"$WORK/enforcer.out" 2>"$WORK/enforcer.err" &
ENF_PID=$!
PIDS+=($ENF_PID)

# --- unbound ----------------------------------------------------------------------------------------------------
cat >"$WORK/unbound.conf" <<EOF
server:
  interface: 127.0.0.1@$UB_PORT
  interface: 127.0.0.1@$UB_DOT
  interface: 127.0.0.1@$UB_DOH
  tls-port: $UB_DOT
  https-port: $UB_DOH
  tls-service-key: "$WORK/key.pem"
  tls-service-pem: "$WORK/cert.pem"
  http-endpoint: "/dns-query"
  num-threads: 1
  so-reuseport: no
  do-daemonize: no
  use-syslog: no
  logfile: ""
  verbosity: 0
  username: ""
  chroot: ""
  directory: "$WORK"
  pidfile: ""
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  incoming-num-tcp: 1000
  msg-cache-size: 64m
  rrset-cache-size: 64m
  include: "$WORK/unbound-block.conf"
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$UP_PORT
EOF
taskset -c "$SERVER_CPU" unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
UB_PID=$!
PIDS+=($UB_PID)

# --- dnsdist ----------------------------------------------------------------------------------------------------
cat >"$WORK/dnsdist.conf" <<EOF
setLocal("127.0.0.1:$DD_PORT")
addTLSLocal("127.0.0.1:$DD_DOT", "$WORK/cert.pem", "$WORK/key.pem")
addDOHLocal("127.0.0.1:$DD_DOH", "$WORK/cert.pem", "$WORK/key.pem", "/dns-query")
newServer({address="127.0.0.1:$UP_PORT"})
setSecurityPollSuffix("")
blocked = newSuffixMatchNode()
for line in io.lines("$WORK/domains.txt") do
  if line ~= "" and line:sub(1, 1) ~= "#" then blocked:add(newDNSName(line)) end
end
addAction(SuffixMatchNodeRule(blocked), SpoofAction({"0.0.0.0", "::"}))
pc = newPacketCache(100000)
getPool(""):setCache(pc)
EOF
taskset -c "$SERVER_CPU" dnsdist --supervised --disable-syslog -C "$WORK/dnsdist.conf" >"$WORK/dnsdist.log" 2>&1 &
DD_PID=$!
PIDS+=($DD_PID)

wait_port "$ENF_PORT"; wait_port "$UB_PORT"; wait_port "$DD_PORT"
declare -A QPS CPU LOST

perf() {  # perf NAME MODE PORT WORKLOAD SECONDS
  local mode=$2 port=$3 wl=$4 secs=$5 extra=()
  [ "$mode" = doh ] && extra=(-O "doh-uri=https://127.0.0.1:$port/dns-query" -O doh-method=POST)
  taskset -c "$CLIENT_CPU" dnsperf -m "$mode" -s 127.0.0.1 -p "$port" -d "$WORK/$wl.txt" -l "$secs" -c 4 -q 200 -t 3 \
    "${extra[@]}" 2>&1
}
measure() {  # measure NAME PID MODE PORT WORKLOAD ROUND
  local name=$1 pid=$2 mode=$3 port=$4 wl=$5 r=$6 out="$WORK/$1-$3-$5-$6.out" c0 c1 q a l cpu
  c0=$(cpu_ticks "$pid")
  perf "$name" "$mode" "$port" "$wl" "$DURATION" >"$out"
  c1=$(cpu_ticks "$pid")
  read -r q a l < <("$PY" "$ROOT/bench/dns_bench_data.py" summary "$out")
  cpu=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v q="$q" -v d="$DURATION" \
    'BEGIN { if (q > 0) printf "%.1f", t / hz * 1e6 / (q * d); else print "n/a" }')
  QPS[$name,$mode,$wl]="${QPS[$name,$mode,$wl]:-} $q"; CPU[$name,$mode,$wl]="${CPU[$name,$mode,$wl]:-} $cpu"
  LOST[$name,$mode,$wl]=$(( ${LOST[$name,$mode,$wl]:-0} + l ))
  echo "round $r: $name $mode $wl: $q qps, $cpu us/q, $l lost" >&2
}
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {
  if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for spec in "enforcer $ENF_PID $ENF_DOT $ENF_DOH" "unbound $UB_PID $UB_DOT $UB_DOH" "dnsdist $DD_PID $DD_DOT $DD_DOH"; do
  read -r name pid dot doh <<<"$spec"
  perf "$name" dot "$dot" cached 3 >/dev/null  # warm the caches
done
for r in $(seq 1 "$ROUNDS"); do
  for wl in blocked cached; do
    for mode in dot doh; do
      measure enforcer "$ENF_PID" "$mode" "$( [ $mode = dot ] && echo $ENF_DOT || echo $ENF_DOH )" "$wl" "$r"
      measure unbound "$UB_PID" "$mode" "$( [ $mode = dot ] && echo $UB_DOT || echo $UB_DOH )" "$wl" "$r"
      measure dnsdist "$DD_PID" "$mode" "$( [ $mode = dot ] && echo $DD_DOT || echo $DD_DOH )" "$wl" "$r"
    done
  done
done
for key in "${!QPS[@]}"; do  # each figure's median over the rounds
  QPS[$key]=$(echo "${QPS[$key]}" | median); CPU[$key]=$(echo "${CPU[$key]}" | median)
done

# --- TLS handshakes per second (full handshakes, no resumption) ---------------------------------------------------
handshakes() {  # handshakes PORT ALPN -> connections per second
  taskset -c "$CLIENT_CPU" openssl s_time -connect "127.0.0.1:$1" -new -time "$HANDSHAKE_SECONDS" 2>/dev/null \
    | awk '/connections in [0-9.]+ real seconds/ {for (i = 1; i <= NF; i++) if ($i == "in") {print $1 / $(i + 1); exit}}'
}
HS_ENF=$(handshakes "$ENF_DOT"); HS_UB=$(handshakes "$UB_DOT"); HS_DD=$(handshakes "$DD_DOT")
HSH_ENF=$(handshakes "$ENF_DOH"); HSH_UB=$(handshakes "$UB_DOH"); HSH_DD=$(handshakes "$DD_DOH")

# --- idle DoT connections ---------------------------------------------------------------------------------------
RSS_BEFORE=$(rss_kb "$ENF_PID"); RSS_IDLE=$RSS_BEFORE; OPEN_IDLE=0; echo "not run (IDLE=0)" >"$WORK/idle.out"
if [ "$IDLE" -gt 0 ]; then
taskset -c "$CLIENT_CPU" "$PY" - "$ENF_DOT" "$IDLE" "$WORK/idle.ready" >"$WORK/idle.out" 2>&1 <<'PYEOF' &
import asyncio, ssl, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def main():
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    conns, sem, t0 = [], asyncio.Semaphore(64), time.monotonic()
    async def one():
        async with sem:
            conns.append(await asyncio.open_connection("127.0.0.1", port, ssl=ctx))
    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    failed = sum(isinstance(r, BaseException) for r in results)
    print(f"opened {len(conns)} TLS connections ({failed} failed) in {time.monotonic() - t0:.1f} s", flush=True)
    open(ready, "w").close()
    await asyncio.sleep(3600)
asyncio.run(main())
PYEOF
IDLE_PID=$!
PIDS+=($IDLE_PID)
for _ in $(seq 1 600); do [ -e "$WORK/idle.ready" ] && break; sleep 1; done
sleep 2
RSS_IDLE=$(rss_kb "$ENF_PID")
OPEN_IDLE=$(curl -s "127.0.0.1:$ENF_METRICS/metrics" | awk '/^enforcer_dns_encrypted_connections_open\{transport="dot"\}/ {print $2}')
kill "$IDLE_PID" 2>/dev/null || true
fi
kill -TERM "$ENF_PID" "$UB_PID" "$DD_PID"; wait "$ENF_PID" "$UB_PID" "$DD_PID" 2>/dev/null || true

# --- report -----------------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "Encrypted DNS benchmark $(date -u +%FT%TZ): ${DURATION}s per workload, blocklist = shipped + ${FEED_NAMES} feed"
echo "names; servers on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU; dnsperf -c 4 -q 200; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-13s | %10s %8s | %10s %8s | %10s %8s | %13s\n" workload "enforcer" "cpu us/q" "unbound" "cpu us/q" \
  "dnsdist" "cpu us/q" "enf/unbound"
for wl in blocked cached; do
  for mode in dot doh; do
    printf "%-13s | %10s %8s | %10s %8s | %10s %8s | %13s\n" "$mode $wl" "${QPS[enforcer,$mode,$wl]}" \
      "${CPU[enforcer,$mode,$wl]}" "${QPS[unbound,$mode,$wl]}" "${CPU[unbound,$mode,$wl]}" "${QPS[dnsdist,$mode,$wl]}" \
      "${CPU[dnsdist,$mode,$wl]}" "$(ratio "${QPS[enforcer,$mode,$wl]}" "${QPS[unbound,$mode,$wl]}")"
  done
done
echo "(qps; target: DoT and DoH blocked-name qps >= 0.5 x Unbound's)"
echo "queries lost: $(for k in "${!LOST[@]}"; do printf '%s=%s ' "$k" "${LOST[$k]}"; done)"
echo "TLS handshakes/s (openssl s_time -new, ${HANDSHAKE_SECONDS}s), DoT port: enforcer ${HS_ENF:-n/a}," \
  "unbound ${HS_UB:-n/a}, dnsdist ${HS_DD:-n/a}; DoH port: enforcer ${HSH_ENF:-n/a}, unbound ${HSH_UB:-n/a}," \
  "dnsdist ${HSH_DD:-n/a}"
echo "idle DoT: $(cat "$WORK/idle.out" | head -1); open per /metrics: ${OPEN_IDLE:-?}; enforcer RSS" \
  "$((RSS_BEFORE / 1024)) MiB -> $((RSS_IDLE / 1024)) MiB (target: $IDLE idle connections in <= 300 MB)"
