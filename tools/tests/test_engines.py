"""External engines on the Python side: `python -m unittest discover -s tools/tests`.

Cases whose reference is an engine have no goldens, so regen_goldens.py must skip them; the
example adapter's own names must be the ones cases/engines/hf-bf16.yaml maps back. No torch.
"""

from __future__ import annotations

import re
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens.spec import load_case  # noqa: E402


class ReferenceEngineCases(unittest.TestCase):
    def test_reference_engine_is_read(self):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            (root / "cases" / "models").mkdir(parents=True)
            (root / "cases" / "models" / "m.yaml").write_text("family: LlamaForCausalLM\nsource: {random: {seed: 1}}\nconfig: {vocab_size: 8}\n")
            case = root / "cases" / "x.yaml"
            case.write_text("model: m\ninputs: {input_ids: [1, 2]}\ntaps: [logits]\nreference: {engine: hf-bf16}\n")
            self.assertEqual(load_case(root, case, {}).reference_engine, "hf-bf16")
            case.write_text("model: m\ninputs: {input_ids: [1, 2]}\ntaps: [logits]\n")
            self.assertIsNone(load_case(root, case, {}).reference_engine)


class HfBf16Names(unittest.TestCase):
    """The adapter names tensors its own way; the engine file's rules must invert that."""

    def test_engine_file_maps_every_adapter_name_back(self):
        src = (TOOLS / "adapters" / "hf_bf16.py").read_text()
        # The adapter's NAMES table, without importing it (that would import torch).
        table = re.search(r"NAMES = \[(.*?)\n\]", src, re.S).group(1)
        names = [(eval(a), eval(b)) for a, b in re.findall(r"\((r?\"[^\"]*\"), (r?\"[^\"]*\")\)", table)]
        self.assertGreater(len(names), 10)
        spec = yaml.safe_load((ROOT / "cases" / "engines" / "hf-bf16.yaml").read_text())
        rules = [(re.compile(r["engine"]), r["hf"]) for r in spec["names"]]
        hf_names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head", "logits", "last_hidden_state"]
        for i in (0, 11):
            for m in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp", "mlp.act_fn"):
                hf_names.append(f"model.layers.{i}.{m}")
            for p in ("q", "k", "v", "o"):
                hf_names.append(f"model.layers.{i}.self_attn.{p}_proj")
            for p in ("q", "k"):
                hf_names.append(f"model.layers.{i}.self_attn.{p}_norm")
            for p in ("gate", "up", "down"):
                hf_names.append(f"model.layers.{i}.mlp.{p}_proj")
            hf_names.append(f"model.layers.{i}")
        for hf in hf_names:
            own = next(re.sub(p, r, hf) for p, r in names if re.fullmatch(p, hf))
            back = next((self._expand(rx, t, own) for rx, t in rules if rx.fullmatch(own)), own)
            self.assertEqual(back, hf, f"adapter writes `{own}` for `{hf}`")

    @staticmethod
    def _expand(rx: re.Pattern, template: str, name: str) -> str:
        m = rx.fullmatch(name)
        return re.sub(r"\$\{(\d+)\}|\$(\d+)", lambda g: m.group(int(g.group(1) or g.group(2))), template)


if __name__ == "__main__":
    unittest.main()
