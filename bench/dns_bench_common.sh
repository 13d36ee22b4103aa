# Shared by bench/dns_bench.sh and bench/dns_workers_bench.sh (sourced; expects $PY set).
#   require_tools TOOL...   exit with a message when one is missing; sets $DNSMASQ
#   start_workdir PREFIX    $WORK (a temp folder) and $PIDS, both cleaned up on exit
#   wait_port PORT          wait until a DNS server answers on 127.0.0.1:PORT (30 s at most)

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "missing tool: $tool" >&2; exit 1; }
  done
  DNSMASQ="$(command -v dnsmasq || echo /usr/sbin/dnsmasq)"
}

start_workdir() {
  WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
  PIDS=()
  trap _bench_cleanup EXIT
}

_bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

wait_port() {
  for _ in $(seq 1 150); do
    if "$PY" - "$1" <<'PYEOF' 2>/dev/null; then return 0; fi
import sys, dns.message, dns.query
dns.query.udp(dns.message.make_query("ready.bench.example", "A"), "127.0.0.1", port=int(sys.argv[1]), timeout=0.5)
PYEOF
    sleep 0.2
  done
  echo "server on port $1 did not start" >&2; return 1
}
