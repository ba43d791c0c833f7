"""Named inputs of a case (`inputs.<name>` besides the token rows: pixel_values, input_features,
...): the splitmix64 generator (bit-identical with api/src/inputs.rs), the three forms (seeded
random, .npy, inline), every validation error located at its key, the .npy staleness rule of the
case digest, the dtypes the forward gets, and the manifest entry regen writes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens import spec  # noqa: E402
from harness_goldens.spec import CASE_KEYS, SpecError, golden_digest, load_case, load_model, random_tensor, splitmix64  # noqa: E402

VIT = (ROOT / "cases" / "models" / "vit-tiny.yaml").read_text()
# What structure.json records for vit-tiny (goldens/models/vit-tiny/structure.json).
VIT_INPUTS = [
    {"name": "pixel_values", "dtype": "float32", "rank": 4, "required": True},
    {"name": "attention_mask", "dtype": "int64", "rank": 2, "required": False},
]


def splitmix64_reference(seed: int, n: int) -> list[int]:
    """The generator as the contract states it, one Python integer at a time."""
    mask = (1 << 64) - 1
    state, out = seed, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


class Generator(unittest.TestCase):
    def test_the_contract_vectors(self):
        a = random_tensor([4], "float32", 7, -1.0, 1.0)
        self.assertEqual(a.dtype, np.float32)
        want = np.array([-0.22034060955047607, -0.966423511505127, 0.8015213012695312, 0.16586053371429443], dtype=np.float32)
        self.assertEqual(a.tobytes(), want.tobytes())
        b = random_tensor([4], "int64", 7, 3, 10)
        self.assertEqual(b.dtype, np.int64)
        self.assertEqual(b.tolist(), [5, 6, 3, 6])

    def test_vectorized_is_the_scalar_algorithm(self):
        for seed in (0, 1, 7, 9, 21, 2**63, 2**64 - 1):
            self.assertEqual(splitmix64(seed, 64).tolist(), splitmix64_reference(seed, 64), seed)

    def test_each_dtype_from_the_same_stream(self):
        z = splitmix64_reference(9, 24)
        f = random_tensor([2, 3, 4], "float32", 9, -1.0, 1.0)
        self.assertEqual(f.shape, (2, 3, 4))
        self.assertEqual(f.reshape(-1).tolist(), [float(np.float32(-1.0 + 2.0 * ((x >> 40) / 2**24))) for x in z])
        self.assertEqual(random_tensor([24], "bool", 9).tolist(), [x >> 63 == 1 for x in z])
        self.assertEqual(random_tensor([24], "int64", 9, -5, 5).tolist(), [-5 + x % 10 for x in z])
        # Defaults [0, 1); the widest int64 range (u64 span) does not overflow.
        self.assertEqual(random_tensor([3], "float32", 9).tolist(), [float(np.float32((x >> 40) / 2**24)) for x in z[:3]])
        wide = random_tensor([24], "int64", 9, -(2**63), 2**63 - 1)
        self.assertEqual(wide.tolist(), [-(2**63) + x % (2**64 - 1) for x in z])

    def test_the_committed_npy_is_seed_9(self):
        a = np.load(ROOT / "cases" / "vit" / "pixels.npy", allow_pickle=False)
        self.assertEqual((a.dtype.str, a.shape), ("<f4", (1, 3, 16, 16)))
        self.assertEqual(a.tobytes(), random_tensor([1, 3, 16, 16], "float32", 9, -1.0, 1.0).tobytes())


class Repo:
    """A throwaway project with vit-tiny's spec and, unless `structure=False`, a structure.json
    recorded from it (its `inputs` are what named inputs are checked against)."""

    def __init__(self, structure: bool = True):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        (self.root / "cases" / "models").mkdir(parents=True)
        (self.root / "cases" / "models" / "vit.yaml").write_text(VIT)
        if structure:
            d = self.root / "goldens" / "models" / "vit"
            d.mkdir(parents=True)
            digest = load_model(self.root, "vit").digest
            (d / "structure.json").write_text(json.dumps({"format": 1, "spec_digest": digest, "inputs": VIT_INPUTS}))

    def case(self, inputs: str, name: str = "c") -> Path:
        f = self.root / "cases" / "v" / f"{name}.yaml"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("model: vit\ninputs:\n" + textwrap.indent(textwrap.dedent(inputs).strip("\n"), "  ") + "\ntaps: [logits]\n")
        return f

    def load(self, inputs: str):
        return load_case(self.root, self.case(inputs), {})

    def close(self):
        self.tmp.cleanup()


class Forms(unittest.TestCase):
    def setUp(self):
        self.repo = Repo()

    def tearDown(self):
        self.repo.close()

    def test_random(self):
        c = self.repo.load("pixel_values:\n  random: {shape: [2, 3, 16, 16], dtype: float32, seed: 7, low: -1.0, high: 1.0}")
        a = c.inputs["pixel_values"]
        self.assertEqual((a.dtype, a.shape), (np.float32, (2, 3, 16, 16)))
        self.assertEqual(a.tobytes(), random_tensor([2, 3, 16, 16], "float32", 7, -1.0, 1.0).tobytes())
        self.assertIs(c.named["pixel_values"], a)
        self.assertNotIn("input_ids", c.inputs)  # not needed by ViT's forward

    def test_npy_relative_to_the_case_file(self):
        want = random_tensor([1, 3, 16, 16], "float32", 9, -1.0, 1.0)
        (self.repo.root / "cases" / "v").mkdir(parents=True)
        np.save(self.repo.root / "cases" / "v" / "img.npy", want)
        c = self.repo.load("pixel_values: {npy: img.npy}")
        self.assertEqual(c.inputs["pixel_values"].tobytes(), want.tobytes())
        self.assertEqual(c.inputs["pixel_values"].dtype, np.float32)

    def test_inline_takes_the_structure_dtype(self):
        row = "[" + ", ".join(["0.5"] * 4) + "]"
        plane = "[" + ", ".join([row] * 4) + "]"
        img = "[" + ", ".join([plane] * 3) + "]"
        c = self.repo.load(f"pixel_values: [{img}]")
        a = c.inputs["pixel_values"]
        self.assertEqual((a.dtype, a.shape), (np.float32, (1, 3, 4, 4)))
        # Integers in a float32 input are numbers too.
        c = self.repo.load(f"pixel_values: [{img.replace('0.5', '1')}]")
        self.assertEqual(c.inputs["pixel_values"].dtype, np.float32)
        self.assertTrue((c.inputs["pixel_values"] == 1.0).all())

    def test_inline_int64(self):
        repo = Repo(structure=False)  # KNOWN_INPUTS: position_ids is int64, rank 2
        try:
            c = repo.load("input_ids: [[5, 6, 7]]\nposition_ids: [[2, 3, 4]]")
            a = c.inputs["position_ids"]
            self.assertEqual((a.dtype, a.tolist()), (np.int64, [[2, 3, 4]]))
            self.assertEqual(c.inputs["input_ids"], [[5, 6, 7]])  # token rows stay rows
            f = repo.case("input_ids: [[5, 6, 7]]\nposition_ids: [[2, 3.5, 4]]")
            with self.assertRaisesRegex(SpecError, r"c\.yaml:\d+:\d+: `inputs\.position_ids\[0\]\[1\]` is 3\.5, but this input is int64"):
                load_case(repo.root, f, {})
        finally:
            repo.close()


class Errors(unittest.TestCase):
    """Each error is a SpecError `file:line:col: message` located at the input's key."""

    def setUp(self):
        self.repo = Repo()

    def tearDown(self):
        self.repo.close()

    def error(self, inputs: str, key: str = "pixel_values") -> str:
        f = self.repo.case(inputs)
        with self.assertRaises(SpecError) as e:
            load_case(self.repo.root, f, {})
        msg = str(e.exception)
        m = re.match(re.escape(str(f)) + r":(\d+):(\d+): ", msg)
        self.assertIsNotNone(m, f"not located: {msg}")
        # The line is within the key's entry (`inputs:`, or `  <key>:` and what it holds).
        lines = f.read_text().splitlines()
        head = "inputs:" if key == "inputs" else f"  {key}:"
        start = next(i for i, line in enumerate(lines) if line.startswith(head))
        indent = len(head) - len(head.lstrip())
        end = next((i for i in range(start + 1, len(lines)) if len(lines[i]) - len(lines[i].lstrip()) <= indent), len(lines)) - 1
        self.assertTrue(start <= int(m.group(1)) - 1 <= end, f"{msg}: not at `{key}` (lines {start + 1}-{end + 1})")
        self.assertIn(key, msg)
        return msg

    def test_unknown_name_lists_the_accepted_ones(self):
        msg = self.error("pixel_valuez:\n  random: {shape: [1, 3, 16, 16], dtype: float32, seed: 1}", "pixel_valuez")
        self.assertIn("unknown input `pixel_valuez`", msg)
        self.assertIn("`ViTForImageClassification`'s forward takes `pixel_values`", msg)

    def test_wrong_dtype(self):
        msg = self.error("pixel_values:\n  random: {shape: [1, 3, 16, 16], dtype: int64, seed: 1, low: 0, high: 4}")
        self.assertIn("is int64, but `ViTForImageClassification`'s forward takes `pixel_values` as float32", msg)
        (self.repo.root / "cases" / "v").mkdir(parents=True, exist_ok=True)
        np.save(self.repo.root / "cases" / "v" / "f64.npy", np.zeros((1, 3, 16, 16)))
        msg = self.error("pixel_values: {npy: f64.npy}")
        self.assertIn("f64.npy holds <f8", msg)

    def test_wrong_rank(self):
        msg = self.error("pixel_values:\n  random: {shape: [3, 16, 16], dtype: float32, seed: 1}")
        self.assertIn("has rank 3 (shape [3, 16, 16]), but `pixel_values` has rank 4", msg)

    def test_ragged_inline(self):
        msg = self.error("pixel_values: [[[[0.5, 0.5], [0.5]]]]")
        self.assertIn("ragged `inputs.pixel_values", msg)

    def test_missing_npy_names_the_path(self):
        msg = self.error("pixel_values: {npy: nowhere/img.npy}")
        self.assertIn("the file nowhere/img.npy does not exist", msg)

    def test_non_finite(self):
        msg = self.error("pixel_values: [[[[0.5, .nan]]]]")
        self.assertIn("non-finite value nan", msg)
        (self.repo.root / "cases" / "v").mkdir(parents=True, exist_ok=True)
        a = np.zeros((1, 3, 4, 4), dtype=np.float32)
        a[0, 1, 2, 3] = np.inf
        np.save(self.repo.root / "cases" / "v" / "inf.npy", a)
        msg = self.error("pixel_values: {npy: inf.npy}")
        self.assertIn("non-finite value inf at [0, 1, 2, 3]", msg)
        # Finite in float64, infinite once rounded to float32.
        msg = self.error("pixel_values:\n  random: {shape: [1, 3, 4, 4], dtype: float32, seed: 1, low: -1.0e+39, high: 1.0e+39}")
        self.assertIn("non-finite", msg)

    def test_batch_must_agree(self):
        msg = self.error("attention_mask: [[1, 1]]\npixel_values:\n  random: {shape: [2, 3, 4, 4], dtype: float32, seed: 1}")
        self.assertIn("`inputs.pixel_values` has batch 2 (its first axis), but `inputs.attention_mask` has 1", msg)

    def test_required_input_not_given(self):
        msg = self.error("input_ids: [[1, 2, 3]]", "inputs")
        self.assertIn("`ViTForImageClassification`'s forward needs `inputs.pixel_values` (float32, rank 4", msg)

    def test_bad_random_parameters(self):
        for bad, what in [
            ("{shape: [1, 3, 4, 4], dtype: float16, seed: 1}", "must be float32, int64 or bool"),
            ("{shape: [1, 0, 4, 4], dtype: float32, seed: 1}", "non-empty list of positive sizes"),
            ("{shape: [1, 3, 4, 4], dtype: float32, seed: -1}", "integer in [0, 2^64)"),
            ("{shape: [1, 3, 4, 4], dtype: float32, seed: 1, low: 1.0, high: 1.0}", "needs low < high"),
            ("{shape: [1, 3, 4, 4], dtype: float32}", "needs `seed`"),
            ("{shape: [1, 3, 4, 4], dtype: float32, seed: 1, scale: 2}", "unknown key `scale`"),
            ("{shape: [4096, 4096, 2, 1], dtype: float32, seed: 1}", "elements"),
        ]:
            with self.subTest(bad):
                self.assertIn(what, self.error(f"pixel_values:\n  random: {bad}"))

    def test_int64_random_needs_low_and_high(self):
        repo = Repo(structure=False)  # no structure.json: checked against KNOWN_INPUTS
        try:
            f = repo.case("pixel_values:\n  random: {shape: [1, 3, 4, 4], dtype: float32, seed: 1}\nposition_ids:\n  random: {shape: [1, 4], dtype: int64, seed: 1}")
            with self.assertRaisesRegex(SpecError, r"c\.yaml:\d+:\d+: `inputs\.position_ids\.random` of int64 needs `low`"):
                load_case(repo.root, f, {})
        finally:
            repo.close()


class WithoutStructure(unittest.TestCase):
    """Before the model's structure.json exists (a new model), names, dtypes and ranks are
    checked against KNOWN_INPUTS; regen checks the rest on the fresh structure."""

    def test_known_inputs_only(self):
        repo = Repo(structure=False)
        try:
            c = repo.load("pixel_values:\n  random: {shape: [1, 3, 16, 16], dtype: float32, seed: 1}")
            self.assertEqual(c.inputs["pixel_values"].shape, (1, 3, 16, 16))
            f = repo.case("pixel_valuez: [[1.0]]")
            with self.assertRaisesRegex(SpecError, r"unknown input `pixel_valuez`: the harness takes `position_ids`, `pixel_values`"):
                load_case(repo.root, f, {})
            f = repo.case("pixel_values: [[1.0]]")
            with self.assertRaisesRegex(SpecError, "has rank 2"):
                load_case(repo.root, f, {})
            f = repo.case("attention_mask: [[1]]")
            with self.assertRaisesRegex(SpecError, r"`inputs.input_ids` \(or `inputs.text`, or a named input"):
                load_case(repo.root, f, {})
        finally:
            repo.close()


class NpyStaleness(unittest.TestCase):
    def test_the_digest_follows_the_npy_bytes(self):
        with tempfile.TemporaryDirectory() as d:
            base = Path(d)
            doc = {"model": "vit", "inputs": {"pixel_values": {"npy": "img.npy"}}, "taps": ["logits"]}
            missing = golden_digest(doc, CASE_KEYS, base)
            np.save(base / "img.npy", np.zeros((1, 3, 4, 4), dtype=np.float32))
            first = golden_digest(doc, CASE_KEYS, base)
            self.assertNotEqual(first, missing)
            self.assertEqual(golden_digest(doc, CASE_KEYS, base), first)
            np.save(base / "img.npy", np.ones((1, 3, 4, 4), dtype=np.float32))
            second = golden_digest(doc, CASE_KEYS, base)
            self.assertNotEqual(second, first)
            # The rule: {npy: f} counts as {npy: f, sha256: <of the file, or "missing">}.
            sha = spec.sha256_file(base / "img.npy")
            as_rule = {**doc, "inputs": {"pixel_values": {"npy": "img.npy", "sha256": sha}}}
            self.assertEqual(second, golden_digest(as_rule, CASE_KEYS))
            (base / "img.npy").unlink()
            self.assertEqual(golden_digest(doc, CASE_KEYS, base), missing)
            gone = {**doc, "inputs": {"pixel_values": {"npy": "img.npy", "sha256": "missing"}}}
            self.assertEqual(missing, golden_digest(gone, CASE_KEYS))

    def test_cases_without_npy_keep_their_digest(self):
        import yaml

        doc = yaml.safe_load((ROOT / "cases" / "bert" / "sequence.yaml").read_text())
        self.assertEqual(golden_digest(doc, CASE_KEYS, ROOT / "cases" / "bert"), golden_digest(doc, CASE_KEYS))
        m = json.loads((ROOT / "goldens" / "bert" / "sequence" / "manifest.json").read_text())
        self.assertEqual(load_case(ROOT, ROOT / "cases" / "bert" / "sequence.yaml", {}).digest, m["case_digest"])

    def test_the_committed_npy_case_digest_covers_the_file(self):
        f = ROOT / "cases" / "vit" / "pixels-npy.yaml"
        m = json.loads((ROOT / "goldens" / "vit" / "pixels-npy" / "manifest.json").read_text())
        self.assertEqual(load_case(ROOT, f, {}).digest, m["case_digest"])


class Forward(unittest.TestCase):
    def test_each_dtype_reaches_the_forward_as_its_torch_dtype(self):
        from harness_goldens import hf

        torch = hf.torch
        model = torch.nn.Linear(2, 2)
        self.assertEqual(hf.as_tensor([[1, 2]], model).dtype, torch.long)
        self.assertEqual(hf.as_tensor(np.zeros((1, 2), dtype=np.float32), model).dtype, torch.float32)
        self.assertEqual(hf.as_tensor(np.zeros((1, 2), dtype=np.int64), model).dtype, torch.long)
        self.assertEqual(hf.as_tensor(np.zeros((1, 2), dtype=bool), model).dtype, torch.bool)
        # The float64 run (noise floors) gets float inputs in float64, exactly.
        x = random_tensor([1, 2], "float32", 3, -1.0, 1.0)
        t = hf.as_tensor(x, model.to(torch.float64))
        self.assertEqual(t.dtype, torch.float64)
        self.assertEqual(t.to(torch.float32).numpy().tobytes(), x.tobytes())


class Regen(unittest.TestCase):
    """The goldens tool on a ViT case from a .npy: the manifest records the input, and new
    bytes in the .npy make the case stale."""

    def test_manifest_and_staleness(self):
        from harness_goldens import regen

        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            (root / "cases" / "models").mkdir(parents=True)
            (root / "goldens").mkdir()
            shutil.copy(ROOT / "cases" / "models" / "vit-tiny.yaml", root / "cases" / "models" / "vit-tiny.yaml")
            (root / "cases" / "vit").mkdir()
            img = random_tensor([1, 3, 16, 16], "float32", 5, -1.0, 1.0)
            np.save(root / "cases" / "vit" / "img.npy", img)
            (root / "cases" / "vit" / "a.yaml").write_text("model: vit-tiny\ninputs:\n  pixel_values: {npy: img.npy}\ntaps: [vit.embeddings, logits]\n")

            def run(*args):
                err = io.StringIO()
                ci = os.environ.pop("CI", None)
                try:
                    with redirect_stderr(err):
                        rc = regen.main(["--root", str(root), "--quiet", *args])
                finally:
                    if ci is not None:
                        os.environ["CI"] = ci
                return rc, err.getvalue()

            rc, err = run()
            self.assertEqual(rc, 0, err)
            self.assertIn("regenerated 1 of 1", err)
            m = json.loads((root / "goldens" / "vit" / "a" / "manifest.json").read_text())
            self.assertEqual(
                m["inputs"],
                [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, 16, 16], "sha256": spec.sha256_bytes(img.tobytes())}],
            )
            self.assertEqual([t["name"] for t in m["taps"]], ["vit.embeddings", "logits"])
            s = json.loads((root / "goldens" / "models" / "vit-tiny" / "structure.json").read_text())
            self.assertEqual((s["main_input"], s["causal"], s["vocab_size"]), ("pixel_values", False, None))
            rc, err = run()
            self.assertIn("regenerated 0 of 1", err)
            np.save(root / "cases" / "vit" / "img.npy", img * np.float32(0.5))
            rc, err = run()
            self.assertEqual(rc, 0, err)
            self.assertIn("regenerated 1 of 1", err, "new bytes in the .npy did not make the case stale")
            m2 = json.loads((root / "goldens" / "vit" / "a" / "manifest.json").read_text())
            self.assertNotEqual(m2["inputs"][0]["sha256"], m["inputs"][0]["sha256"])
            self.assertNotEqual(m2["case_digest"], m["case_digest"])
            rc, err = run("--check")
            self.assertEqual(rc, 0, err)
            # An image of another size: HF refuses it; the error is located at the input, with
            # what the forward was given, and nothing is written.
            (root / "cases" / "vit" / "b.yaml").write_text(
                "model: vit-tiny\ninputs:\n  pixel_values: {random: {shape: [1, 3, 15, 16], dtype: float32, seed: 1}}\ntaps: [logits]\n"
            )
            rc, err = run("--case", "vit/b")
            self.assertEqual(rc, 1, err)
            self.assertIn("b.yaml:3:17: HF's forward of `ViTForImageClassification` refuses this case's inputs: ValueError:", err)
            self.assertIn("hint: the forward was given pixel_values float32 [1, 3, 15, 16]", err)
            self.assertNotIn("Traceback", err)
            self.assertFalse((root / "goldens" / "vit" / "b").exists())


if __name__ == "__main__":
    unittest.main()
