#!/usr/bin/env bash
# Every benchmark, one after the other; each prints its own figures as ratios to a peer measured in the same run
# (bench/README.md, figures in docs/performance.md). About 45 minutes on the 2-core test machine (the proxy's
# instruction counts under valgrind take 25 of them: SKIP=proxy-callgrind leaves them out); check `uptime` first:
# on a loaded machine only the same-run ratios and the CPU (or instruction) counts per query mean anything.
#
#   bench/run_all.sh                          # everything below, output also in $OUT (default /tmp/enforcer-bench-all)
#   BASE=/tmp/wt-base bench/run_all.sh        # + bench/dns_ab.sh: this tree against a worktree of another commit
#   SKIP="proxy analyst" bench/run_all.sh     # leave some out (names as in the == headings)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
OUT="${OUT:-/tmp/enforcer-bench-all}"
mkdir -p "$OUT"
SKIP=" ${SKIP:-} "
step() {  # step NAME COMMAND...: run unless skipped, tee its output to $OUT/NAME.txt
  local name=$1; shift
  case "$SKIP" in *" $name "*) echo "== $name: skipped"; return 0 ;; esac
  echo "== $name ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)): $*"
  "$@" 2>&1 | tee "$OUT/$name.txt"
}
step policy "$py" bench/policy_bench.py --json "$OUT/policy.json"
step chain "$py" bench/dns_chain_bench.py
step dns bash bench/dns_bench.sh
if [ -n "${BASE:-}" ]; then step dns-ab env BASE="$BASE" bash bench/dns_ab.sh; fi
step workers bash bench/dns_workers_bench.sh
step workers-pinned env PIN=1 bash bench/dns_workers_bench.sh
step proxy "$py" bench/proxy_bench.py
step proxy-callgrind "$py" bench/proxy_callgrind.py --requests 2400 --variants bare,addon
step analyst "$py" bench/analyst_bench.py
echo "== done: $OUT"
