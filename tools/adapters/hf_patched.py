#!/usr/bin/env python3
"""An external engine that is HF transformers itself in float32 (eager attention, as the goldens),
with port bugs planted by $HARNESS_HF_PATCH (tools/adapters/patches.py).

    tools/.venv/bin/python tools/adapters/hf_patched.py            # protocol 2 (JSON lines)
    tools/.venv/bin/python tools/adapters/hf_patched.py REQUEST    # protocol 1

Without a patch it computes exactly what tools/regen_goldens.py computed for the goldens (same
loader, same forward with module hooks, same single-threaded deterministic torch), so every
difference from the goldens is the planted bug. harness/tests/zoo2.rs runs the second mutant zoo
on it: bugs written here, in HF, measured with detectors that were not written against them.

It writes HF tap names (no name or layout rules needed) and answers `decode` requests through
HF's KV cache (hf.run_decode).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# A script, not a module of the package: import the checkout's harness_goldens (../harness_goldens)
# and patches.py beside this file.
_HERE = Path(__file__).resolve().parent
if (_HERE.parent / "harness_goldens").is_dir():
    sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))

from harness_goldens import hf  # noqa: E402  (sets the deterministic torch environment first)
from harness_goldens.spec import ModelSpec, SpecError  # noqa: E402

import patches  # noqa: E402
import protocol  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

# The token inputs, given to HF as rows of ids as for the goldens; protocol 2 also sends
# `position_ids` (0..seq on every row), which HF derives itself when they are not given.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class HfPatched(protocol.Engine):
    def __init__(self):
        self.model = None
        self.patched = 0

    def load(self, model: dict, options: dict) -> dict:
        model_dir = Path(model["dir"])
        family = model.get("class") or model.get("family")
        spec = ModelSpec(id=model["id"], file=model_dir / "config.json", family=family, source={}, config=model["config"], dtype=model.get("dtype", "float32"), digest="")
        try:
            self.model = hf.load(spec, model_dir, dtype=torch.float32)
            self.patched = patches.apply(self.model)
        except (SpecError, ValueError) as e:
            raise protocol.EngineError(str(e), f"${patches.ENV} is `{os.environ.get(patches.ENV, '')}`") from e
        spec_text = os.environ.get(patches.ENV, "")
        info = f"HF transformers {transformers.__version__} float32 eager"
        info += f", {self.patched} module(s) patched: {spec_text}" if spec_text else ", unpatched"
        return {"capabilities": {"decode": True}, "info": info}

    @staticmethod
    def _inputs(inputs: dict) -> dict:
        # Ids as rows (lists), named inputs (pixel_values, input_features, decoder_input_ids,
        # ...) as arrays of their own dtype: what the goldens' forward was given.
        return {k: (v.tolist() if k in INPUTS else v) for k, v in inputs.items() if k != "position_ids"}

    def forward(self, inputs, taps, options, case):
        wanted = [t["hf"] for t in taps]
        _, arrays = hf.run(self.model, self._inputs(inputs), wanted)
        return {k: v for k, v in arrays.items() if k in wanted}

    def decode(self, inputs, tokens, taps, options, case):
        wanted = [t["hf"] for t in taps]
        steps = hf.run_decode(self.model, self._inputs(inputs), tokens.tolist(), wanted)
        return [{k: v for k, v in arrays.items() if k in wanted} for _, arrays in steps]


if __name__ == "__main__":
    sys.exit(protocol.serve(HfPatched))
