"""Tests of harness_goldens/store.py's pending writes: `python -m unittest discover -s tools/tests`.

No torch needed. The kill test SIGKILLs a writer at random moments and checks that the directory
always holds the accepted files untouched plus either no pending set or a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens import store  # noqa: E402


def accepted(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.endswith(store.PENDING)}


def manifest(files: dict[str, bytes]) -> bytes:
    return json.dumps({n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())}).encode()


class WritePending(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name) / "case"
        self.d.mkdir()
        self.old = {"a.npy": b"old a", "b.npy": b"old b"}
        for n, b in self.old.items():
            (self.d / n).write_bytes(b)
        (self.d / store.MANIFEST).write_bytes(manifest(self.old))

    def tearDown(self):
        self.tmp.cleanup()

    def test_changed_files_go_beside_the_accepted_ones(self):
        inode = (self.d / "a.npy").stat().st_ino
        new = {"a.npy": b"old a", "b.npy": b"new b"}
        self.assertTrue(store.write_pending(self.d, {**new, store.MANIFEST: manifest(new)}, store.MANIFEST))
        names = sorted(p.name for p in self.d.iterdir())
        self.assertEqual(names, ["a.npy", "b.npy", "b.npy.new", "manifest.json", "manifest.json.new"])
        self.assertEqual((self.d / "b.npy").read_bytes(), b"old b")
        self.assertEqual((self.d / "b.npy.new").read_bytes(), b"new b")
        self.assertEqual((self.d / "a.npy").stat().st_ino, inode, "accepted files are carried over, not rewritten")
        self.assertEqual([p.name for p in self.d.parent.iterdir()], ["case"], "no temp directory left")

    def test_nothing_changed_is_nothing_pending(self):
        files = {**self.old, store.MANIFEST: manifest(self.old)}
        self.assertFalse(store.write_pending(self.d, files, store.MANIFEST))
        self.assertFalse(any(p.name.endswith(store.PENDING) for p in self.d.iterdir()))

    def test_a_failed_swap_leaves_the_directory_as_it_was(self):
        before = {p.name: p.read_bytes() for p in self.d.iterdir()}
        real = store.commit_dir

        def boom(tmp, final):
            raise OSError("killed before the swap")

        store.commit_dir = boom
        try:
            with self.assertRaises(OSError):
                store.write_pending(self.d, {"a.npy": b"x", store.MANIFEST: b"{}"}, store.MANIFEST)
        finally:
            store.commit_dir = real
        self.assertEqual({p.name: p.read_bytes() for p in self.d.iterdir()}, before)
        store.recover(self.d.parent)
        self.assertEqual([p.name for p in self.d.parent.iterdir()], ["case"])


WRITER = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from harness_goldens import store
    d = Path(sys.argv[1])
    i = 0
    while True:
        i += 1
        new = {f"t{k}.npy": bytes([i % 251]) * 300_000 for k in range(6)}
        m = json.dumps({n: hashlib.sha256(b).hexdigest() for n, b in sorted(new.items())}).encode()
        store.write_pending(d, {**new, store.MANIFEST: m}, store.MANIFEST)
        print(i, flush=True)
    """
)


class KilledWriter(unittest.TestCase):
    def test_sigkill_never_leaves_a_mix(self):
        with tempfile.TemporaryDirectory() as t:
            d = Path(t) / "case"
            d.mkdir()
            old = {f"t{k}.npy": b"accepted" for k in range(6)}
            for n, b in old.items():
                (d / n).write_bytes(b)
            (d / store.MANIFEST).write_bytes(manifest(old))
            rng = random.Random(7)
            seen_pending = 0
            for _ in range(12):
                p = subprocess.Popen([sys.executable, "-c", WRITER, str(d), str(TOOLS)], stdout=subprocess.PIPE)
                # Kill only once the writer is in its loop (its first write done): a fixed delay
                # from the start lands before it on a loaded machine (a CI run saw 12 of 12 do so).
                p.stdout.readline()
                time.sleep(rng.uniform(0.0, 0.3))
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                p.stdout.close()
                store.recover(Path(t))
                self.assertEqual(accepted(d), {**old, store.MANIFEST: manifest(old)}, "accepted files changed")
                marker = d / f"{store.MANIFEST}{store.PENDING}"
                if marker.exists():
                    seen_pending += 1
                    want = json.loads(marker.read_bytes())
                    for n, h in want.items():
                        f = d / f"{n}{store.PENDING}"
                        got = hashlib.sha256(f.read_bytes() if f.exists() else (d / n).read_bytes()).hexdigest()
                        self.assertEqual(got, h, f"{n}: pending set is not the one its manifest describes")
                self.assertEqual([p.name for p in Path(t).iterdir()], ["case"])
            self.assertGreater(seen_pending, 0, "no kill landed after a complete write: the test proves nothing")


if __name__ == "__main__":
    unittest.main()
