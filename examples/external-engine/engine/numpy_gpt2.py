#!/usr/bin/env python3
"""numpy-gpt2: a GPT-2 forward in numpy alone, as an engine under test for the harness.

The harness runs it once per forward (docs/engine-protocol.md in the harness's repository):

    python3 engine/numpy_gpt2.py REQUEST_JSON      # or with HARNESS_REQUEST=REQUEST_JSON

It reads the request, the checkpoint (model.dir/model.safetensors, HF names) and the inputs
(.npy beside the request), runs the model in float32, and writes every requested tap as
<its engine name>.npy into the request's output_dir. Its names are ggml-like (`blk.0.attn_out`);
cases/engines/numpy-gpt2.yaml maps them to HF's module names.

A planted bug for the example's failing run: NUMPY_ENGINE_BUG=gelu_erf uses the exact (erf)
GELU where GPT-2's config says gelu_new (the tanh approximation), a classic port bug.
"""

import json
import math
import os
import sys

try:
    import numpy as np
except ImportError:
    sys.exit(f"numpy-gpt2: {sys.executable} has no numpy (hint: point HARNESS_PYTHON at the Python that has the goldens tool, or pip install numpy)")

# safetensors' dtype codes -> numpy (little-endian). BF16 is read as uint16 and widened below.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path):
    """{name: array}: an 8-byte little-endian header length, a JSON header, then raw data."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in DTYPES:
            sys.exit(f"numpy-gpt2: {path}: tensor {name} has dtype {t['dtype']}, not one of {sorted(DTYPES)}")
        start, end = t["data_offsets"]
        a = np.frombuffer(data[base + start : base + end], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
        if t["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = a.astype(np.float32)
    return tensors


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):  # HF's gelu_new
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):  # HF's gelu
    return (0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))).astype(x.dtype)


ACTIVATIONS = {"gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu": gelu_erf}


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(w, cfg, ids, mask, bug):
    """Every intermediate tensor under the engine's own names: {name: array}."""
    out = {}
    batch, seq = ids.shape
    hidden, heads = cfg["n_embd"], cfg["n_head"]
    hd, eps = hidden // heads, cfg["layer_norm_epsilon"]
    act = ACTIVATIONS.get(cfg.get("activation_function", "gelu_new"))
    if act is None:
        sys.exit(f"numpy-gpt2: activation_function {cfg['activation_function']!r} is not supported")
    if bug == "gelu_erf":
        act = gelu_erf
    out["token_embd"] = w["transformer.wte.weight"][ids]  # [batch, seq, hidden]
    out["position_embd"] = w["transformer.wpe.weight"][:seq]  # [seq, hidden]: no batch axis
    x = out["token_embd"] + out["position_embd"]
    # Causal and padding mask together: query i sees key j <= i when j is a real token.
    allowed = np.tril(np.ones((seq, seq), dtype=bool))[None, None] & (mask[:, None, None, :] != 0)
    for i in range(cfg["n_layer"]):
        p, b = f"transformer.h.{i}.", f"blk.{i}."
        h = out[b + "attn_norm"] = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        # Conv1D: weights are [in, out], so y = x @ W + b (no transpose).
        qkv = out[b + "attn_qkv"] = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(batch, seq, heads, hd).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(hd))
        # A large finite negative, as HF's eager attention: a fully masked (padding) row stays finite.
        scores = np.where(allowed, scores, np.finfo(np.float32).min)
        ctx = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        a = out[b + "attn_proj"] = ctx @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        out[b + "attn_out"] = a  # the attention module's output (its dropout is off in eval)
        x = x + a
        h = out[b + "ffn_norm"] = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        up = out[b + "ffn_up"] = h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        g = out[b + "ffn_act"] = act(up)
        m = out[b + "ffn_down"] = g @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        out[b + "ffn_out"] = m
        x = out[b + "out"] = x + m
    out["output_norm"] = layer_norm(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    # Tied embeddings: the LM head is wte transposed (lm_head.weight is not in the checkpoint).
    head = w.get("lm_head.weight", w["transformer.wte.weight"])
    out["result_output"] = out["output_norm"] @ head.T
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("HARNESS_REQUEST")
    if not path:
        sys.exit("usage: numpy_gpt2.py REQUEST_JSON (or set HARNESS_REQUEST)")
    with open(path) as f:
        req = json.load(f)
    if req.get("protocol") != 1:
        sys.exit(f"numpy-gpt2: protocol {req.get('protocol')!r} is not supported (only 1)")
    model = req["model"]
    if model["family"] != "GPT2LMHeadModel":
        sys.exit(f"numpy-gpt2: family {model['family']} is not supported (only GPT2LMHeadModel)")
    here = os.path.dirname(os.path.abspath(path))
    inputs = {k: np.load(os.path.join(here, v["file"])) for k, v in req["inputs"].items()}
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", np.ones_like(ids))
    weights = read_safetensors(os.path.join(model["dir"], "model.safetensors"))
    bug = os.environ.get("NUMPY_ENGINE_BUG", "")
    if bug not in ("", "gelu_erf"):
        sys.exit(f"numpy-gpt2: unknown NUMPY_ENGINE_BUG={bug!r} (known: gelu_erf)")
    tensors = forward(weights, model["config"], ids, mask, bug)
    os.makedirs(req["output_dir"], exist_ok=True)
    for tap in req["taps"]:
        # The harness names each tap by our own name when its rules can; else by HF's.
        name = tap["engine"] or tap["hf"]
        if name not in tensors:
            sys.exit(f"numpy-gpt2: cannot produce tap {tap['hf']} (as {name})")
        np.save(os.path.join(req["output_dir"], name + ".npy"), np.ascontiguousarray(tensors[name], dtype=np.float32))


if __name__ == "__main__":
    main()
