#!/usr/bin/env python3
"""Export an HF checkpoint to ONNX for the onnxruntime engine (tools/adapters/ort_engine.py).

    tools/.venv/bin/python tools/adapters/onnx_export.py MODEL_DIR FAMILY
        [--graph taps|outputs|optimized|prefill|step] [--optimizer '{"enable_gelu_approximation": true}']
        [--out FILE.onnx]

The kinds of graph:

- `taps`: the model with a forward hook on every module that runs exactly once per forward; the
  wrapper returns each module's output (its first element when it returns a tuple) as an extra
  graph output named by its HF module path (`model.layers.0.self_attn`), plus `last_hidden_state`
  and `logits`. A module whose output is the very tensor of another (a Dropout in eval, an
  attention block returning its o_proj) is one graph output; `meta.json` maps every tap to it.
- `outputs`: what production exports: `logits` when the model has a head, else
  `last_hidden_state`. `optimized` is that graph through onnxruntime.transformers' optimizer
  (fused EmbedLayerNormalization / SkipLayerNormalization / BiasGelu ...; attention is not fused on
  these graphs, see ORT_NOTES.md); `--optimizer` sets FusionOptions fields. The optimizer also
  runs on a `taps` graph when `--optimizer` is given, so that a fusion's error can be located tap
  by tap; taps whose nodes a fusion removed are dropped from that graph (`not_exported`).
- `prefill` / `step` (Llama, Qwen3): the taps graph returning the KV cache, and the taps graph of
  one decode step taking it (see DECODE_GRAPHS).

The graph's inputs are those of input_ids / attention_mask / token_type_ids / position_ids the
model's forward takes, int64 [batch, seq], both axes dynamic. The export is torch.export
(torch.onnx.export(dynamo=True), needs onnxscript) of the float32 model with eager attention, as
the goldens are made. After exporting, onnxruntime runs the graph on inputs of another batch and
length with padding and compares every output with HF eager (`meta.json`'s `check`), so a shape
the exporter froze is caught here, not in a trial.

Exports are cached outside the repository under $HARNESS_ONNX_CACHE, else
$XDG_CACHE_HOME/harness/onnx, else ~/.cache/harness/onnx, one directory per key (weights sha256,
config.json, family, graph kind, optimizer options, this exporter's version, torch / transformers
/ onnxscript / onnx versions, and onnxruntime's for optimized graphs), written to a temporary
directory and renamed into place, so a reader never sees half an export.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

# A script, not a module of the package: run from a checkout, it imports the checkout's
# harness_goldens (../harness_goldens), installed or not; copied elsewhere, the installed one.
_TOOLS = Path(__file__).resolve().parent.parent
if (_TOOLS / "harness_goldens").is_dir():
    sys.path.insert(0, str(_TOOLS))

import numpy as np  # noqa: E402

from harness_goldens.spec import ModelSpec, sha256_file  # noqa: E402

# torch and transformers (harness_goldens.hf) are imported by the functions that export, not here: a
# cached export is found and run without them (importing them costs ~10 s of CPU here).

# Bump when the exported graphs change for the same inputs (wrapper, naming, options).
EXPORTER_VERSION = 1
GRAPHS = ("taps", "outputs", "optimized")
# Decode (causal families): `prefill` is the taps graph that also returns the KV cache
# (`present.{layer}.key|value`, [batch, kv_heads, seq, head_dim]); `step` takes one token per row
# and the cache so far (`past.{layer}.key|value`) and returns the taps and the grown cache.
DECODE_GRAPHS = ("prefill", "step")
DECODE_FAMILIES = ("LlamaForCausalLM", "Qwen3ForCausalLM")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# onnxruntime.transformers' optimizer model type per family.
OPTIMIZER_MODEL_TYPES = {
    "BertModel": "bert",
    "DistilBertForSequenceClassification": "bert",
    "ModernBertModel": "bert",
    "LlamaForCausalLM": "qwen3",
    "Qwen3ForCausalLM": "qwen3",
}


def log(msg: str) -> None:
    print(f"onnx_export: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    if os.environ.get("HARNESS_ONNX_CACHE"):
        return Path(os.environ["HARNESS_ONNX_CACHE"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "harness" / "onnx"


def versions(graph: str) -> dict:
    """Installed versions of what shapes the graph (package metadata: no imports)."""
    names = ["torch", "transformers", "onnx", "onnxscript"] + (["onnxruntime"] if graph == "optimized" else [])
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def normalize_optimizer(graph: str, optimizer: dict | None) -> dict | None:
    """The optimizer options that take part in the export (None: no optimizer)."""
    if graph == "optimized":
        return dict(sorted((optimizer or {}).items()))
    if graph == "taps" and optimizer:
        return dict(sorted(optimizer.items()))
    return None


def cache_key(model_dir: Path, family: str, graph: str, optimizer: dict | None) -> tuple[str, dict]:
    parts = {
        "exporter_version": EXPORTER_VERSION,
        "family": family,
        "graph": graph,
        "optimizer": normalize_optimizer(graph, optimizer),
        "weights_sha256": sha256_file(model_dir / "model.safetensors"),
        "config": json.loads((model_dir / "config.json").read_text()),
        "versions": versions(graph),
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


@dataclass
class Exported:
    path: Path  # model.onnx
    meta: dict
    cached: bool


def export(model_dir: Path, family: str, graph: str = "taps", optimizer: dict | None = None, cache: Path | None = None) -> Exported:
    """The ONNX graph of the checkpoint in `model_dir`, from the cache or exported now."""
    if graph not in GRAPHS + DECODE_GRAPHS:
        raise ValueError(f"graph `{graph}` is not one of {', '.join(GRAPHS + DECODE_GRAPHS)}")
    if graph in DECODE_GRAPHS and family not in DECODE_FAMILIES:
        raise ValueError(f"`{graph}` graphs are for {', '.join(DECODE_FAMILIES)}, not {family}")
    model_dir = Path(model_dir).resolve()
    root = cache or cache_root()
    key, parts = cache_key(model_dir, family, graph, optimizer)
    final = root / key
    if (final / "meta.json").exists() and (final / "model.onnx").exists():
        return Exported(final / "model.onnx", json.loads((final / "meta.json").read_text()), True)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        t0 = time.perf_counter()
        # torch.onnx prints its progress to stdout, which is the protocol channel in v2.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            meta = _export_into(tmp, model_dir, family, graph, normalize_optimizer(graph, optimizer))
        meta.update(key=key, key_parts={k: v for k, v in parts.items() if k != "config"}, export_seconds=round(time.perf_counter() - t0, 2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process exported it meanwhile
            return Exported(final / "model.onnx", json.loads((final / "meta.json").read_text()), True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(final / "model.onnx", meta, False)


def remove_stale_tmp(root: Path, age_s: float = 3600) -> None:
    """Remove half-written exports left by a killed exporter (the harness SIGKILLs an engine at
    its timeout, so the cleanup in `export` does not run): `.tmp-*` older than an hour."""
    now = time.time()
    for d in root.glob(".tmp-*"):
        try:
            if now - d.stat().st_mtime > age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def load_model(model_dir: Path, family: str):
    from harness_goldens import hf

    spec = ModelSpec(id=model_dir.name, file=model_dir / "config.json", family=family, source={}, config={}, dtype="float32", digest="")
    return hf.load(spec, model_dir)


def model_inputs(model) -> list[str]:
    params = inspect.signature(model.forward).parameters
    return [n for n in INPUT_NAMES if n in params]


def example_inputs(model, names: list[str], batch: int, seq: int, pad: int) -> dict:
    """Deterministic inputs (torch tensors): ids spread over the vocabulary, the last row
    right-padded by `pad`."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = (torch.arange(batch * seq, dtype=torch.long).reshape(batch, seq) * 7 + 3) % vocab
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad:
        mask[-1, seq - pad :] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        tt = torch.zeros(batch, seq, dtype=torch.long)
        if int(getattr(model.config, "type_vocab_size", 1)) > 1:
            tt[:, seq // 2 :] = 1
        out["token_type_ids"] = tt
    if "position_ids" in names:
        out["position_ids"] = torch.arange(seq, dtype=torch.long).unsqueeze(0).expand(batch, seq).contiguous()
    return {k: v for k, v in out.items() if k in names}


def probe(model, names: list[str]) -> tuple[list[str], dict, list[str]]:
    """Run HF eager once with its default positions: (module taps in forward order, why other
    modules are not taps, per-position taps: those HF gives a leading axis of 1 in a batch of 2)."""
    from harness_goldens import hf

    inputs = example_inputs(model, [n for n in names if n != "position_ids"], 2, 6, 2)
    order, arrays = hf.run(model, {k: v.tolist() for k, v in inputs.items()}, None)
    modules = dict(model.named_modules())
    counts: dict[str, int] = {}
    for n in order:
        counts[n] = counts.get(n, 0) + 1
    taps, skipped = [], {}
    for n in order:
        if n not in modules or n in taps or n in skipped:
            continue
        if counts[n] > 1:
            skipped[n] = f"its forward runs {counts[n]} times per pass"
        elif n not in arrays:
            skipped[n] = "its output is not a tensor"
        else:
            taps.append(n)
    per_position = [n for n, a in arrays.items() if a.ndim >= 2 and a.shape[0] == 1]
    return taps, skipped, per_position


def tapped(model, taps: list[str], graph: str):
    """The model wrapped for export: its forward returns the captured module outputs, then
    last_hidden_state and logits (`outputs` graphs: logits, else last_hidden_state; `prefill` and
    `step` graphs then the KV cache). It records the output names it returned and which taps
    alias an earlier output (the same tensor)."""
    import torch
    from harness_goldens import hf
    from transformers import DynamicCache

    class Tapped(torch.nn.Module):
        def __init__(self, model, taps: list[str], graph: str):
            super().__init__()
            self.model = model
            self.taps = taps
            self.graph = graph
            self.base = hf.base_model_name(model)
            self.modules_by_name = dict(model.named_modules())
            self.use_cache = "use_cache" in inspect.signature(model.forward).parameters
            self.output_names: list[str] = []
            self.aliases: dict[str, str] = {}

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, past=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids, "position_ids": position_ids}
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            decode = self.graph in DECODE_GRAPHS
            if self.use_cache:
                kwargs["use_cache"] = decode
            if past is not None:
                cache = DynamicCache(config=self.model.config)
                for i in range(len(past) // 2):
                    cache.update(past[2 * i], past[2 * i + 1], i)
                kwargs["past_key_values"] = cache
            captured: dict[str, torch.Tensor] = {}
            handles = []

            def hook(name):
                def fn(_mod, _inp, out):
                    t = hf._first(out)
                    if isinstance(t, torch.Tensor):
                        captured[name] = t

                return fn

            if self.graph == "taps" or decode:
                handles = [self.modules_by_name[n].register_forward_hook(hook(n)) for n in self.taps]
            if self.base:
                handles.append(self.modules_by_name[self.base].register_forward_hook(hook("last_hidden_state")))
            try:
                out = self.model(**kwargs)
            finally:
                for h in handles:
                    h.remove()
            if not self.base:
                captured["last_hidden_state"] = hf._first(out)
            logits = getattr(out, "logits", None)
            if logits is not None:
                captured["logits"] = logits
            if self.graph in ("outputs", "optimized"):
                name = "logits" if logits is not None else "last_hidden_state"
                captured = {name: captured[name]}
            if decode:
                for i, layer in enumerate(out.past_key_values.layers):
                    captured[f"present.{i}.key"] = layer.keys
                    captured[f"present.{i}.value"] = layer.values
            names, tensors, aliases = [], [], {}
            for name, t in captured.items():
                same = next((n for n, u in zip(names, tensors) if u is t), None)
                if same is not None:
                    aliases[name] = same
                else:
                    names.append(name)
                    tensors.append(t)
            self.output_names, self.aliases = names, aliases
            return tuple(tensors)

    return Tapped(model, taps, graph).eval()


def _export_into(out: Path, model_dir: Path, family: str, graph: str, optimizer: dict | None) -> dict:
    import torch

    log(f"exporting {model_dir} ({family}) as a `{graph}` graph{' with optimizer ' + json.dumps(optimizer) if optimizer is not None else ''}")
    model = load_model(model_dir, family)
    names = model_inputs(model)
    taps, skipped, per_position = probe(model, names) if graph in ("taps",) + DECODE_GRAPHS else ([], {}, [])
    wrapper = tapped(model, taps, graph)
    batch = torch.export.Dim("batch", min=1, max=4096)
    max_pos = int(getattr(model.config, "max_position_embeddings", 4096) or 4096)
    if graph == "step":
        example = step_inputs(model, wrapper, names, 2, 5)
        past_len = torch.export.Dim("past", min=1, max=max_pos - 1)
        dynamic = {"input_ids": {0: batch}, "attention_mask": {0: batch, 1: past_len + 1}, "position_ids": {0: batch}, "past": [{0: batch, 2: past_len}] * len(example["past"])}
        input_names = [n for n in example if n != "past"] + [f"past.{i // 2}.{'value' if i % 2 else 'key'}" for i in range(len(example["past"]))]
    else:
        example = example_inputs(model, names, 2, 7, 0 if graph == "prefill" else 3)
        seq = torch.export.Dim("seq", min=1, max=max_pos)
        dynamic = {n: {0: batch, 1: seq} for n in example}
        input_names = list(example)
    with torch.no_grad():
        wrapper(**example)  # records output_names / aliases
        output_names = list(wrapper.output_names)
        program = torch.onnx.export(
            wrapper, (), kwargs=example, dynamo=True, dynamic_shapes=dynamic, input_names=input_names, output_names=output_names, optimize=True, verbose=False
        )
    path = out / "model.onnx"
    program.save(str(path))
    opset = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    outputs = {n: n for n in output_names}
    outputs.update(wrapper.aliases)
    meta = {
        "exporter_version": EXPORTER_VERSION,
        "family": family,
        "graph": graph,
        "optimizer": optimizer,
        "inputs": input_names,
        "opset": opset,
        "outputs": outputs,
        "module_taps": taps,
        "not_exported": skipped,
        "per_position": [t for t in per_position if t in outputs],
    }
    if optimizer is not None:
        meta["fusions"] = optimize(path, family, model.config, optimizer)
        gone = drop_dangling_outputs(path)
        if gone:
            # The fusions removed the nodes that computed these taps (a bias Add folded into
            # BiasGelu / SkipLayerNormalization): those taps no longer exist in this graph.
            why = "fused away by onnxruntime.transformers' optimizer (its fusions do not keep graph outputs)"
            for tap, out_name in list(outputs.items()):
                if out_name in gone:
                    del outputs[tap]
                    meta["not_exported"][tap] = why
            meta["per_position"] = [t for t in meta["per_position"] if t in outputs]
            meta["fusions"]["fused_away"] = sorted(gone)
    if graph == "step":
        meta["check"] = check(path, wrapper, step_inputs(model, wrapper, names, 3, 4), strict=True)
    else:
        meta["check"] = check(path, wrapper, example_inputs(model, names, 3, 5, 0 if graph == "prefill" else 2), strict=optimizer is None)
    log(f"exported {len(outputs)} outputs ({len(output_names)} distinct); check vs HF eager: max_abs {meta['check']['max_abs']:.2e}")
    return meta


def optimize(path: Path, family: str, config, options: dict) -> dict:
    """onnxruntime.transformers' optimizer over `path` in place (python fusions only, opt_level 0,
    so the saved graph is not specialized to this machine). Returns the fused operator counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = OPTIMIZER_MODEL_TYPES.get(family, "bert")
    fo = FusionOptions(model_type)
    for k, v in options.items():
        if not hasattr(fo, k):
            raise ValueError(f"unknown optimizer option `{k}` (onnxruntime.transformers FusionOptions has {', '.join(sorted(vars(fo)))})")
        setattr(fo, k, v)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0) or 0)
    biased = zero_layernorm_bias(path)
    opt = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=hidden, optimization_options=fo, opt_level=0, use_gpu=False)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(path))
    out = {"model_type": model_type, "fused": stats}
    if biased:
        out["workaround"] = f"{biased} bias-free LayerNormalization nodes given a zero bias (the SkipLayerNormalization fusion indexes a bias input)"
    return out


def zero_layernorm_bias(path: Path) -> int:
    """Give every LayerNormalization without a bias (ModernBERT's `norm_bias: false`) an explicit
    zero bias, in place: onnxruntime.transformers' SkipLayerNormalization fusion (1.31.1) reads
    the node's third input unconditionally and fails with IndexError otherwise. Adding zero is
    exact. Returns how many nodes it changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx") or len(node.input) >= 3:
            continue
        scale = inits.get(node.input[1])
        if scale is None:
            continue
        name = f"{node.input[1]}.zero_bias"
        if name not in inits:
            zero = np.zeros(numpy_helper.to_array(scale).shape, dtype=numpy_helper.to_array(scale).dtype)
            inits[name] = numpy_helper.from_array(zero, name)
            model.graph.initializer.append(inits[name])
        node.input.append(name)
        changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


def drop_dangling_outputs(path: Path) -> set[str]:
    """Remove graph outputs that no node, input or initializer produces any more (the optimizer
    leaves them behind when it fuses their producer away, and onnxruntime refuses such a graph).
    Returns their names."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {i.name for i in g.initializer}
    gone = {o.name for o in g.output if o.name not in produced}
    if gone:
        keep = [o for o in g.output if o.name not in gone]
        del g.output[:]
        g.output.extend(keep)
        onnx.save(model, str(path))
    return gone


def step_inputs(model, wrapper, names: list[str], batch: int, past: int) -> dict:
    """Inputs of a `step` graph: one token per row after a prompt of `past` tokens, whose KV
    cache comes from HF eager (`past`: [key 0, value 0, key 1, ...])."""
    import torch

    prompt = example_inputs(model, names, batch, past, 0)
    with torch.no_grad():
        out = model(**prompt, use_cache=True)
    cache = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    vocab = int(model.config.vocab_size)
    ids = (torch.arange(batch, dtype=torch.long).unsqueeze(1) * 11 + 5) % vocab
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, past + 1, dtype=torch.long),
        "position_ids": torch.full((batch, 1), past, dtype=torch.long),
        "past": cache,
    }


def check(path: Path, wrapper, inputs: dict, strict: bool) -> dict:
    """onnxruntime on inputs of another shape than the export's (e.g. batch 3, seq 5, the last
    row padded) vs HF eager. `strict` (no optimizer): more than 1e-3 anywhere is an export bug."""
    import onnxruntime as ort
    import torch
    from harness_goldens import hf

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    flat = {k: v for k, v in inputs.items() if k != "past"}
    for i, t in enumerate(inputs.get("past") or []):
        flat[f"past.{i // 2}.{'value' if i % 2 else 'key'}"] = t
    feed = {i.name: flat[i.name].numpy() for i in sess.get_inputs()}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    with torch.no_grad():
        want = dict(zip(wrapper.output_names, wrapper(**inputs)))
    mask = inputs["attention_mask"].numpy().astype(bool)
    worst, where = 0.0, None
    for name, w in want.items():
        if name not in got:
            continue  # fused away
        w = hf.to_numpy(w)
        g = got[name]
        if g.shape != w.shape:
            raise RuntimeError(f"`{name}`: onnxruntime gives shape {list(g.shape)}, HF {list(w.shape)}: the export froze a shape")
        d = np.abs(g.astype(np.float64) - w.astype(np.float64))
        if d.ndim >= 2 and d.shape[:2] == mask.shape:
            d = d[mask]
        m = float(d.max()) if d.size else 0.0
        if m > worst:
            worst, where = m, name
    if strict and worst > 1e-3:
        raise RuntimeError(f"the exported graph differs from HF eager by {worst:.3e} at `{where}`")
    return {"max_abs": worst, "at": where, "shape": list(inputs["input_ids"].shape)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("family")
    ap.add_argument("--graph", choices=GRAPHS + DECODE_GRAPHS, default="taps")
    ap.add_argument("--optimizer", type=json.loads, default=None, help="FusionOptions fields as JSON")
    ap.add_argument("--out", type=Path, help="also copy the .onnx here")
    args = ap.parse_args()
    e = export(args.model_dir, args.family, args.graph, args.optimizer)
    log(f"{'cached' if e.cached else 'exported'}: {e.path}")
    if args.out:
        shutil.copyfile(e.path, args.out)
    print(json.dumps(e.meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
