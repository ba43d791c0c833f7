"""Port bugs injected into HF itself, by forward hooks on its modules.

An adapter that runs HF (tools/adapters/hf_bf16.py) applies the patches named in the environment
variable HARNESS_HF_PATCH, so a test can run an engine with a known bug that was written here,
independently of the harness's reference engine and of its diagnosis:

    HARNESS_HF_PATCH='skip:model.layers.1.post_feedforward_layernorm'
    HARNESS_HF_PATCH='scale:model.layers.*.mlp.down_proj:1.01;skip:model.norm'

Each patch is `kind:module[:argument]`; `module` is an HF module path, `*` matching one path
segment; several patches are separated by `;`.
"""

from __future__ import annotations

import fnmatch
import os
import re

import torch

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


def _skip(_arg):
    """The module is skipped: its output is its first input."""

    def hook(_m, args, out):
        x = _first(args)
        y = _first(out)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            return _replace_first(out, x)
        raise ValueError(f"skip: input shape {getattr(x, 'shape', None)} is not the output's {getattr(y, 'shape', None)}")

    return hook


def _scale(arg):
    """The module's output multiplied by a constant (a wrong scale factor)."""
    f = float(arg)

    def hook(_m, _args, out):
        return _replace_first(out, _first(out) * f)

    return hook


KINDS = {"skip": _skip, "scale": _scale}


def parse(spec: str) -> list[tuple[str, str, str | None]]:
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        fields = part.split(":")
        if len(fields) < 2 or fields[0] not in KINDS:
            raise ValueError(f"{ENV}: `{part}` is not `kind:module[:argument]` with kind one of {sorted(KINDS)}")
        out.append((fields[0], fields[1], fields[2] if len(fields) > 2 else None))
    return out


def apply(model, spec: str | None = None) -> int:
    """Register the patches of `spec` (default: $HARNESS_HF_PATCH) on `model`; returns how many
    modules were patched. A patch that matches no module is an error (a typo must not pass)."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    n = 0
    for kind, pattern, arg in parse(spec):
        rx = fnmatch.translate(pattern).replace(".*", "[^.]*")
        hits = [(name, m) for name, m in model.named_modules() if name and re.fullmatch(rx, name)]
        if not hits:
            raise ValueError(f"{ENV}: `{pattern}` matches no module of {type(model).__name__}")
        for _, m in hits:
            m.register_forward_hook(KINDS[kind](arg))
            n += 1
    return n
