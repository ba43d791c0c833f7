#!/usr/bin/env python3
"""An example external engine: HF transformers itself, run in bfloat16.

    tools/.venv/bin/python tools/adapters/hf_bf16.py REQUEST_JSON

It speaks the harness's external-engine protocol (docs/engine-protocol.md) the way a foreign
engine would: it reads request.json and the input .npy files, runs the model with every weight
and activation in bfloat16, and writes the requested tensors into the output directory as one
bfloat16 .safetensors file, under its *own* ggml-like names (`blk.0.attn_out`, `token_embd`) and
with per-layer tensors in ggml's reversed dimension order. cases/engines/hf-bf16.yaml holds the
rules that map those names and layouts back onto HF's, so the harness's mapping is exercised
end to end. What it computes is HF's own forward, so every difference from the float32 goldens
is bfloat16 rounding: a measured baseline for what a correct bf16 port looks like.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# A script, not a module of the package: run from a checkout, it imports the checkout's
# harness_goldens (../harness_goldens), installed or not; copied elsewhere, the installed one.
_TOOLS = Path(__file__).resolve().parent.parent
if (_TOOLS / "harness_goldens").is_dir():
    sys.path.insert(0, str(_TOOLS))

from harness_goldens import hf  # noqa: E402  (sets the deterministic torch environment first)
import patches  # noqa: E402  (tools/adapters/patches.py, beside this script: $HARNESS_HF_PATCH)
from harness_goldens.spec import ModelSpec, SpecError  # noqa: E402

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

PROTOCOL = 1

# HF module path -> this engine's tensor name (first match wins). Llama and Qwen3 share them.
NAMES = [
    (r"model\.embed_tokens", "token_embd"),
    (r"model\.rotary_emb", "rope_cos"),
    (r"model\.layers\.(\d+)\.input_layernorm", r"blk.\1.attn_norm"),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj", r"blk.\1.attn_\2"),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k)_norm", r"blk.\1.attn_\2_norm"),
    (r"model\.layers\.(\d+)\.self_attn", r"blk.\1.attn_out"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm", r"blk.\1.ffn_norm"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj", r"blk.\1.ffn_\2"),
    (r"model\.layers\.(\d+)\.mlp\.act_fn", r"blk.\1.ffn_act"),
    (r"model\.layers\.(\d+)\.mlp", r"blk.\1.ffn_out"),
    (r"model\.layers\.(\d+)", r"blk.\1.out"),
    (r"model\.norm", "output_norm"),
    (r"lm_head", "output"),
    (r"last_hidden_state", "result_norm"),
    (r"logits", "result_output"),
]


def own_name(hf_name: str) -> str:
    for pattern, repl in NAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, repl, hf_name)
    return hf_name


def own_layout(name: str, a: np.ndarray) -> np.ndarray:
    """Per-layer tensors in ggml order (dimensions reversed); the RoPE table without its
    leading batch axis, as one [seq, dim] matrix."""
    if name.startswith("blk."):
        return np.ascontiguousarray(a.transpose(tuple(reversed(range(a.ndim)))))
    if name == "rope_cos":
        return np.ascontiguousarray(a.reshape(a.shape[-2], a.shape[-1]))
    return a


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: hf_bf16.py REQUEST_JSON", file=sys.stderr)
        return 2
    req_path = Path(sys.argv[1])
    req = json.loads(req_path.read_text())
    if req.get("protocol") != PROTOCOL:
        print(f"error: {req_path}: protocol {req.get('protocol')} is not {PROTOCOL}", file=sys.stderr)
        return 2
    if req.get("dtype") != "bfloat16":
        print(f"error: {req_path}: this engine writes bfloat16, the engine file declares {req.get('dtype')}", file=sys.stderr)
        return 2
    m = req["model"]
    model_dir = Path(m["dir"])
    spec = ModelSpec(id=m["id"], file=model_dir / "config.json", family=m["family"], source={}, config=m["config"], dtype=m["dtype"], digest="")
    try:
        model = hf.load(spec, model_dir, dtype=torch.bfloat16)
        patches.apply(model)
    except (SpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    base = req_path.parent
    # Integer inputs as rows (hf.run makes them torch.long); float and bool ones (a case's named
    # inputs: pixel_values, ...) as arrays, which keep their dtype.
    inputs = {k: np.load(base / v["file"], allow_pickle=False) for k, v in req["inputs"].items()}
    inputs = {k: a if a.dtype.kind in "fb" else a.tolist() for k, a in inputs.items()}
    wanted = [t["hf"] for t in req["taps"]]
    _, arrays = hf.run(model, inputs, wanted)
    out = {}
    for name in wanted:
        if name not in arrays:
            continue  # the harness reports a missing tap by name
        a = arrays[name]
        t = torch.from_numpy(own_layout(own_name(name), a)).to(torch.bfloat16)
        # hf.run hands bfloat16 activations over as float32; the round trip must be exact.
        if not torch.equal(t.to(torch.float32), torch.from_numpy(own_layout(own_name(name), a))):
            print(f"error: `{name}` is not a bfloat16 tensor", file=sys.stderr)
            return 1
        out[own_name(name)] = t.contiguous()
    safetensors.torch.save_file(out, str(Path(req["output_dir"]) / "taps.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
