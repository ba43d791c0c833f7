#!/usr/bin/env python3
"""Run the performance benchmarks and print the "Benchmarks" table of docs/performance.md.

    tools/.venv/bin/python tools/bench_report.py            # everything, ~35 min
    tools/.venv/bin/python tools/bench_report.py --quick    # fewer samples, ~18 min

It runs, in this order and in one go:
1. `cargo bench -p harness --bench compare` (divan): plain read vs metrics at 16/64/256 Mi
   float32, and loading + comparing a 1 GiB golden vs reading it once (medians of divan's
   samples; the first run generates the data under target/bench-data/, ~3.5 GB);
2. tools/bench_numpy.py on the same files (median of --runs);
3. `cargo bench -p harness --bench peak_memory` (high-water RSS of comparing a 1 GiB tap);
4. the tiny-model suite with `--timings --test-threads 1`, debug (`cargo test`) and release,
   several times (median of the harness's share of wall time);
5. `cargo bench -p harness --bench protocol` (a persistent external engine that computes
   nothing: the harness's cost per forward, and bytes per second read back from it);
6. tools/bench_protocol.py (the onnxruntime suite through protocol 2 and protocol 1, side by
   side; needs tools/adapters/requirements-onnx.txt and the release CLI).
Then it prints the machine, the load average before and after, and the table (markdown).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
SIZES = [1 << 24, 1 << 26, 1 << 28]
ROW = re.compile(r"^([│ ]*)[├╰]─ (\S+)(?:\s+([\d.]+) (ns|µs|us|ms|s)\s+│\s+([\d.]+) (ns|µs|us|ms|s)\s+│\s+([\d.]+) (ns|µs|us|ms|s))?")


def run(cmd, **kw):
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit(f"error: `{' '.join(cmd)}` failed (exit {p.returncode})")
    return p.stdout


def divan_medians(text):
    """{'metrics/16777216': seconds, 'read_once_1gib': seconds, ...} from divan's table."""
    out, groups = {}, {}
    for line in text.splitlines():
        m = ROW.match(line)
        if not m:
            continue
        depth = len(m.group(1)) // 3
        groups[depth] = m.group(2)
        if m.group(7):
            name = "/".join(groups[d] for d in range(depth + 1))
            out[name] = float(m.group(7)) * UNITS[m.group(8)]
    return out


def suite_share(release, times):
    cmd = ["cargo", "test", "-q", "-p", "harness"] + (["--release"] if release else [])
    cmd += ["--test", "cases", "--", "--timings", "--test-threads", "1"]
    shares, walls = [], []
    for _ in range(times):
        text = run(cmd)
        wall = re.search(r"timings: wall ([\d.]+) ms", text)
        own = re.search(r"harness: wall - forward passes\s+([\d.]+)\s+([\d.]+)%", text)
        if not (wall and own):
            sys.exit(f"error: no --timings breakdown in the output of {' '.join(cmd)}\n{text}")
        walls.append(float(wall.group(1)))
        shares.append(float(own.group(2)))
    return statistics.median(shares), statistics.median(walls)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0) / 2**20
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}, {rustc}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples (for a smoke run)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    bench_args = ["--sample-count", "5"] if args.quick else []
    bench = run(["cargo", "bench", "-q", "-p", "harness", "--bench", "compare", "--"] + bench_args)
    t = divan_medians(bench)
    numpy = json.loads(run([sys.executable, "tools/bench_numpy.py", "--runs", "3" if args.quick else "7"]))
    peak = json.loads(run(["cargo", "bench", "-q", "-p", "harness", "--bench", "peak_memory"]).strip().splitlines()[-1])
    n_suite = 3 if args.quick else 7
    dev_share, dev_wall = suite_share(False, n_suite)
    rel_share, rel_wall = suite_share(True, n_suite)
    proto = json.loads(run(["cargo", "bench", "-q", "-p", "harness", "--bench", "protocol"]).strip().splitlines()[-1])
    run(["cargo", "build", "-q", "--release", "-p", "harness-cli"])
    ort = json.loads(run([sys.executable, "tools/bench_protocol.py", "--reps", "1" if args.quick else "3"]).strip().splitlines()[-1])
    load_after = os.getloadavg()

    rows = []
    ok = lambda good: "yes" if good else "**no**"
    for n in SIZES:
        r = t[f"read/{n}"] / t[f"metrics/{n}"]
        rows.append((f"metrics vs plain read, {n >> 20} Mi float32", f"{t[f'metrics/{n}'] * 1e3:.1f} ms vs {t[f'read/{n}'] * 1e3:.1f} ms", f"{r:.2f}", ">= 0.7", ok(r >= 0.7)))
    for n in SIZES:
        np_t = numpy["sizes"][str(n)]["median_s"]
        r = np_t / t[f"metrics/{n}"]
        rows.append((f"harness vs numpy, {n >> 20} Mi float32", f"{t[f'metrics/{n}'] * 1e3:.1f} ms vs {np_t * 1e3:.0f} ms", f"{r:.1f}x", ">= 5x", ok(r >= 5)))
    once = t["read_once_1gib"]
    for key, what in [("load_compare_1gib", "load + compare a 1 GiB golden (streamed) vs reading it once"),
                      ("load_compare_1gib_mapped", "the same through a memory map (for comparison)"),
                      ("load_compare_1gib_first", "the same, first load (sha256 not yet remembered)")]:
        r = t[key] / once
        main = key == "load_compare_1gib"
        rows.append((what, f"{t[key] * 1e3:.0f} ms vs {once * 1e3:.0f} ms", f"{r:.2f}x", "<= 1.5x" if main else "-", ok(r <= 1.5) if main else "-"))
    own = (peak["peak_rss"] - peak["engine_output"]) / 2**20
    over = peak["overhead"] / 2**20
    rows.append(("peak RSS comparing a 1 GiB tap", f"{peak['peak_rss'] / 2**30:.3f} GiB = output + {own:.1f} MiB",
                 f"{over:+.0f} MiB vs golden + output", "golden + output + < 64 MiB", ok(over < 64)))
    rows.append(("suite overhead (`cargo test`, debug)", f"wall {dev_wall:.1f} ms", f"{dev_share:.1f}%", "< 10%", ok(dev_share < 10)))
    rows.append(("suite overhead (`cargo test --release`)", f"wall {rel_wall:.1f} ms", f"{rel_share:.1f}%", "< 10%", ok(rel_share < 10)))
    h = proto["tiny_harness_ms"]
    rows.append((f"external engine (protocol 2), harness side per forward, {proto['tiny_taps']} taps of llama/mha",
                 f"{h:.2f} ms (wall {proto['tiny_wall_ms']:.2f} ms)", "-", "<= 5 ms", ok(h <= 5)))
    g = proto["transfer_gb_per_s"]
    rows.append((f"external engine output read back, {proto['transfer_bytes'] / 2**20:.0f} MiB float32",
                 f"{proto['transfer_harness_ms']:.1f} ms", f"{g:.2f} GB/s", ">= 1 GB/s", ok(g >= 1)))
    r = ort["ratio"]
    rows.append(("onnxruntime suite (2 cases + 2 metamorphic), protocol 2 vs one process per forward",
                 f"{ort['v2_s']:.2f} s vs {ort['v1_s']:.1f} s", f"{r:.0f}x", ">= 20x", ok(r >= 20)))

    kernel = re.search(r"metrics kernel: (\S+)", bench)
    print(f"Machine: {machine()}; metrics kernel: {kernel.group(1) if kernel else '?'}; numpy {numpy['numpy']}.")
    print(f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: {'/'.join(f'{x:.1f}' for x in load_after)}.")
    print()
    print("| measure | medians | ratio | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
