"""The project file harness.toml (harness_goldens/project.py): found in the current directory or a
parent, its [paths], `--root` overriding it, the fallback without one and the error without any
project. And the goldens tool as a package (tools/pyproject.toml): its pins are
requirements.txt's, its commands resolve, `python -m harness_goldens` runs.

`pip install ./tools` into a fresh venv is checked by tools/tests/install_check.sh (slow: it
installs torch), which .ci/run calls.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import unittest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

import harness_goldens  # noqa: E402
from harness_goldens import project, spec  # noqa: E402
from harness_goldens.project import ProjectError  # noqa: E402


@contextlib.contextmanager
def cwd(d: Path):
    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def regen(*args: str) -> tuple[int, str]:
    from harness_goldens import regen as tool

    err = io.StringIO()
    env = os.environ.pop("CI", None)
    try:
        with contextlib.redirect_stderr(err):
            rc = tool.main(["--quiet", *args])
    finally:
        if env is not None:
            os.environ["CI"] = env
    return rc, err.getvalue()


class Discovery(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.t = Path(self.tmp.name).resolve()

    def tearDown(self):
        self.tmp.cleanup()

    def test_harness_toml_in_a_parent_directory(self):
        f = write(self.t / "p" / "harness.toml", "[paths]\ncases = \"cases\"\ngoldens = \"goldens\"\n")
        (self.t / "p" / "a" / "b").mkdir(parents=True)
        # A nearer directory with cases/ and goldens/ but no harness.toml does not stop the search.
        (self.t / "p" / "a" / "cases").mkdir()
        (self.t / "p" / "a" / "goldens").mkdir()
        for start in (self.t / "p", self.t / "p" / "a" / "b"):
            p = project.find(start)
            self.assertEqual((p.root, p.cases, p.goldens, p.file), (self.t / "p", self.t / "p" / "cases", self.t / "p" / "goldens", f))
        with cwd(self.t / "p" / "a" / "b"):
            self.assertEqual(project.find().root, self.t / "p")

    def test_defaults_and_ignored_tables(self):
        # An empty file is a project with the default paths; other tables and keys are the Rust
        # side's ([python], [commands]) or unknown, and ignored.
        write(self.t / "harness.toml", "")
        p = project.find(self.t)
        self.assertEqual((p.cases, p.goldens), (self.t / "cases", self.t / "goldens"))
        write(self.t / "harness.toml", """\
            [paths]
            cases = "cases"
            later = "x"
            [python]
            command = "tools/.venv/bin/python"
            [commands]
            test = "cargo test"
            """)
        self.assertEqual(project.find(self.t).cases, self.t / "cases")

    def test_custom_paths_relative_to_the_file(self):
        write(self.t / "repo" / "harness.toml", """\
            [paths]
            cases = "spec/cases"
            goldens = "../shared/goldens"
            """)
        p = project.find(self.t / "repo")
        self.assertEqual((p.root, p.cases, p.goldens), (self.t / "repo", self.t / "repo/spec/cases", self.t / "shared/goldens"))
        self.assertEqual(p.label(p.cases / "llama"), "spec/cases/llama")
        self.assertEqual(p.label(p.goldens / "llama"), str(self.t / "shared/goldens/llama"))
        # Everything that reads cases and goldens uses them.
        write(p.cases / "models" / "m.yaml", "family: LlamaForCausalLM\nsource: {random: {seed: 1}}\nconfig: {vocab_size: 8}\n")
        write(p.cases / "models" / "c.yaml", "family: BertModel\nsource: {path: ckpt/c}\n")
        case = write(p.cases / "x" / "a.yaml", "model: m\ninputs: {input_ids: [1, 2]}\ntaps: [logits]\n")
        write(p.cases / "engines" / "e.yaml", "command: [x]\n")
        self.assertEqual(spec.discover(p), [case])
        c = spec.load_case(p, case, {})
        self.assertEqual(c.id, "x/a")
        self.assertEqual(c.model.file, p.cases / "models" / "m.yaml")
        self.assertEqual(c.model.dir(p), self.t / "shared/goldens/models/m")
        self.assertEqual(spec.load_model(p, "c").dir(p), self.t / "repo/ckpt/c")
        # A root directory instead of a Project reads its harness.toml the same way.
        self.assertEqual(spec.load_case(self.t / "repo", case, {}).model.dir(self.t / "repo"), self.t / "shared/goldens/models/m")

    def test_root_overrides_discovery(self):
        from harness_goldens.regen import project_of

        write(self.t / "a" / "harness.toml", "")
        write(self.t / "b" / "harness.toml", "[paths]\ncases = \"c\"\n")
        (self.t / "c").mkdir()
        with cwd(self.t / "a"):
            self.assertEqual(project_of(None).root, self.t / "a")
            b = project_of(self.t / "b")
            self.assertEqual((b.root, b.cases, b.goldens), (self.t / "b", self.t / "b" / "c", self.t / "b" / "goldens"))
            # --root without a harness.toml: the default paths under it (no search upwards).
            c = project_of(self.t / "c")
            self.assertEqual((c.root, c.cases, c.file), (self.t / "c", self.t / "c" / "cases", None))

    def test_without_harness_toml_the_nearest_directory_with_cases_and_goldens(self):
        (self.t / "r" / "cases").mkdir(parents=True)
        (self.t / "r" / "goldens").mkdir()
        (self.t / "r" / "x" / "cases").mkdir(parents=True)  # no goldens/: not a root
        p = project.find(self.t / "r" / "x")
        self.assertEqual((p.root, p.cases, p.goldens, p.file), (self.t / "r", self.t / "r" / "cases", self.t / "r" / "goldens", None))

    def test_no_project_is_an_error_naming_harness_init(self):
        (self.t / "empty").mkdir()
        with self.assertRaises(ProjectError) as e:
            project.find(self.t / "empty")
        self.assertIn(f"no harness.toml in {self.t / 'empty'} or any parent directory", str(e.exception))
        self.assertIn("`harness init`", str(e.exception))
        with cwd(self.t / "empty"):
            rc, err = regen("--check")
        self.assertEqual(rc, 2)
        self.assertRegex(err, r"^error: no harness.toml in .*\(hint: create a project with `harness init`, or name its root with --root DIR\)\n$")

    def test_bad_project_files(self):
        f = self.t / "harness.toml"
        for text, msg in [
            ("[paths\n", "invalid TOML: "),
            ("paths = 3\n", "`paths` must be a table"),
            ("[paths]\ncases = 3\n", "`paths.cases` must be a directory"),
            ("[paths]\ngoldens = \"\"\n", "`paths.goldens` must be a directory"),
        ]:
            with self.subTest(text=text):
                f.write_text(text)
                with self.assertRaises(ProjectError) as e:
                    project.find(self.t)
                self.assertIn(f"{f}: {msg}", str(e.exception))
        f.write_text("[paths]\ncases = \"nowhere\"\n")
        rc, err = regen("--root", str(self.t))
        self.assertEqual(rc, 2)
        self.assertIn(f"error: {self.t / 'nowhere'}: the cases directory does not exist (hint: check `cases` under `[paths]` in {f})", err)

    def test_check_in_a_project_with_custom_paths(self):
        # llama/mha with its model, under moved directories; run from a subdirectory.
        root = self.t / "engine"
        write(root / "harness.toml", "[paths]\ncases = \"harness/cases\"\ngoldens = \"harness/goldens\"\n")
        for rel in ["llama/mha.yaml", "models/llama-tiny-mha.yaml"]:
            (root / "harness/cases" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "cases" / rel, root / "harness/cases" / rel)
        for rel in ["llama/mha", "models/llama-tiny-mha"]:
            shutil.copytree(ROOT / "goldens" / rel, root / "harness/goldens" / rel)
        (root / "src").mkdir()
        with cwd(root / "src"):
            rc, err = regen("--check")
        self.assertEqual(rc, 0, err)
        self.assertIn("ok: 1 cases and 1 models (weights and structure.json) reproduced bit for bit", err)
        (root / "harness/goldens/llama/mha/logits.npy").unlink()
        with cwd(root / "src"):
            rc, err = regen("--check")
        self.assertEqual(rc, 1)
        self.assertIn("differs: harness/goldens/llama/mha/logits.npy: missing from the repository", err)


def pyproject() -> dict:
    return tomllib.loads((TOOLS / "pyproject.toml").read_text())


class Package(unittest.TestCase):
    def test_dependencies_are_the_requirements_pins(self):
        pins = []
        for line in (TOOLS / "requirements.txt").read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                pins.append(line)
        self.assertTrue(all(re.fullmatch(r"[\w.-]+==[\w.+-]+", p) for p in pins), pins)
        self.assertEqual(pyproject()["project"]["dependencies"], pins)

    def test_version(self):
        self.assertEqual(pyproject()["project"]["version"], harness_goldens.__version__)

    def test_console_scripts_resolve(self):
        scripts = pyproject()["project"]["scripts"]
        self.assertEqual(sorted(scripts), ["harness-goldens", "harness-hf-oracle"])
        for target in scripts.values():
            module, func = target.split(":")
            self.assertTrue(callable(getattr(importlib.import_module(module), func)), target)

    def test_python_m_harness_goldens(self):
        env = {**os.environ, "PYTHONPATH": str(TOOLS)}
        p = subprocess.run([sys.executable, "-m", "harness_goldens", "--help"], capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("usage: python -m harness_goldens", p.stdout)


if __name__ == "__main__":
    unittest.main()
