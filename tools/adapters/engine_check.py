#!/usr/bin/env python3
"""Run an external engine (protocol 2, persistent) on a committed case and compare it with the
goldens, tap by tap, in Python: a harness-free check of an adapter and its engine file.

    tools/.venv/bin/python tools/adapters/engine_check.py tools/adapters/engines/llama-cpp.yaml llama/gguf-f32
    tools/.venv/bin/python tools/adapters/engine_check.py ENGINE_YAML CASE --option gguf=q8_0 --json out.json

It is also the executable reference for the engine-file rules the llama.cpp engines need beyond
docs/engine-protocol.md (see tools/adapters/LLAMA_CPP_NOTES.md):

- a name rule's `hf` may be a list: one engine tensor feeds several HF taps;
- a layout rule may be `{engine: REGEX, ops: [op, op, ...]}`: ops applied in order, each one of
  `{reverse: true}`, `{transpose: [a, b]}`, `{reshape: [...]}`;
- reshape sizes may also name an integer of the model config, optionally divided or multiplied by
  an integer: `config.head_dim`, `config.head_dim/2` (`head_dim` defaults to hidden_size / num_attention_heads).

Per tap it prints max |a - e|, cosine, SQNR in dB (-10 log10(sum((a-e)^2) / sum(e^2))) and the
max as a multiple of the tap's float32 noise floor (manifest `noise.floor`), over the positions the
harness compares (padding rows left out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

# A script, not a module of the package: run from a checkout, it imports the checkout's
# harness_goldens (../harness_goldens), installed or not; copied elsewhere, the installed one.
_TOOLS = Path(__file__).resolve().parent.parent
if (_TOOLS / "harness_goldens").is_dir():
    sys.path.insert(0, str(_TOOLS))

from harness_goldens import project  # noqa: E402
from harness_goldens.spec import discover, load_case  # noqa: E402

# The cases and goldens compared: the current directory's project (its harness.toml, found as the
# harness finds it), else the project of the checkout this script is in.
try:
    PROJECT = project.find()
except project.ProjectError:
    PROJECT = project.find(Path(__file__).resolve().parent)
ROOT = PROJECT.root

# ---------------------------------------------------------------------------------------------
# Engine-file rules


def load_engine(path: Path) -> dict:
    e = yaml.safe_load(Path(path).read_text())
    e["name"] = Path(path).stem
    return e


def _hf_templates(rule: dict) -> list[str]:
    hf = rule["hf"]
    return list(hf) if isinstance(hf, list) else [hf]


def _py_template(t: str) -> str:
    """`$1`, `${1}`, `$name`, `${name}` -> Python's `\\g<...>`."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: "\\g<" + (m.group(1) or m.group(2)) + ">", t.replace("\\", "\\\\"))


def to_hf_names(engine: dict, name: str) -> list[str]:
    """The HF taps an engine tensor feeds (first matching rule); the name itself if none matches."""
    for rule in engine.get("names", []):
        m = re.fullmatch(rule["engine"], name)
        if m:
            return [m.expand(_py_template(t)) for t in _hf_templates(rule)]
    return [name]


def _fill_groups(regex: str, values: list[str]) -> str | None:
    """A regex of literal text, escaped punctuation and capture groups, with group k replaced by
    values[k]; None when the regex has anything else (it cannot be run backwards)."""
    out, i, k = [], 0, 0
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex) and not regex[i + 1].isalnum():
            out.append(regex[i + 1])
            i += 2
        elif c == "(":
            depth, j = 1, i + 1
            while j < len(regex) and depth:
                depth += {"(": 1, ")": -1}.get(regex[j], 0)
                j += 1
            if k >= len(values):
                return None
            out.append(values[k])
            k += 1
            i = j
        elif c.isalnum() or c in "-_~@:/":
            out.append(c)
            i += 1
        else:
            return None
    return "".join(out)


def to_engine_name(engine: dict, hf: str) -> str | None:
    """The engine's own name for HF tap `hf`, by running the name rules backwards; None when the
    rules cannot say (the request then carries the HF name only)."""
    for rule in engine.get("names", []):
        for t in _hf_templates(rule):
            parts = re.split(r"(\$\{\w+\}|\$\w+)", t)
            pat = "".join(f"(?P<g{n}>.+?)" if p.startswith("$") else re.escape(p) for n, p in enumerate(parts))
            m = re.fullmatch(pat, hf)
            if not m:
                continue
            # group numbers referenced by the template, in the order the regex captures them
            refs = {re.sub(r"[${}]", "", p): m.group(f"g{n}") for n, p in enumerate(parts) if p.startswith("$")}
            n_groups = re.compile(rule["engine"]).groups
            values = [refs.get(str(g + 1), "") for g in range(n_groups)]
            name = _fill_groups(rule["engine"], values)
            if name is not None and hf in to_hf_names(engine, name):
                return name
    return None


def _size(v, batch: int, seq: int, config: dict) -> int:
    if isinstance(v, int):
        return v
    if v == "batch":
        return batch
    if v == "seq":
        return seq
    # `config.head_dim/2` (the harness's spelling) or `head_dim/2`.
    m = re.fullmatch(r"(\w+)(?:([/*])(\d+))?", str(v).removeprefix("config."))
    if not m:
        raise ValueError(f"reshape size `{v}`")
    key = m.group(1)
    if key == "head_dim" and not config.get("head_dim"):
        base = config["hidden_size"] // config["num_attention_heads"]
    else:
        base = int(config[key])
    if m.group(2) == "/":
        return base // int(m.group(3))
    if m.group(2) == "*":
        return base * int(m.group(3))
    return base


def _apply(op: dict, a: np.ndarray, batch: int, seq: int, config: dict) -> np.ndarray:
    if op.get("reverse"):
        return a.transpose(tuple(reversed(range(a.ndim))))
    if "transpose" in op:
        x, y = op["transpose"]
        return np.swapaxes(a, x, y)
    if "reshape" in op:
        return a.reshape([_size(v, batch, seq, config) for v in op["reshape"]])
    raise ValueError(f"layout op {op}")


def to_hf_layout(engine: dict, name: str, a: np.ndarray, batch: int, seq: int, config: dict) -> np.ndarray:
    for rule in engine.get("layouts", []):
        if re.fullmatch(rule["engine"], name):
            ops = rule["ops"] if "ops" in rule else [{k: v for k, v in rule.items() if k != "engine"}]
            for op in ops:
                a = _apply(op, a, batch, seq, config)
            return np.ascontiguousarray(a)
    return a


# ---------------------------------------------------------------------------------------------
# Protocol 2 client


class V2Engine:
    """The engine's command as a persistent protocol-2 process (JSON lines on stdin/stdout)."""

    def __init__(self, engine: dict, stderr=None):
        env = {**os.environ, "HARNESS_PROTOCOL": "2", "HARNESS_ENGINE": engine["name"], **{k: str(v) for k, v in (engine.get("env") or {}).items()}}
        env.pop("HARNESS_REQUEST", None)
        command = list(engine["command"])
        if Path(command[0]).name.startswith("python") and not (ROOT / command[0]).exists() and "/" in command[0]:
            command[0] = sys.executable  # e.g. a worktree without its own tools/.venv
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
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
            raise RuntimeError(f"engine exited (status {self.proc.wait()}) without answering `{op}`")
        resp = json.loads(line)
        if resp.get("id") != req["id"]:
            raise RuntimeError(f"response id {resp.get('id')} to request {req['id']}")
        return resp

    def shutdown(self, timeout: float = 30) -> int:
        self.request("shutdown")
        self.proc.stdin.close()
        status = self.proc.wait(timeout=timeout)
        self.proc.stdout.close()
        return status


def write_npy(d: Path, name: str, a) -> dict:
    a = np.asarray(a, dtype=np.int64)
    p = d / f"{name}.npy"
    np.save(p, a)
    return {"file": str(p), "shape": list(a.shape), "dtype": "int64"}


def find_case(case_id: str):
    for f in discover(PROJECT):
        c = load_case(PROJECT, f, {})
        if c.id == case_id:
            return c
    raise SystemExit(f"error: no case `{case_id}`")


def model_request(case) -> dict:
    d = case.model.dir(PROJECT)
    return {"id": case.model.id, "class": case.model.family, "dir": str(d), "dtype": case.model.dtype, "config": json.loads((d / "config.json").read_text())}


def run_case(client: V2Engine, engine: dict, case, work: Path, options: dict) -> tuple[dict[str, np.ndarray], dict, dict]:
    """One forward (or decode) of the case: ({hf tap (with @step): array}, not_produced, response)."""
    manifest = json.loads((PROJECT.goldens / case.id / "manifest.json").read_text())
    taps = list(dict.fromkeys(t["name"].split("@")[0] for t in manifest["taps"] if not t["name"].startswith("depth.")))
    ids = np.asarray(case.inputs["input_ids"], dtype=np.int64)
    batch, seq = ids.shape
    inputs = {"input_ids": write_npy(work, "input_ids", ids)}
    if "attention_mask" in case.inputs:
        inputs["attention_mask"] = write_npy(work, "attention_mask", case.inputs["attention_mask"])
    inputs["position_ids"] = write_npy(work, "position_ids", np.broadcast_to(np.arange(seq), ids.shape))
    req_taps = [{"hf": t, "engine": to_engine_name(engine, t)} for t in taps]
    out = work / "out"
    fields = {"case": case.id, "inputs": inputs, "taps": req_taps, "output_dir": str(out), "options": options}
    if case.decode is not None:
        resp = client.request("decode", decode=write_npy(work, "decode_tokens", case.decode), **fields)
        dirs = [(f"@{k}", out / str(k), seq if k == 0 else 1) for k in range(len(case.decode[0]) + 1)]
    else:
        resp = client.request("forward", **fields)
        dirs = [("", out, seq)]
    if not resp.get("ok"):
        raise RuntimeError(f"engine error: {resp.get('error')} (hint: {resp.get('hint')})")
    got = {}
    config = model_request(case)["config"]
    for suffix, d, s in dirs:
        for f in sorted(d.glob("*.npy")):
            a = to_hf_layout(engine, f.stem, np.load(f), batch, s, config)
            for hf in to_hf_names(engine, f.stem):
                if hf in taps:
                    if hf + suffix in got:
                        raise RuntimeError(f"two tensors map to tap {hf}{suffix}")
                    got[hf + suffix] = a
    return got, resp.get("not_produced") or {}, resp


def compare(case, got: dict[str, np.ndarray]) -> list[dict]:
    """Per golden tap: metrics over the compared positions."""
    manifest = json.loads((PROJECT.goldens / case.id / "manifest.json").read_text())
    mask = case.inputs.get("attention_mask")
    rows = []
    for t in manifest["taps"]:
        name = t["name"]
        if name.startswith("depth.") or name.startswith("tokenizer."):
            continue
        e = np.load(PROJECT.goldens / case.id / t["file"]).astype(np.float64)
        if name not in got:
            rows.append({"tap": name, "missing": True})
            continue
        a = got[name].astype(np.float64)
        if a.shape != e.shape:
            rows.append({"tap": name, "shape": [list(a.shape), list(e.shape)]})
            continue
        if mask is not None and "@" not in name:
            real = np.asarray(mask) != 0
            if a.ndim >= 3 and a.shape[:2] == real.shape:
                a, e = a[real], e[real]
        d = a - e
        err, sig = float((d * d).sum()), float((e * e).sum())
        cos = float((a * e).sum() / np.sqrt((a * a).sum() * sig)) if sig > 0 else float("nan")
        floor = (t.get("noise") or {}).get("floor")
        r = {
            "tap": name,
            "max_abs": float(np.abs(d).max()),
            "cosine": cos,
            "sqnr_db": float("inf") if err == 0 else -10 * np.log10(err / sig),
            "x_floor": float(np.abs(d).max() / floor) if floor else None,
            "within_default": bool(np.all(np.abs(d) <= 1e-4 + 1e-3 * np.abs(e))),
        }
        if name.split("@")[0] == "logits":
            ok = np.argmax(a, -1) == np.argmax(e, -1)
            r["argmax"] = f"{int(ok.sum())}/{ok.size}"
        rows.append(r)
    return rows


def print_table(rows: list[dict], file=sys.stdout) -> None:
    print("| tap | max_abs | cosine | SQNR dB | x floor | atol 1e-4 + rtol 1e-3 | argmax |", file=file)
    print("| --- | --- | --- | --- | --- | --- | --- |", file=file)
    for r in rows:
        if r.get("missing"):
            print(f"| `{r['tap']}` | not produced | | | | | |", file=file)
        elif "shape" in r:
            print(f"| `{r['tap']}` | shape {r['shape'][0]} vs golden {r['shape'][1]} | | | | | |", file=file)
        else:
            xf = "-" if r["x_floor"] is None else f"{r['x_floor']:.1f}"
            print(f"| `{r['tap']}` | {r['max_abs']:.2e} | {r['cosine']:.7f} | {r['sqnr_db']:.1f} | {xf} | {'yes' if r['within_default'] else 'no'} | {r.get('argmax', '')} |", file=file)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine", type=Path, help="engine file (protocol 2)")
    ap.add_argument("cases", nargs="+", help="case ids")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="override an engine option (YAML value)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    engine = load_engine(args.engine)
    options = dict(engine.get("options") or {})
    for o in args.option:
        k, v = o.split("=", 1)
        options[k] = yaml.safe_load(v)
    everything = {}
    by_model: dict[str, list] = {}
    for cid in args.cases:
        c = find_case(cid)
        by_model.setdefault(c.model.id, []).append(c)
    for cases in by_model.values():
        client = V2Engine(engine)
        resp = client.request("load", protocol=2, engine=engine["name"], model=model_request(cases[0]), options=options)
        if not resp.get("ok"):
            raise SystemExit(f"error: load: {resp.get('error')} (hint: {resp.get('hint')})")
        print(f"engine `{engine['name']}`: {resp.get('info')}")
        for c in cases:
            with tempfile.TemporaryDirectory(prefix="engine-check-") as tmp:
                got, missing, _ = run_case(client, engine, c, Path(tmp), options)
            rows = compare(c, got)
            print(f"\n{c.id} ({engine['name']}, options {options})\n")
            print_table(rows)
            for tap, why in missing.items():
                print(f"not produced: `{tap}`: {why}")
            everything[c.id] = {"options": options, "info": resp.get("info"), "rows": rows, "not_produced": missing}
        client.shutdown()
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
