#!/usr/bin/env python3
"""Regenerate goldens from a checkout, without installing: the `harness-goldens` command
(harness_goldens/regen.py; `--help` for its options)."""

import sys

# This script's directory (tools/) is sys.path[0], so the checkout's harness_goldens is imported.
from harness_goldens.regen import main

if __name__ == "__main__":
    sys.exit(main())
