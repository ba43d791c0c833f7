#!/usr/bin/env python3
"""Run an external engine over protocol 2 on committed cases and compare it with the goldens, in
Python (what the Rust runner will do once it speaks v2; used to measure tools/adapters/ort_engine.py).

    tools/.venv/bin/python tools/adapters/ort_compare.py 'bert/*' 'minilm/*' \
        [--options '{"graph": "optimized"}'] [--json out.json] [--engine tools/adapters/ort_engine.py]

One engine process per model (as the harness will: one per (engine, model)), `load`, one
`forward` per case, `shutdown`. Per tap: max |engine - golden| over real positions (attention mask
1) for [batch, seq, ...] taps and over everything for one-row-per-sequence taps, cosine, SQNR (dB),
max_abs over the tap's float32 noise floor (manifest `noise.floor`), and whether it is within
atol 1e-4 + rtol 1e-3 (the harness's default tolerance). Decode cases compare their step 0 (the
prompt, `tap@0`): the adapter does not decode. Tokenizer taps are the harness's, not the engine's;
`similarity` is computed from the engine's `sentence_embedding` as the harness does.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# A script, not a module of the package: run from a checkout, it imports the checkout's
# harness_goldens (../harness_goldens), installed or not; copied elsewhere, the installed one.
_TOOLS = Path(__file__).resolve().parent.parent
if (_TOOLS / "harness_goldens").is_dir():
    sys.path.insert(0, str(_TOOLS))

from harness_goldens import project  # noqa: E402
from harness_goldens.spec import case_id, discover, load_case  # noqa: E402

# The cases and goldens compared: the current directory's project (its harness.toml, found as the
# harness finds it), else the project of the checkout this script is in.
try:
    PROJECT = project.find()
except project.ProjectError:
    PROJECT = project.find(Path(__file__).resolve().parent)
ROOT = PROJECT.root

PYTHON = Path(sys.executable)
ENGINE = Path(__file__).resolve().parent / "ort_engine.py"
ATOL, RTOL = 1e-4, 1e-3
TOKENIZER_TAPS = ("tokenizer.input_ids", "tokenizer.attention_mask", "tokenizer.token_type_ids")


class V2Engine:
    """An engine process speaking protocol 2 (JSON lines on stdin/stdout)."""

    def __init__(self, argv: list[str], name: str = "onnxruntime", stderr=None):
        env = dict(os.environ, HARNESS_PROTOCOL="2", HARNESS_ENGINE=name)
        env.pop("HARNESS_REQUEST", None)
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, start_new_session=True)
        self.next_id = 0

    def request(self, op: str, **fields) -> dict:
        req = {"id": self.next_id, "op": op, **fields}
        self.next_id += 1
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        if op == "shutdown":
            return {}
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the engine exited (status {self.proc.wait()}) without answering `{op}`")
        resp = json.loads(line)
        if resp.get("id") != req["id"]:
            raise RuntimeError(f"response id {resp.get('id')} for request {req['id']}")
        return resp

    def close(self, timeout: float = 30) -> int:
        try:
            self.request("shutdown")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc.stdout.close()


def model_request(case) -> dict:
    d = case.model.dir(PROJECT)
    config = json.loads((d / "config.json").read_text())
    config.update(case.model.config)
    return {"id": case.model.id, "class": case.model.family, "dir": str(d), "dtype": case.model.dtype, "config": config}


def case_inputs(case) -> dict[str, np.ndarray]:
    """The model inputs of a case: its token ids, or for text cases HF's tokenization (goldens)."""
    if case.text is not None:
        g = PROJECT.goldens / case.id
        out = {}
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            p = g / f"tokenizer.{k}.npy"
            if p.exists():
                out[k] = np.load(p).astype(np.int64)
        return out
    return {k: np.asarray(v, dtype=np.int64) for k, v in case.inputs.items()}


def write_inputs(d: Path, inputs: dict[str, np.ndarray]) -> dict:
    spec = {}
    for k, a in inputs.items():
        np.save(d / f"{k}.npy", a)
        spec[k] = {"file": str(d / f"{k}.npy"), "shape": list(a.shape), "dtype": "int64"}
    if "position_ids" not in inputs:  # v2 sends the positions HF uses: its default, arange
        b, s = inputs["input_ids"].shape
        pos = np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
        np.save(d / "position_ids.npy", pos)
        spec["position_ids"] = {"file": str(d / "position_ids.npy"), "shape": [b, s], "dtype": "int64"}
    return spec


def metrics(got: np.ndarray, want: np.ndarray, mask: np.ndarray | None, floor: float | None) -> dict:
    if got.shape != want.shape:
        return {"shape": f"engine {list(got.shape)}, golden {list(want.shape)}"}
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    if mask is not None and g.ndim >= 3 and g.shape[:2] == mask.shape:
        sel = mask.astype(bool)
        g, w = g[sel], w[sel]
    d = np.abs(g - w)
    max_abs = float(d.max()) if d.size else 0.0
    num = float((w * w).sum())
    err = float(((g - w) ** 2).sum())
    cos = float((g * w).sum() / (np.sqrt((g * g).sum()) * np.sqrt(num))) if num > 0 and (g * g).sum() > 0 else 1.0
    sqnr = float("inf") if err == 0 else 10 * np.log10(num / err) if num > 0 else float("-inf")
    ok = bool((d <= ATOL + RTOL * np.abs(w)).all())
    return {"max_abs": max_abs, "cosine": cos, "sqnr_db": sqnr, "x_floor": (max_abs / floor) if floor else None, "within": ok}


def selected_cases(patterns: list[str]):
    models: dict = {}
    out = []
    for f in discover(PROJECT):
        cid = case_id(PROJECT, f)
        if patterns and not any(fnmatch.fnmatch(cid, p) for p in patterns):
            continue
        if not (PROJECT.goldens / cid / "manifest.json").exists():
            continue
        out.append(load_case(PROJECT, f, models))
    return out


def golden_taps(case, decode: bool = False) -> list[dict]:
    """The manifest's taps this comparison uses: `hf` the HF name, `step` the decode step (decode
    cases: every step with `decode`, else step 0 only), `name` the golden's name (`logits@3`)."""
    m = json.loads((PROJECT.goldens / case.id / "manifest.json").read_text())
    taps = []
    for t in m["taps"]:
        name = hf = t["name"]
        if name in TOKENIZER_TAPS or name.startswith("depth."):
            continue
        step = None
        if "@" in name:
            hf, k = name.rsplit("@", 1)
            step = int(k)
            if step != 0 and not decode:
                continue
            if not decode:
                name, step = hf, None
        taps.append({"hf": hf, "step": step, "name": name, "file": t["file"], "floor": (t.get("noise") or {}).get("floor")})
    return taps


def run_cases(cases, options: dict, engine: Path = ENGINE, log=None) -> list[dict]:
    """Every case through one v2 process per model. Returns one row per (case, tap)."""
    rows = []
    by_model: dict[str, list] = {}
    for c in cases:
        by_model.setdefault(c.model.id, []).append(c)
    for mid, group in by_model.items():
        absent = group[0].model.absent(PROJECT)
        if absent:
            for c in group:
                rows.append({"case": c.id, "error": absent})
            continue
        eng = V2Engine([str(PYTHON), str(engine)], stderr=log)
        try:
            t0 = time.perf_counter()
            resp = eng.request("load", protocol=2, engine="onnxruntime", model=model_request(group[0]), options=options)
            load_s = time.perf_counter() - t0
            if not resp.get("ok"):
                for c in group:
                    rows.append({"case": c.id, "error": f"load: {resp.get('error')} ({resp.get('hint')})"})
                continue
            decode = bool((resp.get("capabilities") or {}).get("decode"))
            for c in group:
                rows.extend(run_case(eng, c, options, load_s, resp.get("info"), decode))
                load_s = None
        finally:
            eng.close()
    return rows


def run_case(eng: V2Engine, case, options: dict, load_s: float | None, info: str | None, decode: bool = False) -> list[dict]:
    """One case: a `forward`, or for decode cases on an engine that decodes, a `decode` request
    (its steps compared with the goldens `tap@k`; else step 0 only, from a forward)."""
    decode = decode and case.decode is not None
    taps = golden_taps(case, decode)
    inputs = case_inputs(case)
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = np.ones(inputs["input_ids"].shape, np.int64)
    with tempfile.TemporaryDirectory(prefix="ort-compare-") as d:
        d = Path(d)
        spec = write_inputs(d, inputs)
        wanted = list(dict.fromkeys(t["hf"] for t in taps if t["hf"] != "similarity"))
        if "sentence_embedding" not in wanted and any(t["hf"] == "similarity" for t in taps):
            wanted.append("sentence_embedding")
        req = {"case": case.id, "inputs": spec, "taps": [{"hf": t, "engine": None} for t in wanted], "output_dir": str(d / "out"), "options": options}
        if decode:
            tokens = np.asarray(case.decode, dtype=np.int64)
            np.save(d / "decode_tokens.npy", tokens)
            req["decode"] = {"file": str(d / "decode_tokens.npy"), "shape": list(tokens.shape), "dtype": "int64"}
        t0 = time.perf_counter()
        resp = eng.request("decode" if decode else "forward", **req)
        fwd_s = time.perf_counter() - t0
        if not resp.get("ok"):
            return [{"case": case.id, "error": f"{'decode' if decode else 'forward'}: {resp.get('error')} ({resp.get('hint')})"}]
        not_produced = resp.get("not_produced") or {}
        got: dict = {}  # step (None: a forward) -> {hf name: array}
        for p in (d / "out").rglob("*.npy"):
            step = int(p.parent.name) if decode else None
            got.setdefault(step, {})[p.stem] = np.load(p)
    for arrays in got.values():
        if "sentence_embedding" in arrays:
            e = arrays["sentence_embedding"].astype(np.float32)
            arrays["similarity"] = e @ e.T / np.maximum(np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1)), np.float32(1e-8))
    rows = []
    for t in taps:
        row = {"case": case.id, "tap": t["name"], "forward_s": fwd_s, "load_s": load_s, "info": info}
        load_s = None
        arrays = got.get(t["step"], {})
        if t["hf"] in arrays:
            want = np.load(PROJECT.goldens / case.id / t["file"])
            # Decode steps after the prompt have no padding (decode cases refuse it).
            row.update(metrics(arrays[t["hf"]], want, mask if not t["step"] else None, t["floor"]))
        else:
            row["not_produced"] = not_produced.get(t["hf"], "not written")
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One line per case: the worst compared tap."""
    out = []
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for c in cases:
        rs = [r for r in rows if r["case"] == c]
        err = next((r["error"] for r in rs if "error" in r), None)
        if err:
            out.append({"case": c, "error": err})
            continue
        cmp = [r for r in rs if "max_abs" in r]
        shape = [r for r in rs if "shape" in r]
        worst = max(cmp, key=lambda r: r["max_abs"]) if cmp else None
        fl = [r for r in cmp if r["x_floor"] is not None]
        worst_floor = max(fl, key=lambda r: r["x_floor"]) if fl else None
        failing = [r["tap"] for r in cmp if not r["within"]] + [r["tap"] for r in shape]
        out.append(
            {
                "case": c,
                "compared": len(cmp),
                "not_produced": len([r for r in rs if "not_produced" in r]),
                "max_abs": worst["max_abs"] if worst else None,
                "worst_tap": worst["tap"] if worst else None,
                "min_cosine": min(r["cosine"] for r in cmp) if cmp else None,
                "min_sqnr_db": min(r["sqnr_db"] for r in cmp) if cmp else None,
                "max_x_floor": worst_floor["x_floor"] if worst_floor else None,
                "first_failing": failing[0] if failing else None,
                "failing": len(failing),
                "forward_s": rs[0].get("forward_s"),
            }
        )
    return out


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(summary: list[dict]) -> str:
    lines = [
        "| case | taps compared | not produced | max_abs | worst tap | min cosine | min SQNR dB | max x floor | within 1e-4+1e-3 | first failing | forward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        if "error" in s:
            lines.append(f"| `{s['case']}` | error: {s['error'][:200]} |" + " |" * 9)
            continue
        within = "all" if not s["failing"] else f"{s['compared'] - s['failing']}/{s['compared']}"
        lines.append(
            f"| `{s['case']}` | {s['compared']} | {s['not_produced']} | {fmt(s['max_abs'], '.1e')} | `{s['worst_tap']}` | {fmt(s['min_cosine'], '.7f')} | "
            f"{fmt(s['min_sqnr_db'], '.1f')} | {fmt(s['max_x_floor'], '.1f')} | {within} | {('`' + s['first_failing'] + '`') if s['first_failing'] else '-'} | {fmt(s['forward_s'] and s['forward_s'] * 1000, '.0f')} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help="case id globs (default: every case with goldens)")
    ap.add_argument("--options", type=json.loads, default={}, help="engine options (JSON)")
    ap.add_argument("--engine", type=Path, default=ENGINE)
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--taps", action="store_true", help="also print every tap")
    args = ap.parse_args()
    rows = run_cases(selected_cases(args.cases), args.options, args.engine, log=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.taps:
        for r in rows:
            if "max_abs" in r:
                print(f"{r['case']:24} {r['tap']:56} {r['max_abs']:.2e} cos {r['cosine']:.8f} sqnr {r['sqnr_db']:6.1f} x{fmt(r['x_floor'], '.1f')} {'ok' if r['within'] else 'FAIL'}")
            else:
                print(f"{r['case']:24} {r.get('tap', ''):56} {r.get('error') or r.get('not_produced') or r.get('shape')}")
    summary = summarize(rows)
    print(markdown(summary))
    return 1 if any("error" in s for s in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
