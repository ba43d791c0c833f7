#!/usr/bin/env python3
"""A live HF transformers oracle for `harness shrink --oracle hf`.

Started once per shrink; reads one JSON request per line on stdin and answers one JSON line on
stdout, so candidates do not pay the import of torch and transformers each:

    {"model": "llama-tiny-gqa", "inputs": {"input_ids": [[1, 5]], "attention_mask": ...},
     "decode": [[7, 9]] | null, "taps": ["model.layers.0.self_attn", "logits"], "out": "/tmp/d"}
    -> {"ok": true, "files": {"logits": "/tmp/d/1.npy", ...}}      (decode: "logits@0", "logits@1", ...)
    -> {"ok": false, "error": "..."}

The forward is the one tools/regen_goldens.py records goldens with (float32, eager attention,
no_grad, one thread); models are loaded once per id from cases/models/ and goldens/models/.
Exits at the end of stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hflib import hf  # noqa: E402
from hflib.spec import SpecError, load_model  # noqa: E402


class Oracle:
    def __init__(self, root: Path):
        self.root = root
        self.models: dict = {}

    def model(self, model_id: str):
        if model_id not in self.models:
            spec = load_model(self.root, model_id)
            self.models[model_id] = hf.load(spec, spec.dir(self.root))
        return self.models[model_id]

    def answer(self, req: dict) -> dict:
        import numpy as np

        model = self.model(req["model"])
        taps = list(req["taps"])
        inputs = {k: v for k, v in req["inputs"].items() if v is not None}
        if req.get("decode"):
            arrays = {}
            for k, (_, step) in enumerate(hf.run_decode(model, inputs, req["decode"], taps)):
                arrays.update({f"{n}@{k}": a for n, a in step.items()})
        else:
            _, arrays = hf.run(model, inputs, taps)
        out = Path(req["out"])
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, (name, a) in enumerate(sorted(arrays.items())):
            path = out / f"{i}.npy"
            np.save(path, np.ascontiguousarray(a, dtype=np.float32))
            files[name] = str(path)
        return {"ok": True, "files": files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root")
    args = ap.parse_args()
    oracle = Oracle(args.root.resolve())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = oracle.answer(json.loads(line))
        except (SpecError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
