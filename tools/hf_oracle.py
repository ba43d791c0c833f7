#!/usr/bin/env python3
"""The live HF oracle of `harness shrink --oracle hf` from a checkout, without installing: the
`harness-hf-oracle` command (harness_goldens/oracle.py)."""

import sys

# This script's directory (tools/) is sys.path[0], so the checkout's harness_goldens is imported.
from harness_goldens.oracle import main

if __name__ == "__main__":
    sys.exit(main())
