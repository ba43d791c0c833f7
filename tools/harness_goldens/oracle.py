"""A live HF transformers oracle for `harness shrink --oracle hf`: the `harness-hf-oracle` command
(from a checkout: tools/hf_oracle.py).

Started once per shrink; reads one JSON request per line on stdin and answers one JSON line on
stdout, so candidates do not pay the import of torch and transformers each:

    {"model": "llama-tiny-gqa", "inputs": {"input_ids": [[1, 5]], "attention_mask": ...},
     "decode": [[7, 9]] | null, "taps": ["model.layers.0.self_attn", "logits"], "out": "/tmp/d"}
    -> {"ok": true, "files": {"logits": "/tmp/d/1.npy", ...}}      (decode: "logits@0", "logits@1", ...)
    -> {"ok": false, "error": "..."}

The forward is the one the goldens are recorded with (regen.py) (float32, eager attention,
no_grad, one thread); models are loaded once per id from the project's cases/models/ and
goldens/models/ (the project: `--root DIR`, else found from the current directory as
harness-goldens finds it). Exits at the end of stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import hf
from .project import Project, ProjectError, find
from .spec import SpecError, load_model


class Oracle:
    def __init__(self, project: Project):
        self.project = project
        self.models: dict = {}

    def model(self, model_id: str):
        if model_id not in self.models:
            spec = load_model(self.project, model_id)
            self.models[model_id] = hf.load(spec, spec.dir(self.project))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="the project's root (default: the directory of the nearest harness.toml, from the current directory up)")
    args = ap.parse_args(argv)
    try:
        oracle = Oracle(Project.at(args.root) if args.root is not None else find())
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
