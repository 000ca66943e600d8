#!/usr/bin/env bash
# `kmemleak-offline record` against `perf record` on the same load, one after the other: CPU per
# event during the load and to exit, losses, conversion us/event, start-up time, machine and
# spread of several runs. See bench/record_bench.py for what is measured and how.
# Usage (root): bench/record_bench.sh [SECONDS=5] [PAGES=128] [LOAD_PROCS=2] [REPEAT=3]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "record_bench.sh: run as root" >&2; exit 2; }
command -v perf >/dev/null || { echo "record_bench.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
PY=$(python3 -c 'import sys; print(sys.executable)')  # the interpreter itself, not a pyenv shim
exec "$PY" "$ROOT/bench/record_bench.py" --seconds "${1:-5}" --pages "${2:-128}" --procs "${3:-2}" \
    --repeat "${4:-3}"
