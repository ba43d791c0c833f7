#!/usr/bin/env python3
"""The onnxruntime suite through protocol 2 (one engine process per model) and through protocol 1
(one process per forward), side by side in one run; prints one JSON line.

    tools/.venv/bin/python tools/bench_protocol.py [--reps N]

The suite: every onnxruntime trial that protocol 1 can run (bert/padded-batch, llama/gqa) plus
two metamorphic cases on the same models (determinism, batch, padding; and prefix for Llama),
which make tens of forwards each. Both engines are the shipped `cases/engines/onnxruntime.yaml`;
the protocol-1 twin differs only in `protocol: 1` and the `{request}` argument. It runs in a
scratch copy of cases/ (the rest of the repository linked), so nothing here is modified. Needs the
release CLI (`cargo build --release -p harness-cli`) and tools/adapters/requirements-onnx.txt. A
first untimed pass fills the export cache, so both sides time warm starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["bert/padded-batch", "llama/gqa", "metamorphic/ort-bench-bert", "metamorphic/ort-bench-llama"]
METAMORPHIC = {
    "ort-bench-bert": "model: bert-tiny\nmetamorphic: [determinism, batch, padding]\n"
    "generate: {cases: 4, seed: 1, rows: [1, 3], tokens: [1, 12], padding: [1, 4]}\n"
    "taps: [encoder.layer.*, last_hidden_state]\n",
    "ort-bench-llama": "model: llama-tiny-gqa\nmetamorphic: [determinism, batch, padding, prefix]\n"
    "generate: {cases: 4, seed: 1, rows: [1, 3], tokens: [1, 10], padding: [1, 3], steps: [1, 3]}\n"
    "taps: [model.layers.*, logits]\n",
}


def scratch_root(tmp: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("cases", "target", ".git"):
            (root / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / "cases", root / "cases")
    engines = root / "cases" / "engines"
    v2 = (engines / "onnxruntime.yaml").read_text()
    v1 = v2.replace("protocol: 2", "protocol: 1")
    v1 = re.sub(r"^command: \[(.*)\]$", r"command: [\1, '{request}']", v1, flags=re.M)
    assert v1 != v2 and "{request}" in v1
    (engines / "onnxruntime-v1.yaml").write_text(v1)
    for case in ("bert/padded-batch", "llama/gqa"):
        p = root / "cases" / f"{case}.yaml"
        p.write_text(re.sub(r"^engines: \[(.*)\]$", r"engines: [onnxruntime, onnxruntime-v1]", p.read_text(), flags=re.M))
    for name, text in METAMORPHIC.items():
        (root / "cases" / "metamorphic" / f"{name}.yaml").write_text(text + "engines: [onnxruntime, onnxruntime-v1]\n")
    return root


def run(root: Path, harness: Path, engine: str) -> float:
    names = [f"{engine}::{c}" for c in CASES]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    t = time.perf_counter()
    p = subprocess.run([str(harness), "run", "--exact", *names], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0 or f"{len(names)} of {len(names)} trials passed" not in p.stdout:
        sys.exit(f"`harness run` of {engine} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2, help="timed runs per protocol (the median is kept)")
    args = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    harness = target / "release" / "harness"
    if not harness.exists():
        sys.exit(f"{harness} does not exist (hint: cargo build --release -p harness-cli)")
    with tempfile.TemporaryDirectory(prefix="harness-bench-protocol-") as tmp:
        root = scratch_root(Path(tmp))
        run(root, harness, "onnxruntime")  # fills the export cache
        v1, v2 = [], []
        for _ in range(args.reps):
            v2.append(run(root, harness, "onnxruntime"))
            v1.append(run(root, harness, "onnxruntime-v1"))
    med = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps({"cases": CASES, "v1_s": med(v1), "v2_s": med(v2), "ratio": med(v1) / med(v2),
                      "v1_runs": v1, "v2_runs": v2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
