"""Bad model specs that only HF can judge (the class, its config, its forward's inputs): one
located error each from tools/regen_goldens.py, with a hint, and nothing written to goldens/.

The messages are compared with tools/tests/bad_input/models.expected (`UPDATE_EXPECTED=1`
rewrites it, like insta's snapshots on the Rust side).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_input" / "models"
EXPECTED = Path(__file__).resolve().parent / "bad_input" / "models.expected"


class BadModelSpecs(unittest.TestCase):
    def test_each_gives_one_located_error_with_a_hint_and_writes_nothing(self):
        specs = sorted(CORPUS.glob("*.yaml"))
        self.assertGreaterEqual(len(specs), 8)
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            (root / "cases" / "models").mkdir(parents=True)
            (root / "cases" / "bad").mkdir()
            (root / "goldens").mkdir()
            for s in specs:
                (root / "cases" / "models" / s.name).write_text(s.read_text())
                (root / "cases" / "bad" / s.name).write_text(f"model: {s.stem}\ninputs: {{input_ids: [[1, 2, 3]]}}\ntaps: [logits]\n")
            # A fixed hash seed: transformers prints sets in its messages.
            env = {**{k: v for k, v in os.environ.items() if k != "CI"}, "PYTHONHASHSEED": "0"}
            p = subprocess.run(
                [sys.executable, str(TOOLS / "regen_goldens.py"), "--root", str(root), "--quiet"],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            errors = [line.replace(str(root), "<repo>") for line in p.stderr.splitlines() if line.startswith("error: ")]
            by_spec = {}
            for s in specs:
                mine = [e for e in errors if f"cases/models/{s.name}:" in e]
                self.assertEqual(len(mine), 1, f"{s.name}: {mine or p.stderr}")
                self.assertRegex(mine[0], rf"cases/models/{s.name}:\d+:\d+: ", f"{s.name}: not located")
                self.assertIn("(hint: ", mine[0], f"{s.name}: no hint")
                by_spec[s.stem] = mine[0]
            written = sorted(str(f.relative_to(root)) for f in (root / "goldens").rglob("*") if f.is_file())
            self.assertEqual(written, [], "something was written to goldens/")
        got = "".join(f"{k}:\n  {v}\n" for k, v in sorted(by_spec.items()))
        if os.environ.get("UPDATE_EXPECTED") == "1":
            EXPECTED.write_text(got)
        self.assertEqual(got, EXPECTED.read_text() if EXPECTED.exists() else "", "rerun with UPDATE_EXPECTED=1 to accept")


if __name__ == "__main__":
    unittest.main()
