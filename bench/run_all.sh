#!/usr/bin/env bash
# Every benchmark, one after the other (each prints its own figures and ratios); see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
echo "== policy";  $py bench/policy_bench.py
echo "== dns";     bash bench/dns_bench.sh
echo "== dns workers"; bash bench/dns_workers_bench.sh
echo "== proxy";   $py bench/proxy_bench.py
echo "== analyst"; $py bench/analyst_bench.py
