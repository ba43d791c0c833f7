"""Tests of tools/hf_oracle.py, the live HF oracle of `harness shrink --oracle hf`.

Its answers must be the goldens' own numbers: the same forward as tools/regen_goldens.py, so an
input that is a committed case gets that case's goldens back bit for bit (prompt and decode steps).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent


class HfOracle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen(
            [sys.executable, str(TOOLS / "hf_oracle.py"), "--root", str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.proc.stdin.close()
        cls.proc.wait(timeout=60)
        cls.proc.stdout.close()
        cls.tmp.cleanup()

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.assertTrue(line, "the oracle exited without answering")
        return json.loads(line)

    def test_answers_a_case_input_with_its_goldens(self):
        req = {
            "model": "llama-tiny-mha",
            "inputs": {"input_ids": [[1, 17, 203, 45, 9, 88, 120, 3, 64, 250, 31, 7]]},
            "decode": None,
            "taps": ["model.layers.1.mlp", "logits"],
            "out": str(Path(self.tmp.name) / "a"),
        }
        ans = self.ask(req)
        self.assertTrue(ans["ok"], ans)
        for tap in req["taps"]:
            got = np.load(ans["files"][tap])
            want = np.load(ROOT / "goldens" / "llama" / "mha" / f"{tap}.npy")
            np.testing.assert_array_equal(got, want)

    def test_decode_steps_come_back_per_step(self):
        req = {
            "model": "qwen3-tiny-2layer",
            "inputs": {"input_ids": [[1, 59, 158, 209, 203, 254]]},
            "decode": [[196, 220, 51, 208, 63, 211, 104, 191]],
            "taps": ["logits"],
            "out": str(Path(self.tmp.name) / "b"),
        }
        ans = self.ask(req)
        self.assertTrue(ans["ok"], ans)
        self.assertEqual(sorted(ans["files"]), sorted(f"logits@{k}" for k in range(9)))
        for k in (0, 3, 8):
            got = np.load(ans["files"][f"logits@{k}"])
            np.testing.assert_array_equal(got, np.load(ROOT / "goldens" / "qwen3" / "decode" / f"logits@{k}.npy"))

    def test_a_bad_request_is_an_error_answer_not_a_crash(self):
        ans = self.ask({"model": "no-such-model", "inputs": {"input_ids": [[1]]}, "taps": ["logits"], "out": self.tmp.name})
        self.assertFalse(ans["ok"])
        self.assertIn("no-such-model", ans["error"])
        # Still serving.
        ans = self.ask({"model": "llama-tiny-mha", "inputs": {"input_ids": [[1, 2]]}, "taps": ["logits"], "out": self.tmp.name})
        self.assertTrue(ans["ok"], ans)


if __name__ == "__main__":
    unittest.main()
