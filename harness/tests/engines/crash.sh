#!/bin/sh
# Test engine that fails like a real one: some output, then an error on stderr and exit 1.
echo "loading $1"
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25; do
  echo "trace line $i" >&2
done
echo "error: unsupported tensor type q4_k in blk.0.attn_q" >&2
exit 1
