#!/usr/bin/env python3
"""Time numpy's equivalent of the harness's compare on the benchmark data.

The data is what the Rust benchmarks use: target/bench-data/{a,e}_<n>.npy (written by
`cargo bench -p harness --bench compare`; --data DIR or $HARNESS_BENCH_DATA elsewhere). For each
size it times what a hand-written compare script does -- np.allclose, max |a - e|, cosine and
NMSE, written the usual way -- and prints one JSON object with every run and the median.

The harness computes more in its one pass (mismatch count and first index, mean abs, max rel,
NaN/Inf counts); numpy is timed on the four quantities only, in float32 like the data.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ATOL, RTOL = 1e-4, 1e-3
SIZES = [1 << 24, 1 << 26, 1 << 28]


def numpy_compare(a, e):
    ok = np.allclose(a, e, rtol=RTOL, atol=ATOL)
    max_abs = np.abs(a - e).max()
    cosine = np.dot(a, e) / (np.linalg.norm(a) * np.linalg.norm(e))
    nmse = np.sum((a - e) ** 2) / np.sum(e**2)
    return bool(ok), float(max_abs), float(cosine), float(nmse)


def main():
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("HARNESS_BENCH_DATA", root / "target/bench-data")))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="*", default=SIZES)
    args = p.parse_args()
    out = {"numpy": np.__version__, "runs": args.runs, "sizes": {}}
    for n in args.sizes:
        a = np.load(args.data / f"a_{n}.npy")
        e = np.load(args.data / f"e_{n}.npy")
        numpy_compare(a, e)  # warm-up: page in, first-call costs
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            result = numpy_compare(a, e)
            times.append(time.perf_counter() - t)
        out["sizes"][str(n)] = {"median_s": statistics.median(times), "times_s": times, "result": result}
        del a, e
    print(json.dumps(out))


if __name__ == "__main__":
    main()
