"""The harness's external-engine protocol, engine side (docs/engine-protocol.md).

An adapter subclasses `Engine` and calls `serve(MyEngine)`. `serve` speaks both versions:

- protocol 1: `adapter.py REQUEST_JSON` (or $HARNESS_REQUEST): one forward per process;
- protocol 2: no argument and HARNESS_PROTOCOL=2: JSON lines on stdin/stdout, one process per
  (engine, model), `load` first, then `forward` / `decode` / `block` requests until `shutdown`.

Tensors go to the request's output directory as `<engine name>.npy` (or one `.safetensors`),
so an adapter only returns numpy arrays keyed by its own tensor names (or HF names).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np


class EngineError(Exception):
    """A failure the harness should show as is: `message (hint: ...)`."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class Engine:
    """What an adapter implements. `model` is the request's `model` object (id, class, dir,
    dtype, config); `options` the engine options (engine file, overridden per case)."""

    def load(self, model: dict, options: dict) -> dict:
        """Load the model once. Returns the `load` reply's extra fields, e.g.
        `{"capabilities": {"decode": True}, "taps": [...], "info": "..."}`."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, np.ndarray], taps: list[dict], options: dict, case: str | None):
        """One forward. `taps`: [{"hf": name, "engine": own name or None}]. Returns
        `{name: array}` (engine or HF names) or `({name: array}, {hf_tap: why_not_produced})`."""
        raise NotImplementedError

    def decode(self, inputs: dict[str, np.ndarray], tokens: np.ndarray, taps: list[dict], options: dict, case: str | None):
        """Prompt, then tokens[:, k-1] alone at step k through the KV cache. Returns one forward
        result per step (steps + 1 of them)."""
        raise EngineError("this engine does not decode")

    def block(self, block: str, x: np.ndarray, inputs: dict[str, np.ndarray], taps: list[dict], options: dict):
        raise EngineError(f"this engine cannot run block `{block}` alone")


def read_inputs(spec: dict, base: Path | None = None) -> dict[str, np.ndarray]:
    out = {}
    for name, v in spec.items():
        p = Path(v["file"])
        if base is not None and not p.is_absolute():
            p = base / p
        out[name] = np.load(p, allow_pickle=False)
    return out


def write_outputs(out_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        np.save(out_dir / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)


def _split(result) -> tuple[dict, dict]:
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, {}


def _error_line(req_id, e: BaseException) -> dict:
    if isinstance(e, EngineError):
        d = {"id": req_id, "ok": False, "error": str(e)}
        if e.hint:
            d["hint"] = e.hint
        return d
    tb = traceback.format_exc(limit=3).strip().splitlines()
    return {"id": req_id, "ok": False, "error": f"{type(e).__name__}: {e}", "hint": " | ".join(tb[-3:])}


def handle(engine: Engine, req: dict) -> dict:
    """One v2 request (after `load`) -> its response."""
    op = req.get("op")
    options = req.get("options") or {}
    case = req.get("case")
    if op == "forward":
        arrays, missing = _split(engine.forward(read_inputs(req["inputs"]), req["taps"], options, case))
        write_outputs(Path(req["output_dir"]), arrays)
        return {"id": req["id"], "ok": True, "not_produced": missing}
    if op == "decode":
        tokens = np.load(req["decode"]["file"], allow_pickle=False)
        steps = engine.decode(read_inputs(req["inputs"]), tokens, req["taps"], options, case)
        missing_all: dict = {}
        for k, result in enumerate(steps):
            arrays, missing = _split(result)
            missing_all.update(missing)
            write_outputs(Path(req["output_dir"]) / str(k), arrays)
        return {"id": req["id"], "ok": True, "not_produced": missing_all}
    if op == "block":
        x = np.load(req["input"]["file"], allow_pickle=False)
        arrays, missing = _split(engine.block(req["block"], x, read_inputs(req["inputs"]), req["taps"], options))
        write_outputs(Path(req["output_dir"]), arrays)
        return {"id": req["id"], "ok": True, "not_produced": missing}
    raise EngineError(f"unknown op `{op}`", "this adapter speaks protocol 2: load, forward, decode, block, shutdown")


def serve_v2(factory) -> int:
    out = sys.stdout
    # Anything the engine or its libraries print must not corrupt the protocol channel.
    sys.stdout = sys.stderr
    engine = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req_id = None
        try:
            req = json.loads(line)
            req_id = req.get("id")
            if req.get("op") == "shutdown":
                return 0
            if req.get("op") == "load":
                if req.get("protocol") != 2:
                    raise EngineError(f"protocol {req.get('protocol')} is not 2")
                engine = factory()
                extra = engine.load(req["model"], req.get("options") or {}) or {}
                resp = {"id": req_id, "ok": True, **extra}
            elif engine is None:
                raise EngineError("the first request must be `load`")
            else:
                resp = handle(engine, req)
        except Exception as e:  # noqa: BLE001  every failure is reported to the harness
            resp = _error_line(req_id, e)
        out.write(json.dumps(resp) + "\n")
        out.flush()
    return 0


def serve_v1(factory, request_path: Path) -> int:
    req = json.loads(request_path.read_text())
    if req.get("protocol") != 1:
        print(f"error: {request_path}: protocol {req.get('protocol')} is not 1", file=sys.stderr)
        return 2
    try:
        engine = factory()
        m = dict(req["model"])
        m.setdefault("class", m.get("family"))
        engine.load(m, req.get("options") or {})
        arrays, _ = _split(engine.forward(read_inputs(req["inputs"], request_path.parent), req["taps"], req.get("options") or {}, req.get("case")))
        write_outputs(Path(req["output_dir"]), arrays)
    except EngineError as e:
        print(f"error: {e}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return 1
    return 0


def serve(factory) -> int:
    """Entry point of an adapter: v1 with a request path argument, v2 otherwise."""
    args = [a for a in sys.argv[1:]]
    if args:
        return serve_v1(factory, Path(args[0]))
    if os.environ.get("HARNESS_REQUEST"):
        return serve_v1(factory, Path(os.environ["HARNESS_REQUEST"]))
    return serve_v2(factory)
