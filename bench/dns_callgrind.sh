#!/usr/bin/env bash
# Instructions per query of the resolver chain (valgrind callgrind; deterministic, whatever the machine's load).
#
#   bench/dns_callgrind.sh [TREE]          # TREE: a source tree to measure (default: this one), e.g. a worktree
#   N=4000 bench/dns_callgrind.sh
#
# Runs bench/dns_chain_bench.py --once under callgrind for N queries and for 0, blocked with events written to a file,
# blocked without events, and cached, and prints (Collected(N) - Collected(0)) / N for each.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
TREE="${1:-$ROOT}"
N="${N:-4000}"
command -v valgrind >/dev/null || { echo "missing tool: valgrind" >&2; exit 1; }
WORK="$(mktemp -d /tmp/dns-callgrind.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# A fixed hash seed: with random ones, dict probing in the policy and the memos moves the counts by a few per cent
# from run to run of the same tree.
export PYTHONHASHSEED="${PYTHONHASHSEED:-0}"
collected() {  # collected KIND COUNT [--events FILE] -> total instructions
  (cd "$TREE" && valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$PY" "$ROOT/bench/dns_chain_bench.py" \
    --once "$1" --queries "$2" "${@:3}" 2>&1 >/dev/null | awk '/Collected/ {print $NF}')
}
for case in "blocked --events $WORK/ev.jsonl" "blocked" "cached"; do
  read -r kind extra <<<"$case"
  # shellcheck disable=SC2086
  a=$(collected "$kind" "$N" $extra); rm -f "$WORK"/ev.jsonl*
  # shellcheck disable=SC2086
  b=$(collected "$kind" 0 $extra); rm -f "$WORK"/ev.jsonl*
  printf "%-8s %-12s %8d instructions/query\n" "$kind" "$([ -n "$extra" ] && echo events-on || echo events-off)" \
    $(( (a - b) / N ))
done
