"""The onnxruntime engine (tools/adapters/ort_engine.py) over protocol 2, against the goldens.

Runs the adapter as the harness will: one process per model speaking JSON lines (`load`, one
`forward` per case, or `decode` for decode cases, `shutdown`), and checks every tap of committed
cases within the default tolerance (atol 1e-4 + rtol 1e-3) on the `taps` graph. Skipped when onnxruntime (or torch, which
exports) is not installed: tools/adapters/requirements-onnx.txt. The first run exports each model
(~30 s each here); exports are cached (tools/adapters/onnx_export.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS / "adapters"))

MISSING = [m for m in ("onnxruntime", "onnxscript", "torch", "transformers") if importlib.util.find_spec(m) is None]
REASON = f"{', '.join(MISSING)} not installed (pip install -r tools/adapters/requirements-onnx.txt)"

if not MISSING:
    import ort_compare as oc

# Per model: the cases run through one engine process, in order (several forwards per process).
CASES = {
    "llama-tiny-mha": ["llama/mha", "llama/padded-batch", "llama/long-prompt"],
    "qwen3-tiny-gqa": ["qwen3/sequence", "qwen3/padded-batch"],
    "bert-tiny": ["bert/sequence", "bert/padded-batch"],
    "distilbert-tiny": ["distilbert/sequence", "distilbert/padded-batch"],
    "modernbert-tiny": ["modernbert/sequence", "modernbert/padded-batch", "modernbert/long"],
    # Decode cases: the prompt (prefill graph), then every token through the KV cache (step
    # graph), each step compared with the goldens `tap@k`.
    "qwen3-tiny-2layer": ["qwen3/2layer", "qwen3/decode"],
}


@unittest.skipIf(MISSING, REASON)
class OrtTapsGraph(unittest.TestCase):
    def check_model(self, model_id: str):
        cases = {c.id: c for c in oc.selected_cases(CASES[model_id])}
        self.assertEqual(sorted(cases), sorted(CASES[model_id]), "a case or its goldens are missing")
        with tempfile.TemporaryFile("w+") as log:
            eng = oc.V2Engine([str(oc.PYTHON), str(oc.ENGINE)], stderr=log)
            try:
                first = cases[CASES[model_id][0]]
                resp = eng.request("load", protocol=2, engine="onnxruntime", model=oc.model_request(first), options={"graph": "taps", "n_threads": 1})
                self.assertTrue(resp.get("ok"), resp)
                self.assertEqual(resp["id"], 0)
                causal = first.model.family.endswith("ForCausalLM")
                self.assertEqual(resp["capabilities"]["decode"], causal)
                rows = []
                for cid in CASES[model_id]:
                    rows += oc.run_case(eng, cases[cid], {"graph": "taps"}, None, resp.get("info"), decode=causal)
            finally:
                status = eng.close()
                log.seek(0)
                stderr = log.read()
        self.assertEqual(status, 0, f"shutdown: exit status {status}\n{stderr[-2000:]}")
        errors = [r for r in rows if "error" in r]
        self.assertEqual(errors, [], stderr[-2000:])
        missing = [(r["case"], r["tap"], r.get("not_produced") or r.get("shape")) for r in rows if "max_abs" not in r]
        self.assertEqual(missing, [])
        failing = [(r["case"], r["tap"], r["max_abs"]) for r in rows if not r["within"]]
        self.assertEqual(failing, [], "taps outside atol 1e-4 + rtol 1e-3")
        self.assertGreater(len(rows), 10)
        for cid in CASES[model_id]:
            if cases[cid].decode is not None:
                steps = {r["tap"].rsplit("@", 1)[1] for r in rows if r["case"] == cid}
                self.assertEqual(len(steps), len(cases[cid].decode[0]) + 1, "every decode step compared")

    def test_llama(self):
        self.check_model("llama-tiny-mha")

    def test_qwen3_left_and_right_padding(self):
        self.check_model("qwen3-tiny-gqa")

    def test_bert(self):
        self.check_model("bert-tiny")

    def test_distilbert(self):
        self.check_model("distilbert-tiny")

    def test_modernbert_local_and_global_layers(self):
        self.check_model("modernbert-tiny")

    def test_qwen3_decode_through_the_kv_cache(self):
        self.check_model("qwen3-tiny-2layer")


@unittest.skipIf(MISSING, REASON)
class OrtProtocol(unittest.TestCase):
    def test_errors_are_responses_and_outputs_graph_reports_missing_taps(self):
        case = oc.selected_cases(["bert/tiny-2l"])[0]
        with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryDirectory() as d:
            eng = oc.V2Engine([str(oc.PYTHON), str(oc.ENGINE)], stderr=log)
            try:
                r = eng.request("forward", inputs={}, taps=[], output_dir=d)
                self.assertFalse(r["ok"])
                self.assertIn("load", r["error"])
                r = eng.request("load", protocol=2, engine="onnxruntime", model=oc.model_request(case), options={"graph": "outputs"})
                self.assertTrue(r["ok"], r)
                self.assertIn("last_hidden_state", r["taps"])
                self.assertNotIn("embeddings", r["taps"])
                r = eng.request("frobnicate")
                self.assertFalse(r["ok"])
                self.assertIn("frobnicate", r["error"])
                spec = oc.write_inputs(Path(d), oc.case_inputs(case))
                taps = [{"hf": "embeddings", "engine": None}, {"hf": "last_hidden_state", "engine": None}, {"hf": "pooled.mean", "engine": None}]
                r = eng.request("forward", case=case.id, inputs=spec, taps=taps, output_dir=str(Path(d) / "out"))
                self.assertTrue(r["ok"], r)
                self.assertIn("embeddings", r["not_produced"])
                written = sorted(p.name for p in (Path(d) / "out").iterdir())
                self.assertEqual(written, ["last_hidden_state.npy", "pooled.mean.npy"])
                want = np.load(TOOLS.parent / "goldens" / case.id / "last_hidden_state.npy")
                got = np.load(Path(d) / "out" / "last_hidden_state.npy")
                self.assertLess(float(np.abs(got - want).max()), 1e-4)
            finally:
                status = eng.close()
        self.assertEqual(status, 0)

    def test_decode_equals_full_forward(self):
        """The harness's own decode check, here: logits@k through the KV cache equal the engine's
        full forward over the prompt and the first k tokens, at the last position."""
        case = oc.selected_cases(["llama/decode"])[0]
        prompt = np.asarray(case.inputs["input_ids"], np.int64)
        tokens = np.asarray(case.decode, np.int64)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            eng = oc.V2Engine([str(oc.PYTHON), str(oc.ENGINE)], stderr=subprocess.DEVNULL)
            try:
                self.assertTrue(eng.request("load", protocol=2, engine="onnxruntime", model=oc.model_request(case), options={})["ok"])
                np.save(d / "tokens.npy", tokens)
                decode = {"file": str(d / "tokens.npy"), "shape": list(tokens.shape), "dtype": "int64"}
                logits = [{"hf": "logits", "engine": None}]
                r = eng.request("decode", inputs=oc.write_inputs(d, {"input_ids": prompt}), taps=logits, output_dir=str(d / "decode"), decode=decode)
                self.assertTrue(r["ok"], r)
                for k in range(1, tokens.shape[1] + 1):
                    dk = d / f"full{k}"
                    dk.mkdir()
                    full = np.concatenate([prompt, tokens[:, :k]], axis=1)
                    r = eng.request("forward", inputs=oc.write_inputs(dk, {"input_ids": full}), taps=logits, output_dir=str(dk / "out"))
                    self.assertTrue(r["ok"], r)
                    want = np.load(dk / "out" / "logits.npy")[:, -1]
                    got = np.load(d / "decode" / str(k) / "logits.npy")[:, -1]
                    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3, err_msg=f"step {k}")
            finally:
                self.assertEqual(eng.close(), 0)

    def test_v1_request(self):
        """Protocol 1: one process, request.json as the argument, options from $HARNESS_ORT_OPTIONS."""
        case = oc.selected_cases(["bert/tiny-2l"])[0]
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            spec = oc.write_inputs(d, oc.case_inputs(case))
            spec.pop("position_ids")
            for v in spec.values():
                v["file"] = Path(v["file"]).name  # v1: relative to the request directory
            (d / "out").mkdir()
            m = oc.model_request(case)
            m["family"] = m.pop("class")  # v1 names it `family`
            req = {"protocol": 1, "engine": "onnxruntime", "model": m, "inputs": spec, "taps": [{"hf": "encoder.layer.1", "engine": None}], "output_dir": str(d / "out"), "dtype": "float32"}
            (d / "request.json").write_text(json.dumps(req))
            env = dict(os.environ, HARNESS_ORT_OPTIONS='{"graph": "taps"}')
            p = subprocess.run([str(oc.PYTHON), str(oc.ENGINE), str(d / "request.json")], capture_output=True, text=True, env=env, timeout=600)
            self.assertEqual(p.returncode, 0, p.stderr[-2000:])
            got = np.load(d / "out" / "encoder.layer.1.npy")
            want = np.load(TOOLS.parent / "goldens" / case.id / "encoder.layer.1.npy")
            self.assertLess(float(np.abs(got - want).max()), 1e-4)


if __name__ == "__main__":
    unittest.main()
