"""Port bugs injected into HF itself, by forward hooks on its modules (or small per-module
monkeypatches).

An adapter that runs HF (tools/adapters/hf_bf16.py, tools/adapters/hf_patched.py) applies the
patches named in the environment variable HARNESS_HF_PATCH, so a test can run an engine with a
known bug that was written here, independently of the harness's reference engine and of its
diagnosis:

    HARNESS_HF_PATCH='skip:model.layers.1.post_feedforward_layernorm'
    HARNESS_HF_PATCH='scale:model.layers.*.mlp.down_proj:1.01;skip:model.norm'

Each patch is `kind:module[:argument]`; `module` is an HF module path, `*` matching one path
segment (an empty path is the model itself: `window::7`); several patches are separated by `;`.
Each kind is a bug a port makes, acting at the module it names:

| kind | argument | the port ... |
| --- | --- | --- |
| `skip` | | skips the module (its output is its input) |
| `scale` | factor | multiplies the module's output by a constant |
| `gelu_erf`, `gelu_tanh` | | computes the activation module as exact (erf) / tanh-approximated GELU |
| `eps` | value | uses another epsilon in the norm |
| `bias_drop` | | leaves out the Linear/Conv1D bias |
| `transpose_weight` | | applies a square Linear/Conv1D weight in the other orientation (x·W vs x·Wᵀ) |
| `shift_positions` | n | feeds position ids + n to a position embedding / rotary module |
| `stride` | n | runs a convolution with stride n, its output cut (or zero-padded) to HF's length |
| `rope_theta` | theta | builds the rotary cos/sin tables with another base |
| `mask_ignore` | | drops the attention mask given to the module (padding attended to) |
| `heads_swap` | i,j | swaps heads i and j of a per-head projection's output |
| `head_scale` | h,factor | scales head h of a per-head projection's output |
| `kv_group` | `tile` | maps query head h to kv head h % kv_heads (GQA repeat tiled, not interleaved) |
| `attn_scale` | value | scales the attention logits by `value` (an attention module's `scaling`) |
| `softcap_off` | | skips the attention logit soft-capping |
| `norm_plus_one` | | RMSNorm times w where the model uses (1 + w) (Gemma), or (1 + w) where it uses w |
| `window` | n or `none` | uses another sliding window (the model config's `sliding_window`) |
| `round`, `bf16`, `fp16` | dtype (`round` only) | keeps the module's output in reduced precision |
| `dropout_on` | p | leaves dropout on (random each forward) |
| `pool_last` | | pools the last position where the pooler reads the first ([CLS]) |
| `token_types_off` | | ignores token_type_ids (every token type 0) |
| `gate_up_swap` | | splits a fused gate_up projection in the wrong order (Phi-3 MLP) |
| `parallel_residual_off` | | computes a parallel-residual layer (GPT-NeoX) sequentially: the MLP reads x + attn |
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys

import torch
import torch.nn.functional as F

ENV = "HARNESS_HF_PATCH"


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(out, new):
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    if hasattr(out, "to_tuple") and hasattr(out, "keys"):
        k = next(iter(out.keys()))
        out[k] = new
        return out
    return new


def _output_hook(fn):
    """A forward hook replacing the module's (first) output by fn(module, input, output)."""

    def hook(m, args, out):
        return _replace_first(out, fn(m, _first(args), _first(out)))

    return hook


def _arg(kind: str, arg: str | None) -> str:
    if arg is None or arg == "":
        raise ValueError(f"{ENV}: `{kind}` needs an argument (`{kind}:module:argument`)")
    return arg


def _config(model):
    return getattr(model, "config", None)


def _head_dim(model) -> int:
    c = _config(model)
    hd = getattr(c, "head_dim", None)
    if isinstance(hd, int) and hd > 0:
        return hd
    hidden = next((getattr(c, k) for k in ("hidden_size", "n_embd", "dim") if isinstance(getattr(c, k, None), int)), None)
    heads = next((getattr(c, k) for k in ("num_attention_heads", "n_head", "n_heads") if isinstance(getattr(c, k, None), int)), None)
    if not hidden or not heads:
        raise ValueError(f"{ENV}: cannot tell the head size of {type(model).__name__} from its config")
    return hidden // heads


# --- kinds: each installs itself on (model, module path, module, argument) -------------------


def _skip(model, name, m, arg):
    """The module is skipped: its output is its first input."""

    def fn(_m, x, y):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            return x
        raise ValueError(f"skip: input shape {getattr(x, 'shape', None)} is not the output's {getattr(y, 'shape', None)}")

    m.register_forward_hook(_output_hook(fn))


def _scale(model, name, m, arg):
    """The module's output multiplied by a constant (a wrong scale factor)."""
    f = float(_arg("scale", arg))
    m.register_forward_hook(_output_hook(lambda _m, _x, y: y * f))


def _gelu(approximate: str):
    def install(model, name, m, arg):
        m.register_forward_hook(_output_hook(lambda _m, x, y: F.gelu(x, approximate=approximate).to(y.dtype)))

    return install


def _eps(model, name, m, arg):
    v = float(_arg("eps", arg))
    attrs = [a for a in ("eps", "variance_epsilon", "epsilon") if isinstance(getattr(m, a, None), float)]
    if not attrs:
        raise ValueError(f"{ENV}: eps: `{name}` ({type(m).__name__}) has no epsilon attribute")
    for a in attrs:
        setattr(m, a, v)


def _bias_drop(model, name, m, arg):
    b = getattr(m, "bias", None)
    if not isinstance(b, torch.Tensor):
        raise ValueError(f"{ENV}: bias_drop: `{name}` ({type(m).__name__}) has no bias")
    m.register_forward_hook(_output_hook(lambda _m, _x, y: y - b.to(y.dtype)))


def _is_conv1d(m) -> bool:
    # transformers.pytorch_utils.Conv1D (GPT-2): weight [in, out], y = x·W + b.
    return type(m).__name__ == "Conv1D"


def _transpose_weight(model, name, m, arg):
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"{ENV}: transpose_weight: `{name}` has no square 2-D weight")
    b = getattr(m, "bias", None)

    def fn(_m, x, y):
        # nn.Linear computes x·Wᵀ + b; Conv1D x·W + b: the port applies the other one.
        out = x @ (w if not _is_conv1d(m) else w.t())
        return (out + b if b is not None else out).to(y.dtype)

    m.register_forward_hook(_output_hook(fn))


def _shift_positions(model, name, m, arg):
    n = int(_arg("shift_positions", arg))
    off = getattr(m, "offset", None)
    if isinstance(off, int) and not isinstance(off, bool):
        # A learned table indexed from `offset` (BART, OPT: positions + 2): the port's offset is
        # off by n.
        m.offset = off + n
        return

    def pre(mod, args, kwargs):
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n
        elif isinstance(mod, torch.nn.Embedding):
            args = (args[0] + n, *args[1:])
        elif len(args) >= 2 and isinstance(args[1], torch.Tensor):
            args = (args[0], args[1] + n, *args[2:])
        else:
            raise ValueError(f"shift_positions: `{name}` was called without position ids")
        return args, kwargs

    m.register_forward_pre_hook(pre, with_kwargs=True)


def _stride(model, name, m, arg):
    n = int(_arg("stride", arg))
    if not isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
        raise ValueError(f"{ENV}: stride: `{name}` ({type(m).__name__}) is not a Conv1d/Conv2d")
    conv = F.conv1d if isinstance(m, torch.nn.Conv1d) else F.conv2d

    def fn(mod, x, y):
        out = conv(x, mod.weight, mod.bias, stride=n, padding=mod.padding, dilation=mod.dilation, groups=mod.groups)
        # The rest of the model expects HF's length (a fixed position table): the port keeps
        # the first positions, or pads with zeros.
        for axis in range(2, out.ndim):
            want = y.shape[axis]
            if out.shape[axis] > want:
                out = out.narrow(axis, 0, want)
            elif out.shape[axis] < want:
                pad = list(out.shape)
                pad[axis] = want - out.shape[axis]
                out = torch.cat([out, out.new_zeros(pad)], dim=axis)
        return out.to(y.dtype)

    m.register_forward_hook(_output_hook(fn))


def _rope_theta(model, name, m, arg):
    theta = float(_arg("rope_theta", arg))
    inv = getattr(m, "inv_freq", None)
    if not isinstance(inv, torch.Tensor):
        raise ValueError(f"{ENV}: rope_theta: `{name}` ({type(m).__name__}) is not a rotary embedding (no inv_freq)")
    dim = 2 * inv.numel()
    new_inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))

    def hook(mod, args, kwargs, out):
        x = args[0] if args else kwargs["x"]
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        freqs = pos[..., None].float() * new_inv.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        s = getattr(mod, "attention_scaling", 1.0)
        return ((emb.cos() * s).to(x.dtype), (emb.sin() * s).to(x.dtype))

    m.register_forward_hook(hook, with_kwargs=True)


def _mask_ignore(model, name, m, arg):
    def pre(_mod, args, kwargs):
        kwargs["attention_mask"] = None
        return args, kwargs

    m.register_forward_pre_hook(pre, with_kwargs=True)


def _per_head(model, name, arg, kind):
    hd = _head_dim(model)

    def view(y):
        if y.shape[-1] % hd:
            raise ValueError(f"{kind}: `{name}`'s output width {y.shape[-1]} is not a multiple of head_dim {hd}")
        return y.reshape(*y.shape[:-1], y.shape[-1] // hd, hd)

    return view


def _heads_swap(model, name, m, arg):
    i, j = (int(v) for v in _arg("heads_swap", arg).split(","))
    view = _per_head(model, name, arg, "heads_swap")

    def fn(_m, _x, y):
        h = view(y).clone()
        h[..., [i, j], :] = h[..., [j, i], :]
        return h.reshape(y.shape)

    m.register_forward_hook(_output_hook(fn))


def _head_scale(model, name, m, arg):
    h_s, f_s = _arg("head_scale", arg).split(",")
    h, f = int(h_s), float(f_s)
    view = _per_head(model, name, arg, "head_scale")

    def fn(_m, _x, y):
        v = view(y).clone()
        v[..., h, :] = v[..., h, :] * f
        return v.reshape(y.shape)

    m.register_forward_hook(_output_hook(fn))


def _module_globals(m, name, kind, **replacements):
    """Replace functions of the module's own modeling file while (only) its forward runs."""
    mod = sys.modules[type(m).__module__]
    for g in replacements:
        if not hasattr(mod, g):
            raise ValueError(f"{ENV}: {kind}: `{name}` ({type(m).__name__}) does not use `{g}`")
    orig = m.forward

    def forward(*args, **kwargs):
        saved = {g: getattr(mod, g) for g in replacements}
        for g, f in replacements.items():
            setattr(mod, g, f)
        try:
            return orig(*args, **kwargs)
        finally:
            for g, f in saved.items():
                setattr(mod, g, f)

    m.forward = forward


def _kv_group(model, name, m, arg):
    if _arg("kv_group", arg) != "tile":
        raise ValueError(f"{ENV}: kv_group: the argument is `tile` (query head h reads kv head h % kv_heads)")

    def repeat_kv_tiled(hidden_states, n_rep):
        # [batch, kv_heads, seq, hd] -> kv heads 0, 1, ..., 0, 1, ...: head h reads h % kv_heads.
        return hidden_states if n_rep == 1 else hidden_states.repeat(1, n_rep, 1, 1)

    _module_globals(m, name, "kv_group", repeat_kv=repeat_kv_tiled)


def _attn_scale(model, name, m, arg):
    if not isinstance(getattr(m, "scaling", None), float):
        raise ValueError(f"{ENV}: attn_scale: `{name}` ({type(m).__name__}) has no `scaling`")
    m.scaling = float(_arg("attn_scale", arg))


def _softcap_off(model, name, m, arg):
    if getattr(m, "attn_logit_softcapping", None) is None:
        raise ValueError(f"{ENV}: softcap_off: `{name}` ({type(m).__name__}) has no attention soft-capping")
    m.attn_logit_softcapping = None


def _norm_plus_one(model, name, m, arg):
    w = getattr(m, "weight", None)
    eps = next((getattr(m, a) for a in ("eps", "variance_epsilon") if isinstance(getattr(m, a, None), float)), None)
    if not isinstance(w, torch.Tensor) or eps is None:
        raise ValueError(f"{ENV}: norm_plus_one: `{name}` ({type(m).__name__}) is not an RMSNorm")
    gemma = "Gemma" in type(m).__name__

    def fn(_m, x, y):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        # Gemma multiplies by (1 + w): the port multiplies by w (and a Llama port by 1 + w).
        factor = w.float() if gemma else 1.0 + w.float()
        return (normed * factor).to(y.dtype)

    m.register_forward_hook(_output_hook(fn))


def _window(model, name, m, arg):
    v = _arg("window", arg)
    c = getattr(m, "config", None)
    if c is None or not hasattr(c, "sliding_window"):
        raise ValueError(f"{ENV}: window: `{name or type(m).__name__}` has no config with a sliding_window")
    # `none`: a window wider than any input (Gemma 3's mask functions refuse `None`).
    c.sliding_window = 1 << 20 if v.lower() == "none" else int(v)


DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _round_to(dtype):
    def install(model, name, m, arg):
        m.register_forward_hook(_output_hook(lambda _m, _x, y: y.to(dtype).to(y.dtype)))

    return install


def _round(model, name, m, arg):
    d = _arg("round", arg)
    if d not in DTYPES:
        raise ValueError(f"{ENV}: round: dtype `{d}` is not one of {sorted(DTYPES)}")
    _round_to(DTYPES[d])(model, name, m, arg)


def _dropout_on(model, name, m, arg):
    p = float(_arg("dropout_on", arg))
    m.register_forward_hook(_output_hook(lambda _m, _x, y: F.dropout(y, p=p, training=True)))


def _pool_last(model, name, m, arg):
    def pre(_mod, args, kwargs):
        key = "hidden_states"
        h = kwargs[key] if key in kwargs else args[0]
        bad = h.clone()
        bad[:, 0] = h[:, -1]
        if key in kwargs:
            kwargs[key] = bad
        else:
            args = (bad, *args[1:])
        return args, kwargs

    m.register_forward_pre_hook(pre, with_kwargs=True)


def _token_types_off(model, name, m, arg):
    def pre(_mod, args, kwargs):
        tt = kwargs.get("token_type_ids")
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = tt if tt is not None else ids
        if ref is None:
            raise ValueError(f"token_types_off: `{name}` was called without input_ids or token_type_ids")
        kwargs["token_type_ids"] = torch.zeros_like(ref)
        return args, kwargs

    m.register_forward_pre_hook(pre, with_kwargs=True)


def _gate_up_swap(model, name, m, arg):
    if not all(hasattr(m, a) for a in ("gate_up_proj", "down_proj", "activation_fn")):
        raise ValueError(f"{ENV}: gate_up_swap: `{name}` ({type(m).__name__}) has no gate_up_proj/activation_fn/down_proj")

    def forward(hidden_states):
        gate, up = m.gate_up_proj(hidden_states).chunk(2, dim=-1)
        # HF: up * act(gate). The port names the halves the other way round.
        return m.down_proj(gate * m.activation_fn(up))

    m.forward = forward


def _parallel_residual_off(model, name, m, arg):
    if not getattr(m, "use_parallel_residual", False) or not hasattr(m, "post_attention_dropout"):
        raise ValueError(f"{ENV}: parallel_residual_off: `{name}` ({type(m).__name__}) is not a parallel-residual layer")
    held = {}

    def keep(_m, _args, out):
        held["attn"] = _first(out)

    def pre(_m, args):
        # Sequential: the MLP's norm reads x + attn instead of x.
        return (args[0] + held.pop("attn"), *args[1:])

    m.post_attention_dropout.register_forward_hook(keep)
    m.post_attention_layernorm.register_forward_pre_hook(pre)


# kind -> installer(model, module path, module, argument or None)
KINDS = {
    "skip": _skip,
    "scale": _scale,
    "gelu_erf": _gelu("none"),
    "gelu_tanh": _gelu("tanh"),
    "eps": _eps,
    "bias_drop": _bias_drop,
    "transpose_weight": _transpose_weight,
    "shift_positions": _shift_positions,
    "stride": _stride,
    "rope_theta": _rope_theta,
    "mask_ignore": _mask_ignore,
    "heads_swap": _heads_swap,
    "head_scale": _head_scale,
    "kv_group": _kv_group,
    "attn_scale": _attn_scale,
    "softcap_off": _softcap_off,
    "norm_plus_one": _norm_plus_one,
    "window": _window,
    "round": _round,
    "bf16": _round_to(torch.bfloat16),
    "fp16": _round_to(torch.float16),
    "dropout_on": _dropout_on,
    "pool_last": _pool_last,
    "token_types_off": _token_types_off,
    "gate_up_swap": _gate_up_swap,
    "parallel_residual_off": _parallel_residual_off,
}


def parse(spec: str) -> list[tuple[str, str, str | None]]:
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        fields = part.split(":")
        if len(fields) < 2 or fields[0] not in KINDS:
            raise ValueError(f"{ENV}: `{part}` is not `kind:module[:argument]` with kind one of {sorted(KINDS)}")
        arg = ":".join(fields[2:]) if len(fields) > 2 else None
        out.append((fields[0], fields[1], arg))
    return out


def apply(model, spec: str | None = None) -> int:
    """Install the patches of `spec` (default: $HARNESS_HF_PATCH) on `model`; returns how many
    modules were patched. A patch that matches no module is an error (a typo must not pass)."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    n = 0
    for kind, pattern, arg in parse(spec):
        if pattern == "":
            hits = [("", model)]
        else:
            rx = fnmatch.translate(pattern).replace(".*", "[^.]*")
            hits = [(name, m) for name, m in model.named_modules() if name and re.fullmatch(rx, name)]
        if not hits:
            raise ValueError(f"{ENV}: `{pattern}` matches no module of {type(model).__name__}")
        for name, m in hits:
            KINDS[kind](model, name, m, arg)
            n += 1
    return n
