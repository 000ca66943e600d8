#!/usr/bin/env bash
# Same kmalloc/kfree workload recorded by `kmemleak-offline record` and by `perf record`
# (same -m, same events, kernel call chains only), side by side: events, lost %, recorder CPU s.
# Ours is two processes: the drain process (spools ring bytes) and the converter it forks (spool ->
# Parquet, niced); "CPU s" is both, as /usr/bin/time sees them, and the drain process alone is
# shown too. perf record does no conversion (perf report/script do it later).
# Usage (root): bench/record_bench.sh [SECONDS=5] [PAGES=128] [LOAD_PROCS=2]
set -euo pipefail
SECS=${1:-5}; PAGES=${2:-128}; NPROC=${3:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
[ "$(id -u)" = 0 ] || { echo "record_bench.sh: run as root" >&2; exit 2; }
command -v perf >/dev/null || { echo "record_bench.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
python3 -c "import sys; sys.path[:0] = ['$ROOT/bench', '$ROOT']
from _common import machine_lines; print(*machine_lines(), sep='\n')"

cat > "$TMP/load.c" <<'C'
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {           /* NPROC processes: socket()+close() for SECS */
    int n = atoi(argv[1]); double secs = atof(argv[2]);
    for (int p = 0; p < n; p++) if (fork() == 0) {
        struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0;; i++) {
            close(socket(AF_UNIX, SOCK_STREAM, 0));
            if ((i & 1023) == 0) { clock_gettime(CLOCK_MONOTONIC, &t);
                if (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 > secs) _exit(0); }
        }
    }
    while (wait(NULL) > 0) ;
    return 0;
}
C
gcc -O2 -o "$TMP/load" "$TMP/load.c"
LOADSECS=$((SECS + 4))

# ours: kernel count (incl. lost) and PERF_FORMAT_LOST from the recording's metadata
"$TMP/load" "$NPROC" "$LOADSECS" & LP=$!
sleep 1
PY=$(python3 -c 'import sys; print(sys.executable)')  # the interpreter itself: a pyenv shim's bash is not ours
( cd "$ROOT" && /usr/bin/time -f "%U %S" -o "$TMP/ours.time" "$PY" -m kmemleak_offline.cli record \
    --alloc kmem:kmalloc --free kmem:kfree -g -m "$PAGES" --duration "${SECS}s" -o "$TMP/ours.parquet" \
    -v 2>"$TMP/ours.err" )
OURS_CONV=$(awk '/converter process/ {print $(NF-2)}' "$TMP/ours.err")
wait $LP
read -r OURS_EV OURS_LOST < <(python - "$TMP/ours.parquet" <<'PY'
import sys
from kmemleak_offline.format.recording import open_recording
c = open_recording(sys.argv[1]).metadata["counts"]
print(sum(v["samples"] for v in c.values()), sum(v["lost"] for v in c.values()))
PY
)
read -r OU OS < "$TMP/ours.time"

# perf record: samples and LOST totals from `perf report --stats`
"$TMP/load" "$NPROC" "$LOADSECS" & LP=$!
sleep 1
/usr/bin/time -f "%U %S" -o "$TMP/perf.time" perf record -q -a -e kmem:kmalloc -e kmem:kfree -g \
    --kernel-callchains -m "$PAGES" -o "$TMP/perf.data" -- sleep "$SECS" 2>/dev/null
wait $LP
STATS=$(perf report -i "$TMP/perf.data" --stats 2>/dev/null)
PERF_EV=$(awk '/^ *SAMPLE events:/ {print $3; exit}' <<<"$STATS")
PERF_LOST=$(awk '/^ *LOST events:/ {lost=$3} /^ *LOST_SAMPLES events:/ {ls=$3} END {print (lost?0:0)+0}' <<<"$STATS")
PERF_LOST=$(perf report -i "$TMP/perf.data" -D 2>/dev/null | awk '/PERF_RECORD_LOST / {for(i=1;i<=NF;i++) if ($i ~ /^lost:/) {split($i,a,":"); s+=a[2]}} END {print s+0}')
read -r PU PS < "$TMP/perf.time"

python - "$OURS_EV" "$OURS_LOST" "$OU" "$OS" "$PERF_EV" "$PERF_LOST" "$PU" "$PS" "$SECS" "$PAGES" \
    "${OURS_CONV:-0}" <<'PY'
import sys
oe, ol, ou, os_, pe, pl, pu, ps, secs, pages, conv = sys.argv[1:]
ours = float(ou) + float(os_)
rows = [("kmemleak-offline record", int(oe), int(ol), ours, f"{ours - float(conv):.2f}"),
        ("perf record", int(pe or 0), int(pl or 0), float(pu) + float(ps), "")]
print(f"kmalloc+kfree, kernel call chains, -m {pages}, {secs}s, same load")
print(f"{'recorder':<26}{'events':>12}{'lost':>10}{'lost %':>9}{'CPU s':>8}{'us/event':>10}"
      f"{'drain proc CPU s':>18}")
for name, ev, lost, cpu, drain in rows:
    pct = 100.0 * lost / max(1, ev + lost)
    print(f"{name:<26}{ev:>12}{lost:>10}{pct:>8.2f}%{cpu:>8.2f}{1e6 * cpu / max(1, ev):>10.2f}{drain:>18}")
print(f"CPU ratio ours/perf: {ours / max(1e-9, float(pu) + float(ps)):.2f}x total, "
      f"{(ours / max(1, int(oe))) / max(1e-12, (float(pu) + float(ps)) / max(1, int(pe or 0))):.2f}x per event")
PY
