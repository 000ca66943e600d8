#!/bin/sh
# Recreate the REAL recordings in samples/ (run as root on a Linux box with tracefs):
#   pipe-leak.parquet    kernel: a program holding 100 pipes open, kmem:kmalloc/kmem:kfree -g
#   malloc-leak.parquet  user space: tests/c/leaky.c under `record --malloc -g` (frame pointers)
# The programs are built in a temporary folder that is deleted afterwards, so `analyze` names
# their functions only thanks to the symbols `record` embeds.
# (samples/kmalloc-leak.parquet is synthetic: samples/make_sample.py.)
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$HERE/samples}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -O1 -fno-omit-frame-pointer -o "$TMP/pipes" "$HERE/tests/c/pipes.c"
gcc -O1 -fno-omit-frame-pointer -pthread -o "$TMP/leaky" "$HERE/tests/c/leaky.c"
cd "$HERE"
rm -rf "$OUT/pipe-leak.parquet" "$OUT/malloc-leak.parquet"  # else record keeps them as *.old
python -m kmemleak_offline.cli record --alloc kmem:kmalloc --free kmem:kfree -g --duration 1s \
    -o "$OUT/pipe-leak.parquet" -- "$TMP/pipes" 100 3
python -m kmemleak_offline.cli record --malloc -g -o "$OUT/malloc-leak.parquet" -- "$TMP/leaky"
ls -l "$OUT/pipe-leak.parquet" "$OUT/malloc-leak.parquet"
