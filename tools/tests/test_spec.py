"""harness_goldens.spec: `hf:` sources resolve in the local Hugging Face cache as harness/src/hub.rs
does; the golden digest and the pickle list are the Rust side's."""

from __future__ import annotations

import ast
import os
import re
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens import spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
H1 = "1" * 40


class HfCache(unittest.TestCase):
    def test_cache_dir_order(self):
        with mock.patch.dict(os.environ, {"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}, clear=True):
            self.assertEqual(spec.hf_cache_dir(), Path("/a"))
        with mock.patch.dict(os.environ, {"HF_HOME": "/b", "HOME": "/h"}, clear=True):
            self.assertEqual(spec.hf_cache_dir(), Path("/b/hub"))
        with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/x", "HOME": "/h"}, clear=True):
            self.assertEqual(spec.hf_cache_dir(), Path("/x/huggingface/hub"))
        with mock.patch.dict(os.environ, {"HOME": "/h"}, clear=True):
            self.assertEqual(spec.hf_cache_dir(), Path("/h/.cache/huggingface/hub"))

    def test_resolve_refs_hashes_and_absence(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.dict(os.environ, {"HF_HUB_CACHE": d}):
            repo = Path(d) / "models--org--m"
            (repo / "snapshots" / H1).mkdir(parents=True)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text(H1)
            self.assertEqual(spec.resolve_hf("org/m", None), (repo / "snapshots" / H1, H1))
            self.assertEqual(spec.resolve_hf("org/m", H1)[1], H1)
            self.assertIsNone(spec.resolve_hf("org/m", "dev")[1])
            self.assertIsNone(spec.resolve_hf("org/other", None)[1])
            m = spec.ModelSpec("m", Path("m.yaml"), "BertModel", {"hf": "org/other", "fetch": "get-it"}, {}, "float32", "")
            self.assertIn("provide it with: get-it", m.absent(Path(d)))



class GoldenDigestTest(unittest.TestCase):
    def test_matches_the_rust_digest(self):
        # harness/src/digest.rs asserts the same value for the same document.
        import yaml

        from harness_goldens.spec import SPEC_KEYS, golden_digest

        doc = yaml.safe_load('family: LlamaForCausalLM\nsource: {random: {seed: 3}, fetch: x}\nconfig: {rope_theta: 500000.0, rms_norm_eps: 1.0e-5, hidden_size: 64, name: "é"}\n')
        self.assertEqual(golden_digest(doc, SPEC_KEYS), "5d7902fea380783292a7eebf7204a65b0d47870ab880bbf38e04b33045359d64")

    def test_only_golden_keys_count(self):
        import yaml

        from harness_goldens.spec import CASE_KEYS, golden_digest

        a = yaml.safe_load("model: m\ninputs: {input_ids: [[1, 2]]}\ntaps: [logits]\n")
        b = yaml.safe_load("description: x\nmodel: m\ninputs: {input_ids: [[1, 2]]}\nengines: [reference]\ntaps:\n  - {tap: logits, tolerance: {atol: 1.0e-3}}\n")
        self.assertEqual(golden_digest(a, CASE_KEYS), golden_digest(b, CASE_KEYS))


class Pickles(unittest.TestCase):
    def test_the_list_is_the_rust_one(self):
        # api/src/model.rs: `pub const PICKLES: &[&str] = &["pytorch_model.bin", ...];`
        rust = (ROOT / "api" / "src" / "model.rs").read_text()
        m = re.search(r"^pub const PICKLES: &\[&str\] = &(\[[^\]]*\]);", rust, re.M)
        self.assertIsNotNone(m, "no `pub const PICKLES: &[&str] = &[...];` line in api/src/model.rs")
        self.assertEqual(list(spec.PICKLES), ast.literal_eval(m.group(1)))

    def test_a_pickle_only_checkpoint_is_refused_naming_it(self):
        from harness_goldens import hf

        with tempfile.TemporaryDirectory() as d:
            m = spec.ModelSpec("m", Path("m.yaml"), "BertModel", {"path": d}, {}, "float32", "")
            (Path(d) / "model.ckpt").write_bytes(b"\x80\x02}q\x00.")
            with self.assertRaisesRegex(spec.SpecError, r"model\.ckpt: pickled checkpoints are refused"):
                hf.load(m, Path(d))


if __name__ == "__main__":
    unittest.main()


class TapHints(unittest.TestCase):
    """A tap the model does not have is located at its entry with a name it has."""

    AVAILABLE = ["embeddings", "encoder.layers.0", "encoder.layers.1", "post_layernorm", "last_hidden_state"]

    def test_a_prefix_too_many(self):
        self.assertEqual(spec._tap_hint("vision_model.embeddings", self.AVAILABLE), "did you mean `embeddings`?")
        self.assertEqual(spec._tap_hint("vision_model.encoder.layers.*", self.AVAILABLE), "did you mean `encoder.layers.*`?")

    def test_a_close_name_then_the_top_level(self):
        self.assertEqual(spec._tap_hint("post_layernrom", self.AVAILABLE), "did you mean `post_layernorm`?")
        self.assertEqual(
            spec._tap_hint("zzz", self.AVAILABLE), "this model's taps start with: embeddings, encoder, last_hidden_state, post_layernorm"
        )

    def test_the_error_is_located(self):
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "c.yaml"
            f.write_text("model: m\ntaps: [embeddings, vision_model.post_layernorm]\n")
            with self.assertRaises(spec.SpecError) as e:
                spec.expand_taps(f, ["embeddings", "vision_model.post_layernorm"], self.AVAILABLE)
            self.assertIn("c.yaml:2:20: tap `vision_model.post_layernorm` matches no module", str(e.exception))
            self.assertIn("(hint: did you mean `post_layernorm`?)", str(e.exception))
