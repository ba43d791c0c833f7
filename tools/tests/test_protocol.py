"""tools/adapters/protocol.py, the engine side of the external-engine protocol (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import unittest
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"

# An engine whose load writes to file descriptor 1 directly, as C libraries do.
NOISY = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from protocol import Engine, serve

    class Noisy(Engine):
        def load(self, model, options):
            os.write(1, b"C code printing to stdout\\n")
            print("Python printing to stdout")
            return {"info": "noisy"}

    sys.argv = sys.argv[:1]
    sys.exit(serve(Noisy))
    """
)


class V2Channel(unittest.TestCase):
    def test_only_protocol_lines_reach_stdout(self):
        reqs = [{"id": 0, "op": "load", "protocol": 2, "model": {}, "options": {}}, {"id": 1, "op": "nope"}, {"id": 2, "op": "shutdown"}]
        p = subprocess.run(
            [sys.executable, "-c", NOISY, str(ADAPTERS)],
            input="".join(json.dumps(r) + "\n" for r in reqs),
            capture_output=True,
            text=True,
            env={**os.environ, "HARNESS_PROTOCOL": "2"},
            timeout=60,
        )
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        self.assertEqual([r["id"] for r in lines], [0, 1])
        self.assertEqual(lines[0], {"id": 0, "ok": True, "info": "noisy"})
        self.assertFalse(lines[1]["ok"])
        self.assertIn("C code printing to stdout", p.stderr)
        self.assertIn("Python printing to stdout", p.stderr)


if __name__ == "__main__":
    unittest.main()
