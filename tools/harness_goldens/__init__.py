"""The harness's goldens tool: HF transformers as the reference.

Modules: regen (the `harness-goldens` command), oracle (`harness-hf-oracle`), project (where
cases and goldens live: harness.toml), spec (cases and model specs), hf (the reference forward),
structure (structure.json), store (atomic writes), gguf_export (GGUF files).

Importing the package imports nothing heavy: torch and transformers load with `hf`.
"""

__version__ = "0.2.0"
