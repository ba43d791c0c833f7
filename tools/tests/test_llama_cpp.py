"""llama.cpp as an external engine (tools/adapters/llama_cpp.py), end to end over protocol 2.

The adapter runs as a persistent subprocess speaking JSON lines (load, forward, decode, shutdown),
its tensors are mapped through the engine files' rules (cases/engines/llama-cpp.yaml and
llama-cpp-defaults.yaml, read by tools/adapters/engine_check.py) and compared with committed goldens. Skipped when llama-cpp-python
is not installed (tools/adapters/requirements-llama-cpp.txt builds it from source).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import unittest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ADAPTERS = TOOLS / "adapters"


def engine_file(name: str) -> Path:
    """The shipped engine file (cases/engines/), else the draft under tools/adapters/engines/."""
    shipped = TOOLS.parent / "cases" / "engines" / f"{name}.yaml"
    return shipped if shipped.is_file() else ADAPTERS / "engines" / f"{name}.yaml"

# Before tools/adapters could be on sys.path (its llama_cpp.py would shadow the package).
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
SKIP_WHY = f"llama-cpp-python is not installed in {sys.executable}: pip install -r tools/adapters/requirements-llama-cpp.txt"


def _engine_check():
    spec = importlib.util.spec_from_file_location("engine_check", ADAPTERS / "engine_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@unittest.skipUnless(HAVE_LLAMA_CPP, SKIP_WHY)
class LlamaCppEngine(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ec = _engine_check()
        cls.stderr = tempfile.TemporaryFile(mode="w+")
        cls.engines = {}
        for name in ("llama-cpp", "llama-cpp-defaults"):
            engine = cls.ec.load_engine(engine_file(name))
            engine["command"] = [sys.executable] + engine["command"][1:]  # this interpreter, not tools/.venv
            client = cls.ec.V2Engine(engine, stderr=cls.stderr)
            case = cls.ec.find_case("llama/gguf-f32")
            resp = client.request("load", protocol=2, engine=name, model=cls.ec.model_request(case), options=engine["options"])
            assert resp.get("ok"), resp
            cls.engines[name] = (engine, client, resp)

    @classmethod
    def tearDownClass(cls):
        for engine, client, _ in cls.engines.values():
            status = client.shutdown()
            assert status == 0, f"{engine['name']} exited with {status}"
        cls.stderr.close()

    def run_case(self, engine_name: str, case_id: str, **options):
        engine, client, _ = self.engines[engine_name]
        case = self.ec.find_case(case_id)
        with tempfile.TemporaryDirectory(prefix="test-llama-cpp-") as tmp:
            got, missing, resp = self.ec.run_case(client, engine, case, Path(tmp), {**engine["options"], **options})
        self.assertTrue(resp["ok"])
        return self.ec.compare(case, got), missing

    def assert_exact(self, rows):
        for r in rows:
            with self.subTest(tap=r["tap"]):
                self.assertNotIn("missing", r, f"{r['tap']} not produced")
                self.assertNotIn("shape", r, f"{r['tap']}: shape {r.get('shape')}")
                self.assertTrue(r["within_default"], f"{r['tap']}: max_abs {r['max_abs']:.3e}, cosine {r['cosine']:.7f}")

    def test_load_reply(self):
        _, _, resp = self.engines["llama-cpp"]
        self.assertEqual(resp["capabilities"], {"decode": True, "blocks": False})
        self.assertIn("KV cache F32", resp["info"])
        self.assertIn("flash attention False (not used)", resp["info"])
        _, _, resp = self.engines["llama-cpp-defaults"]
        self.assertIn("KV cache F16", resp["info"])
        self.assertIn("flash attention 'auto' (used)", resp["info"])

    def test_every_tap_exact_on_f32(self):
        """Every HF module output llama.cpp has a node for, on a batch with right and left padding."""
        rows, missing = self.run_case("llama-cpp", "llama/gguf-taps")
        produced = [r for r in rows if r["tap"].split(".")[-1] != "act_fn"]
        self.assertEqual(len(produced), len(rows) - 3)
        self.assert_exact(produced)
        self.assertEqual(sorted(missing), [f"model.layers.{i}.mlp.act_fn" for i in range(3)])
        self.assertIn("GGML_OP_GLU", missing["model.layers.0.mlp.act_fn"])

    def test_gguf_f32_case_exact(self):
        rows, missing = self.run_case("llama-cpp", "llama/gguf-f32")
        self.assert_exact(rows)
        self.assertEqual(missing, {})

    def test_decode_exact(self):
        """Prompt, then 6 tokens one at a time through llama.cpp's KV cache: every step."""
        rows, _ = self.run_case("llama-cpp", "llama/gguf-decode")
        self.assertEqual(len(rows), 7 * 9)
        self.assert_exact(rows)

    def test_q8_0_within_the_case_tolerance(self):
        """Q8_0 weights are not exact; the case's own logits tolerance holds."""
        rows, _ = self.run_case("llama-cpp", "llama/gguf-q8_0", gguf="q8_0")
        (logits,) = [r for r in rows if r["tap"] == "logits"]
        self.assertLessEqual(logits["max_abs"], 0.15)
        self.assertGreaterEqual(logits["sqnr_db"], 25)
        self.assertGreaterEqual(logits["cosine"], 0.998)
        self.assertFalse(logits["within_default"])

    def test_defaults_are_close_but_not_exact(self):
        """F16 KV cache + flash attention: off the default tolerance, still cosine > 0.9999."""
        for case_id in ("llama/gguf-f32", "llama/gguf-decode"):
            with self.subTest(case=case_id):
                rows, _ = self.run_case("llama-cpp-defaults", case_id)
                self.assertFalse(all(r["within_default"] for r in rows), "llama.cpp's defaults matched exactly")
                worst = min(r["cosine"] for r in rows)
                self.assertGreater(worst, 0.9999, json.dumps(rows, indent=1))

    def test_options_per_request_reload(self):
        """A request's options override the load's: q8_0 then f32 again on the same process."""
        a, _ = self.run_case("llama-cpp", "llama/gguf-q8_0-batch", gguf="q8_0")
        b, _ = self.run_case("llama-cpp", "llama/gguf-q8_0-batch")
        self.assertFalse(a[0]["within_default"])
        self.assertTrue(b[0]["within_default"])

    def test_errors_are_replies(self):
        engine, client, _ = self.engines["llama-cpp"]
        resp = client.request("forward", inputs={}, taps=[], output_dir="/nonexistent", options={"kv_type": "q4"})
        self.assertFalse(resp["ok"])
        self.assertIn("kv_type", resp["error"])
        resp = client.request("block", block="model.layers.0", input={"file": "/nonexistent"}, inputs={}, taps=[], output_dir="/nonexistent")
        self.assertFalse(resp["ok"])


class EngineRules(unittest.TestCase):
    """The rule extensions the llama.cpp engine files use (no llama.cpp needed)."""

    @classmethod
    def setUpClass(cls):
        cls.ec = _engine_check()
        cls.engine = cls.ec.load_engine(engine_file("llama-cpp"))

    def test_names_both_ways(self):
        ec, e = self.ec, self.engine
        self.assertEqual(ec.to_hf_names(e, "attn_out-2"), ["model.layers.2.self_attn", "model.layers.2.self_attn.o_proj"])
        self.assertEqual(ec.to_hf_names(e, "ffn_up-1"), ["model.layers.1.mlp.up_proj"])
        self.assertEqual(ec.to_engine_name(e, "model.layers.1.mlp.gate_proj"), "ffn_gate-1")
        self.assertEqual(ec.to_engine_name(e, "model.layers.0.self_attn.o_proj"), "attn_out-0")
        self.assertEqual(ec.to_engine_name(e, "model.layers.0.self_attn"), "attn_out-0")
        self.assertEqual(ec.to_engine_name(e, "model.layers.11"), "l_out-11")
        self.assertEqual(ec.to_engine_name(e, "last_hidden_state"), "result_norm")
        self.assertIsNone(ec.to_engine_name(e, "model.layers.0.mlp.act_fn"))

    def test_qk_layout_undoes_the_gguf_permutation(self):
        import numpy as np

        sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens
        from harness_goldens.gguf_export import permute

        cfg = {"hidden_size": 64, "num_attention_heads": 8, "head_dim": 8}
        # small integers: every product and sum exact, so a row permutation commutes with matmul
        w = np.random.default_rng(0).integers(-4, 5, (64, 16)).astype(np.float32)
        x = np.random.default_rng(1).integers(-4, 5, (2, 5, 16)).astype(np.float32)
        hf = x @ w.T  # [batch, seq, 64], HF's q_proj
        ggml = (x @ permute(w, 8).T).transpose(2, 1, 0)  # what the adapter writes: [64, seq, batch]
        back = self.ec.to_hf_layout(self.engine, "Qcur-0", ggml, 2, 5, cfg)
        np.testing.assert_array_equal(back, hf)


if __name__ == "__main__":
    unittest.main()
