#!/usr/bin/env python3
"""Time the onnxruntime engine per forward: persistent (protocol 2, one process, many forwards)
against one process per forward (protocol 1), wall time per request as the harness sees it.

    tools/.venv/bin/python tools/adapters/ort_bench.py bert/tiny-2l llama/mha [-n 20] [--options '{...}']

v1: per request, write request.json and run `python ort_engine.py request.json` to its exit
(process start, imports, session creation from the cached export, forward, writing .npy). v2: one
process; `load` once (reported apart), then `forward` requests: request line to response line.
Run once beforehand so the exports are cached (else the first load exports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ort_compare as oc


def taps_of(case) -> list[dict]:
    names = [t["hf"] for t in oc.golden_taps(case) if t["hf"] != "similarity"]
    return [{"hf": n, "engine": None} for n in names]


def bench_v2(case, n: int, options: dict) -> dict:
    eng = oc.V2Engine([str(oc.PYTHON), str(oc.ENGINE)], stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        r = eng.request("load", protocol=2, engine="onnxruntime", model=oc.model_request(case), options=options)
        start_load = time.perf_counter() - t0
        if not r.get("ok"):
            raise RuntimeError(r)
        times = []
        with tempfile.TemporaryDirectory() as d:
            spec = oc.write_inputs(Path(d), oc.case_inputs(case))
            taps = taps_of(case)
            for i in range(n):
                t0 = time.perf_counter()
                r = eng.request("forward", case=case.id, inputs=spec, taps=taps, output_dir=str(Path(d) / f"out{i}"), options=options)
                times.append(time.perf_counter() - t0)
                if not r.get("ok"):
                    raise RuntimeError(r)
    finally:
        eng.close()
    return {"start_and_load_s": start_load, "forward_s": times}


def bench_v1(case, n: int, options: dict) -> dict:
    times = []
    env = dict(os.environ, HARNESS_ORT_OPTIONS=json.dumps(options))
    env.pop("HARNESS_PROTOCOL", None)
    m = oc.model_request(case)
    m["family"] = m.pop("class")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        spec = oc.write_inputs(d, oc.case_inputs(case))
        spec.pop("position_ids")
        for v in spec.values():
            v["file"] = Path(v["file"]).name
        for i in range(n):
            out = d / f"out{i}"
            out.mkdir()
            req = {"protocol": 1, "engine": "onnxruntime", "model": m, "inputs": spec, "taps": taps_of(case), "output_dir": str(out), "dtype": "float32"}
            (d / "request.json").write_text(json.dumps(req))
            t0 = time.perf_counter()
            p = subprocess.run([str(oc.PYTHON), str(oc.ENGINE), str(d / "request.json")], cwd=oc.ROOT, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-2000:])
    return {"request_s": times}


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="+")
    ap.add_argument("-n", type=int, default=20, help="forwards per mode")
    ap.add_argument("--options", type=json.loads, default={"graph": "taps"})
    args = ap.parse_args()
    results = {}
    for case in oc.selected_cases(args.cases):
        v2 = bench_v2(case, args.n, args.options)
        v1 = bench_v1(case, max(3, args.n // 4), args.options)
        results[case.id] = {"v2": v2, "v1": v1}
        print(
            f"{case.id}: v2 start+load {v2['start_and_load_s'] * 1000:.0f} ms, forward {ms(v2['forward_s'])}; "
            f"v1 per request {ms(v1['request_s'])}; ratio {statistics.median(v1['request_s']) / statistics.median(v2['forward_s']):.0f}x",
            flush=True,
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
