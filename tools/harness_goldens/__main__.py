"""`python -m harness_goldens ...`: the same as the `harness-goldens` command."""

import sys

from .regen import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m harness_goldens"))
