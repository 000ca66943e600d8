#!/bin/sh
# Per-call cost of `record --malloc` probes: a malloc/free loop timed untraced, then traced without
# and with call chains (-g). Each iteration is 2 traced calls (malloc: entry + return probe, free:
# entry probe). Usage (root): bench/malloc_overhead.sh [ITERATIONS]
set -eu
N=${1:-200000}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -O2 -o "$TMP/mallocloop" "$HERE/tests/c/mallocloop.c"
per_iter() { sed -n 's/.* \([0-9.]*\) ns\/iter/\1/p'; }
base=$("$TMP/mallocloop" "$N" | per_iter)
cd "$HERE"
nog=$(python -m kmemleak_offline.cli record --malloc -o "$TMP/a.parquet" -- "$TMP/mallocloop" "$N" | per_iter)
withg=$(python -m kmemleak_offline.cli record --malloc -g -o "$TMP/b.parquet" -- "$TMP/mallocloop" "$N" | per_iter)
python - "$N" "$base" "$nog" "$withg" "$TMP/a.parquet" "$TMP/b.parquet" <<'PY'
import sys
from kmemleak_offline.recording import open_recording
n, base, nog, withg = int(sys.argv[1]), *map(float, sys.argv[2:5])
for what, path in (("no -g", sys.argv[5]), ("-g", sys.argv[6])):
    c = open_recording(path).metadata["counts"]
    got = sum(v["samples"] for v in c.values())
    lost = sum(v["lost"] for v in c.values())
    print(f"recorded ({what}): {got} samples + {lost} lost (the loop alone makes 3 x {n} = {3 * n})")
print(f"untraced:          {base:8.1f} ns per malloc+free")
for what, v in (("traced, no -g", nog), ("traced, -g", withg)):
    print(f"{what + ':':18} {v:8.1f} ns per malloc+free  -> +{(v - base) / 2:7.1f} ns per call "
          f"({v / base:.0f}x)")
PY
