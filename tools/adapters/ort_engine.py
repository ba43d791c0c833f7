#!/usr/bin/env python3
"""onnxruntime as an external engine: the HF checkpoint exported to ONNX (onnx_export.py), run by
an onnxruntime InferenceSession on the CPU.

    tools/.venv/bin/python tools/adapters/ort_engine.py REQUEST_JSON      # protocol 1
    HARNESS_PROTOCOL=2 tools/.venv/bin/python tools/adapters/ort_engine.py   # protocol 2 (JSON lines)

Options (the v2 `load` / request `options`; in protocol 1, which carries none, the JSON object in
$HARNESS_ORT_OPTIONS):

- `graph`: `taps` (default: every module's output is a graph output, under its HF name),
  `outputs` (what production exports: logits or last_hidden_state only) or `optimized` (that graph
  through onnxruntime.transformers' optimizer: fused EmbedLayerNormalization, SkipLayerNormalization,
  BiasGelu, ...). Taps a graph does not have are reported as `not_produced`.
- `optimizer`: onnxruntime.transformers FusionOptions fields, e.g. `{"enable_gelu_approximation": true}`;
  used by `optimized`, and by `taps` when given (the fused graph keeps every tap the fusions leave).
- `n_threads`: intra-op threads (default 1).
- `ort_level`: the session's graph optimizations, `disable` | `basic` | `extended` | `all` (default `all`).

Named outputs besides the graph's: `pooled.cls`, `pooled.mean` and their `.normalized` forms, and
`sentence_embedding` (per the checkpoint's sentence-transformers modules.json), computed from
`last_hidden_state` and the attention mask in numpy, as an embedding service would.

Decode (capability `decode`, Llama and Qwen3, taps graph): the prompt runs through a `prefill`
graph that also returns the KV cache, each next token through a `step` graph that takes it
(onnx_export.py); both are exported on the first decode request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import onnx_export  # noqa: E402  (imports torch and transformers only when it exports)
from protocol import Engine, EngineError, serve  # noqa: E402

POOLED = ("pooled.cls", "pooled.mean", "pooled.cls.normalized", "pooled.mean.normalized")
POOLED_FAMILIES = {"BertModel", "ModernBertModel"}
ORT_LEVELS = ("disable", "basic", "extended", "all")
OPTION_KEYS = {"graph", "optimizer", "n_threads", "ort_level"}


def effective_options(options: dict) -> dict:
    env = os.environ.get("HARNESS_ORT_OPTIONS")
    o = {"graph": "taps", "optimizer": None, "n_threads": 1, "ort_level": "all"}
    given = {}
    if env:
        try:
            given.update(json.loads(env))
        except ValueError as e:
            raise EngineError(f"$HARNESS_ORT_OPTIONS is not JSON: {e}") from None
    given.update(options or {})
    unknown = sorted(set(given) - OPTION_KEYS)
    if unknown:
        raise EngineError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(f'`{k}`' for k in unknown)}", f"this engine takes {', '.join(sorted(OPTION_KEYS))}")
    o.update(given)
    if o["graph"] not in onnx_export.GRAPHS:
        raise EngineError(f"option graph `{o['graph']}` is not one of {', '.join(onnx_export.GRAPHS)}")
    if o["ort_level"] not in ORT_LEVELS:
        raise EngineError(f"option ort_level `{o['ort_level']}` is not one of {', '.join(ORT_LEVELS)}")
    if not isinstance(o["n_threads"], int) or o["n_threads"] < 1:
        raise EngineError(f"option n_threads `{o['n_threads']}` is not a positive integer")
    return o


def make_session(path: Path, n_threads: int, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.use_deterministic_compute = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def pooled(h: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """sentence-transformers' CLS (first real token) and mean pooling, and their L2 normalization."""
    h = h.astype(np.float32)
    m = mask.astype(np.float32)[:, :, None]
    first = mask.astype(np.int64).argmax(axis=1)
    cls = h[np.arange(h.shape[0]), first]
    mean = (h * m).sum(axis=1, dtype=np.float32) / np.maximum(m.sum(axis=1, dtype=np.float32), np.float32(1e-9))
    out = {"pooled.cls": cls, "pooled.mean": mean}
    for k in ("pooled.cls", "pooled.mean"):
        v = out[k]
        out[k + ".normalized"] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.float32(1e-12))
    return out


def sentence_pooling(model_dir: Path) -> tuple[list[str], bool] | None:
    """(pooling modes in sentence-transformers' concatenation order, normalize) from modules.json,
    or None when the checkpoint is not a sentence-transformers one."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    modes, normalize = None, False
    for m in modules:
        t = m.get("type", "")
        if t.endswith("Pooling"):
            cfg = json.loads((model_dir / m.get("path", "") / "config.json").read_text())
            order = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
            modes = [k for k in order if cfg.get(f"pooling_mode_{k}")]
        elif t.endswith("Normalize"):
            normalize = True
    return (modes, normalize) if modes else None


def sentence_embedding(h: np.ndarray, mask: np.ndarray, modes: list[str], normalize: bool) -> np.ndarray:
    h = h.astype(np.float32)
    m = mask.astype(np.float32)[:, :, None]
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(h[:, 0])
        elif mode == "max_tokens":
            parts.append(np.where(m > 0, h, np.float32(-1e9)).max(axis=1))
        elif mode in ("mean_tokens", "mean_sqrt_len_tokens"):
            s = (h * m).sum(axis=1, dtype=np.float32)
            n = np.maximum(m.sum(axis=1, dtype=np.float32), np.float32(1e-9))
            parts.append(s / n if mode == "mean_tokens" else s / np.sqrt(n))
        else:
            raise EngineError(f"sentence-transformers pooling mode `{mode}` is not implemented by this adapter")
    e = np.concatenate(parts, axis=1)
    if normalize:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), np.float32(1e-12))
    return e


class OrtEngine(Engine):
    def __init__(self):
        self.model: dict | None = None
        self.load_options: dict = {}
        self.loaded_key: tuple | None = None
        self.session = None
        self.meta: dict = {}
        self.decode_key: tuple | None = None
        self.decode_sessions: list = []

    def load(self, model: dict, options: dict) -> dict:
        self.model = model
        self.load_options = dict(options or {})
        o = effective_options(self.load_options)
        info = self._ensure(o)
        taps = sorted(self.meta["outputs"]) + self._named_outputs()
        decode = self.model["class"] in onnx_export.DECODE_FAMILIES and o["graph"] == "taps"
        return {"capabilities": {"decode": decode, "blocks": False}, "taps": taps, "info": info}

    def _named_outputs(self) -> list[str]:
        names = []
        if "last_hidden_state" in self.meta["outputs"]:
            if self.model["class"] in POOLED_FAMILIES:
                names += list(POOLED)
            if self.sentence is not None:
                names.append("sentence_embedding")
        return names

    def _ensure(self, o: dict) -> str:
        """Export (or reuse) the graph and open the session the options ask for."""
        key = (o["graph"], json.dumps(o["optimizer"], sort_keys=True), o["n_threads"], o["ort_level"])
        if key == self.loaded_key:
            return self.info
        import onnxruntime as ort

        family = self.model.get("class") or self.model.get("family")
        if family not in onnx_export.OPTIMIZER_MODEL_TYPES:
            raise EngineError(f"family `{family}` is not supported by this adapter", f"supported: {', '.join(onnx_export.OPTIMIZER_MODEL_TYPES)}")
        model_dir = Path(self.model["dir"])
        t0 = time.perf_counter()
        try:
            e = onnx_export.export(model_dir, family, o["graph"], o["optimizer"])
        except (ValueError, RuntimeError, OSError) as err:
            raise EngineError(f"exporting {model_dir} to ONNX failed: {err}") from None
        t1 = time.perf_counter()
        self.session = make_session(e.path, o["n_threads"], o["ort_level"])
        self.meta = e.meta
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.sentence = sentence_pooling(model_dir)
        self.loaded_key = key
        how = "cached export" if e.cached else f"exported in {t1 - t0:.1f} s"
        fused = (e.meta.get("fusions") or {}).get("fused")
        self.info = (
            f"onnxruntime {ort.__version__} CPU, graph `{o['graph']}` (opset {e.meta.get('opset')}, {how}, {e.path.parent.name})"
            + (f", optimizer {json.dumps(o['optimizer'] or {})} fused {json.dumps(fused)}" if e.meta.get("optimizer") is not None else "")
            + f", {o['n_threads']} intra-op thread(s), session optimizations `{o['ort_level']}`"
        )
        print(f"ort_engine: {self.info}; session in {time.perf_counter() - t1:.2f} s", file=sys.stderr, flush=True)
        return self.info

    def feed(self, inputs: dict[str, np.ndarray], input_names: list[str]) -> tuple[dict, bool]:
        """The session's inputs, with HF's defaults for those the request lacks; and whether the
        positions are the same in every row (HF's default), when per-position taps have one row."""
        ids = inputs.get("input_ids")
        if ids is None:
            raise EngineError("the request has no input_ids")
        ids = ids.astype(np.int64)
        b, s = ids.shape
        feed = {"input_ids": ids}
        for name in input_names:
            if name == "input_ids":
                continue
            if name in inputs:
                feed[name] = np.ascontiguousarray(inputs[name].astype(np.int64))
            elif name == "attention_mask":
                feed[name] = np.ones((b, s), np.int64)
            elif name == "token_type_ids":
                feed[name] = np.zeros((b, s), np.int64)
            elif name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
            else:
                raise EngineError(f"the graph wants input `{name}`, which the request does not give")
        pos = feed.get("position_ids")
        uniform = pos is None or bool((pos == pos[:1]).all())
        return feed, uniform

    def forward(self, inputs, taps, options, case):
        # A request's options override the load's; a request without options keeps them.
        self._ensure(effective_options({**self.load_options, **(options or {})}))
        feed, uniform = self.feed(inputs, self.input_names)
        got = run(self.session, feed)
        mask = feed.get("attention_mask", np.ones(feed["input_ids"].shape, np.int64))
        derived: dict[str, np.ndarray] = {}
        hidden = got.get(self.meta["outputs"].get("last_hidden_state", ""))
        if hidden is not None and self.model["class"] in POOLED_FAMILIES:
            derived.update(pooled(hidden, mask))
        if hidden is not None and self.sentence is not None:
            derived["sentence_embedding"] = sentence_embedding(hidden, mask, *self.sentence)
        return collect(got, self.meta, taps, uniform, derived)

    def decode(self, inputs, tokens, taps, options, case):
        """The prompt through the `prefill` graph, then each token through the `step` graph with
        the KV cache the previous run returned (numpy arrays between runs)."""
        o = effective_options({**self.load_options, **(options or {})})
        family = self.model.get("class")
        if family not in onnx_export.DECODE_FAMILIES:
            raise EngineError(f"decode is implemented for {', '.join(onnx_export.DECODE_FAMILIES)}, not {family}")
        if o["graph"] != "taps":
            raise EngineError(f"decode runs the taps graphs (prefill + step), not `{o['graph']}`", "leave the option `graph` at `taps` for decode cases")
        key = (o["n_threads"], o["ort_level"])
        if self.decode_key != key:
            sessions = []
            for graph in onnx_export.DECODE_GRAPHS:
                try:
                    e = onnx_export.export(Path(self.model["dir"]), family, graph)
                except (ValueError, RuntimeError, OSError) as err:
                    raise EngineError(f"exporting the `{graph}` graph failed: {err}") from None
                sessions.append((make_session(e.path, o["n_threads"], o["ort_level"]), e.meta))
            self.decode_sessions, self.decode_key = sessions, key
        (pre, pre_meta), (step, step_meta) = self.decode_sessions
        feed, uniform = self.feed(inputs, [i.name for i in pre.get_inputs()])
        got = run(pre, feed)
        steps = [collect(got, pre_meta, taps, uniform, {})]
        tokens = tokens.astype(np.int64)
        b = feed["input_ids"].shape[0]
        if tokens.shape[0] != b:
            raise EngineError(f"decode tokens have {tokens.shape[0]} rows, the prompt {b}")
        mask = feed["attention_mask"]
        pos = feed["position_ids"][:, -1:] + 1
        for k in range(tokens.shape[1]):
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
            sfeed = {"input_ids": np.ascontiguousarray(tokens[:, k : k + 1]), "attention_mask": mask, "position_ids": pos}
            for i in step.get_inputs():
                if i.name.startswith("past."):
                    sfeed[i.name] = got["present." + i.name[len("past.") :]]
            got = run(step, sfeed)
            steps.append(collect(got, step_meta, taps, bool((pos == pos[:1]).all()), {}))
            pos = pos + 1
        return steps

def run(session, feed: dict) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def collect(got: dict, meta: dict, taps: list[dict], uniform: bool, derived: dict) -> tuple[dict, dict]:
    """The requested taps from a run's outputs (under the engine's names, else HF's), and why
    the others are not there."""
    outs = meta["outputs"]
    per_position = set(meta.get("per_position") or [])
    result, missing = {}, {}
    for t in taps:
        hf_name = t["hf"]
        out_name = t.get("engine") or hf_name
        if hf_name in outs:
            a = got[outs[hf_name]]
            if hf_name in per_position and uniform:
                a = a[:1]  # HF's default positions are one row, broadcast over the batch
            result[out_name] = a
        elif hf_name in derived:
            result[out_name] = derived[hf_name]
        elif hf_name in (meta.get("not_exported") or {}):
            missing[hf_name] = f"not a graph output: {meta['not_exported'][hf_name]}"
        elif meta["graph"] in ("outputs", "optimized"):
            missing[hf_name] = f"the `{meta['graph']}` graph has only {', '.join(outs)}"
        else:
            missing[hf_name] = "no such module output in the exported graph"
    return result, missing


def main() -> int:
    return serve(OrtEngine)


if __name__ == "__main__":
    sys.exit(main())
