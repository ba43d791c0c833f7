"""The goldens tool (harness_goldens/regen.py, run as tools/regen_goldens.py) under faults: killed with SIGKILL while it works, a disk that fills up, a
read-only goldens directory.

Both run on a throwaway copy of one case (llama/mha) whose inputs are edited, so that the tool
has new goldens to write and the old ones must survive any interruption.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from contextlib import redirect_stderr
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not


def make_repo(t: Path) -> Path:
    """A repository with llama/mha and its model, the case edited so its goldens are stale."""
    for rel in ["cases/llama/mha.yaml", "cases/models/llama-tiny-mha.yaml"]:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, t / rel)
    shutil.copytree(ROOT / "goldens/models/llama-tiny-mha", t / "goldens/models/llama-tiny-mha")
    shutil.copytree(ROOT / "goldens/llama/mha", t / "goldens/llama/mha")
    case = t / "cases/llama/mha.yaml"
    case.write_text(case.read_text().replace("[[1, 17,", "[[1, 18,"))
    return t / "goldens/llama/mha"


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def consistent(d: Path) -> str:
    """The case_digest of a directory whose every file matches its manifest (else fail)."""
    m = json.loads((d / "manifest.json").read_text())
    names = {e["file"] for e in m["taps"]} | {"manifest.json"}
    assert {p.name for p in d.iterdir()} == names, f"{d}: files do not match the manifest"
    for e in m["taps"]:
        assert hashlib.sha256((d / e["file"]).read_bytes()).hexdigest() == e["sha256"], f"{e['file']} is not its manifest's"
    return m["case_digest"]


class Killed(unittest.TestCase):
    def test_sigkill_leaves_old_or_new_goldens_never_a_mix(self):
        with tempfile.TemporaryDirectory() as t:
            t = Path(t)
            d = make_repo(t)
            old = consistent(d)
            cmd = [sys.executable, str(TOOLS / "regen_goldens.py"), "--root", str(t), "--quiet"]
            env = {**os.environ, "CI": ""}
            rng = random.Random(11)
            states = []
            for _ in range(6):
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(1.0, 6.0))
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                states.append(consistent(d))  # every file matches the manifest in place
                leftovers = [x.name for x in d.parent.iterdir() if x.name != "mha"]
                # A kill may leave a hidden `.mha.tmp-PID`; the next run removes it.
                self.assertTrue(all(x.startswith(".mha.") for x in leftovers), leftovers)
                if states[-1] != old:
                    break
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            new = consistent(d)
            self.assertNotEqual(new, old, "the edited case was not regenerated")
            self.assertTrue(set(states) <= {old, new}, "a killed run left goldens of neither version")
            self.assertEqual([x.name for x in d.parent.iterdir()], ["mha"], "leftovers were not cleaned up")


class DiskFull(unittest.TestCase):
    def test_a_failed_write_reports_the_file_and_keeps_the_old_goldens(self):
        # A full disk and a read-only goldens directory, as the OS reports them mid-write (tests
        # run as root in CI, where chmod cannot make a directory read-only, so the error is raised).
        for code, text in [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")]:
            with self.subTest(error=text):
                self.failed_write(code, text)

    def failed_write(self, code: int, text: str):
        from harness_goldens import regen, store

        with tempfile.TemporaryDirectory() as t:
            t = Path(t)
            d = make_repo(t)
            before = snapshot(d)
            real = store.write_files

            def failing(dir_, files):
                real(dir_, dict(list(files.items())[:3]))
                raise OSError(code, os.strerror(code), str(dir_ / "logits.npy"))

            store.write_files = failing
            err = io.StringIO()
            try:
                os.environ.pop("CI", None)
                with redirect_stderr(err):
                    rc = regen.main(["--root", str(t), "--quiet"])
            finally:
                store.write_files = real
            self.assertEqual(rc, 1)
            msg = err.getvalue()
            self.assertIn(f"logits.npy: {text}", msg)
            self.assertIn("were not touched", msg)
            self.assertEqual(snapshot(d), before, "the accepted goldens changed")
            self.assertEqual([x.name for x in d.parent.iterdir()], ["mha"], "a half-written directory was left")

if __name__ == "__main__":
    unittest.main()
