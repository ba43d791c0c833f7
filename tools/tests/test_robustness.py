"""Robustness of the goldens tool (harness_goldens): `python -m unittest discover -s tools/tests`.

- `--check` says `ok:` only when every selected case and model was checked; otherwise `partial:`
  (exit 0) naming what was not and why, an error under CI;
- staleness covers a checkpoint's config, tokenizer and sentence-transformers files (case
  manifests' `model.files_sha256`) and a random model's GGUF files (provenance.json's
  `files_sha256`), and the committed goldens are fresh;
- one writer per golden directory (store.lock), shown with two real processes;
- written files have the mode a plain open() gives (0o666 & ~umask), model.safetensors too.

Everything runs in throwaway repositories under a temp dir, never on the real goldens.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stderr
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens import store  # noqa: E402

LLAMA = """
family: LlamaForCausalLM
source: {random: {seed: 1}}
config:
  vocab_size: 64
  hidden_size: 32
  intermediate_size: 64
  num_hidden_layers: 1
  num_attention_heads: 2
  num_key_value_heads: 1
  max_position_embeddings: 32
  initializer_range: 0.1
"""
BERT = """
family: BertModel
source: {random: {seed: 2}}
config:
  vocab_size: 64
  hidden_size: 16
  intermediate_size: 32
  num_hidden_layers: 1
  num_attention_heads: 2
  max_position_embeddings: 32
  type_vocab_size: 2
"""
CASE = """
model: {model}
inputs:
  input_ids: [[1, 5, 9, 13, 2]]
taps: [{tap}]
"""


@contextlib.contextmanager
def env(**kv):
    """Environment variables set (None: unset) for the block."""
    old = {k: os.environ.get(k) for k in kv}
    try:
        for k, v in kv.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class Repo:
    """A throwaway repository (cases/, goldens/, models/) in a temp dir."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        (self.root / "cases" / "models").mkdir(parents=True)
        (self.root / "goldens").mkdir()

    def spec(self, mid: str, text: str):
        (self.root / "cases" / "models" / f"{mid}.yaml").write_text(textwrap.dedent(text))

    def case(self, cid: str, model: str, tap: str = "logits", text: str | None = None):
        f = self.root / "cases" / f"{cid}.yaml"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text if text is not None else CASE.format(model=model, tap=tap))

    def copy_committed(self, case: str, model: str):
        """A committed case of this repository with its model spec and goldens."""
        for rel in [f"cases/{case}.yaml", f"cases/models/{model}.yaml"]:
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, self.root / rel)
        shutil.copytree(ROOT / "goldens/models" / model, self.root / "goldens/models" / model)
        shutil.copytree(ROOT / "goldens" / case, self.root / "goldens" / case)

    def checkpoint(self, mid: str = "ckpt", extra: dict[str, str] | None = None) -> Path:
        """A `path:` checkpoint under models/<mid>/: a tiny random BERT saved there, with the
        files `extra` names."""
        from harness_goldens import hf
        from harness_goldens.spec import load_model

        self.spec("src", BERT)
        d = self.root / "models" / mid
        hf.build_random(load_model(self.root, "src"), d)
        (self.root / "cases/models/src.yaml").unlink()
        for name, text in (extra or {}).items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
        self.spec(mid, f"family: BertModel\nsource: {{path: models/{mid}, fetch: tools/fetch_models.sh}}\n")
        return d

    def regen(self, *args, ci: str | None = None) -> tuple[int, str]:
        from harness_goldens import regen

        err = io.StringIO()
        with env(CI=ci), redirect_stderr(err):
            rc = regen.main(["--root", str(self.root), "--quiet", *args])
        return rc, err.getvalue()

    def manifest(self, cid: str) -> dict:
        return json.loads((self.root / "goldens" / cid / "manifest.json").read_text())

    def close(self):
        self.tmp.cleanup()


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# 1. --check: ok only when everything was checked


class CheckSummary(unittest.TestCase):
    def setUp(self):
        self.repo = Repo()
        self.repo.copy_committed("llama/mha", "llama-tiny-mha")

    def tearDown(self):
        self.repo.close()

    def test_everything_checked_is_ok(self):
        rc, err = self.repo.regen("--check")
        self.assertEqual(rc, 0, err)
        self.assertEqual(last_line(err), "ok: 1 cases and 1 models (weights and structure.json) reproduced bit for bit")

    def test_an_absent_checkpoint_makes_it_partial_and_fails_under_ci(self):
        # A checkpoint spec whose directory is absent, used by two cases.
        self.repo.spec("gone", "family: BertModel\nsource: {path: models/gone, fetch: tools/fetch_models.sh}\n")
        self.repo.case("bert/a", "gone", "last_hidden_state")
        self.repo.case("bert/b", "gone", "last_hidden_state")
        rc, err = self.repo.regen("--check")
        self.assertEqual(rc, 0, err)
        self.assertNotIn("ok:", err)
        self.assertEqual(
            last_line(err),
            "partial: 1 of 3 cases and 1 models (weights and structure.json) reproduced bit for bit; "
            "3 unchecked: model gone absent (models/gone, bert/a, bert/b; hint: provide it with: tools/fetch_models.sh)",
        )
        for ci in ("true", "1"):
            rc, err = self.repo.regen("--check", ci=ci)
            self.assertEqual(rc, 1, err)
            self.assertNotIn("ok:", err)
            self.assertIn("error: with CI set, a partial check fails: 1 of 3 cases", last_line(err))
            self.assertIn("3 unchecked: model gone absent (models/gone, bert/a, bert/b;", last_line(err))
        # CI=false is not CI.
        rc, err = self.repo.regen("--check", ci="false")
        self.assertEqual(rc, 0, err)
        # Only the absent model's cases selected: nothing checked at all, still partial.
        rc, err = self.repo.regen("--check", "--case", "bert/*")
        self.assertEqual(rc, 0, err)
        self.assertTrue(last_line(err).startswith("partial: 0 of 2 cases and 0 models"), err)

    def test_a_broken_case_file_is_an_error_naming_it_not_ok(self):
        self.repo.case("llama/broken", "llama-tiny-mha", text="model: [unclosed\n")
        rc, err = self.repo.regen("--check")
        self.assertEqual(rc, 1, err)
        self.assertNotIn("ok:", err)
        self.assertIn("1 unchecked: the case file has an error (above) (llama/broken)", last_line(err))
        self.assertTrue(last_line(err).startswith("error: only 1 of 2 cases"), err)

    def test_differences_are_still_errors(self):
        (self.repo.root / "goldens/llama/mha/logits.npy").write_bytes(b"x")
        rc, err = self.repo.regen("--check")
        self.assertEqual(rc, 1)
        self.assertIn("differs: goldens/llama/mha/logits.npy: differs from a fresh regeneration", err)
        self.assertNotIn("ok:", err)


# ---------------------------------------------------------------------------------------------
# 2. Staleness: a checkpoint's files, a random model's GGUF files


TOKENIZER = {
    "tokenizer.json": '{"version": "1.0"}\n',
    "tokenizer_config.json": '{"do_lower_case": true}\n',
    "special_tokens_map.json": '{"unk_token": "[UNK]"}\n',
    "vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
    "README.md": "not a dependency\n",
}


class CheckpointFilesStale(unittest.TestCase):
    def test_editing_adding_or_removing_a_file_the_goldens_depend_on(self):
        from harness_goldens import regen
        from harness_goldens.spec import load_case

        repo = Repo()
        try:
            d = repo.checkpoint("ckpt", TOKENIZER)
            repo.case("x/a", "ckpt", "last_hidden_state")
            repo.spec("tiny", LLAMA)
            repo.case("x/r", "tiny")
            rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            self.assertEqual(last_line(err), "regenerated 2 of 2 cases")
            files = repo.manifest("x/a")["model"]["files_sha256"]
            self.assertEqual(sorted(files), ["config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"])
            self.assertEqual(files["vocab.txt"], hashlib.sha256(TOKENIZER["vocab.txt"].encode()).hexdigest())
            # A random model's case manifest has no such key (its manifests keep their bytes).
            self.assertNotIn("files_sha256", repo.manifest("x/r")["model"])
            rc, err = repo.regen()
            self.assertEqual(last_line(err), "regenerated 0 of 2 cases", err)

            def stale() -> bool:
                c = load_case(repo.root, repo.root / "cases/x/a.yaml", {})
                return regen.case_is_stale(c, repo.root / "goldens/x/a", d)

            self.assertFalse(stale())
            edits = [
                ("tokenizer.json edited", lambda: (d / "tokenizer.json").write_text('{"version": "1.1"}\n')),
                ("vocab.txt edited", lambda: (d / "vocab.txt").write_text(TOKENIZER["vocab.txt"] + "world\n")),
                ("special_tokens_map.json removed", lambda: (d / "special_tokens_map.json").unlink()),
                ("added_tokens.json added", lambda: (d / "added_tokens.json").write_text("{}\n")),
                ("config.json edited (same config)", lambda: (d / "config.json").write_text((d / "config.json").read_text() + "\n")),
                # sentence-transformers: modules.json and the module directories it names.
                (
                    "modules.json added",
                    lambda: (d / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]\n'),
                ),
                ("1_Pooling/config.json added", lambda: ((d / "1_Pooling").mkdir(), (d / "1_Pooling/config.json").write_text('{"pooling_mode_mean_tokens": true}\n'))),
            ]
            from harness_goldens.spec import files_sha256, load_model

            spec = load_model(repo.root, "ckpt")
            for what, edit in edits:
                with self.subTest(what):
                    edit()
                    self.assertTrue(stale(), f"{what}: the goldens are not stale")
                    # Recorded as they are now: fresh again (the file list is what the manifest holds).
                    m = repo.manifest("x/a")
                    m["model"]["files_sha256"] = files_sha256(spec, d)
                    (repo.root / "goldens/x/a/manifest.json").write_bytes(store.manifest_bytes(m))
                    self.assertFalse(stale(), what)
            self.assertIn("1_Pooling/config.json", files_sha256(spec, d))
            # A file the goldens do not depend on changes nothing.
            (d / "README.md").write_text("edited\n")
            self.assertFalse(stale())
        finally:
            repo.close()

    def test_regen_regenerates_after_a_tokenizer_edit_and_check_reproduces(self):
        repo = Repo()
        try:
            d = repo.checkpoint("ckpt", TOKENIZER)
            repo.case("x/a", "ckpt", "last_hidden_state")
            self.assertEqual(repo.regen()[0], 0)
            before = repo.manifest("x/a")
            (d / "tokenizer_config.json").write_text('{"do_lower_case": false}\n')
            rc, err = repo.regen()
            self.assertEqual((rc, last_line(err)), (0, "regenerated 1 of 1 cases"), err)
            after = repo.manifest("x/a")
            self.assertNotEqual(before["model"]["files_sha256"]["tokenizer_config.json"], after["model"]["files_sha256"]["tokenizer_config.json"])
            self.assertEqual(before["taps"], after["taps"], "the tensors do not depend on this file")
            rc, err = repo.regen("--check")
            self.assertEqual(rc, 0, err)
            self.assertTrue(last_line(err).startswith("ok: 1 cases and 1 models"), err)
        finally:
            repo.close()


class GgufStale(unittest.TestCase):
    def test_an_edited_gguf_makes_the_model_stale_and_is_rebuilt(self):
        from harness_goldens import regen
        from harness_goldens.spec import load_model

        repo = Repo()
        try:
            repo.spec("g", LLAMA + "gguf: [f32]\n")
            repo.case("x/g", "g")
            repo.spec("plain", LLAMA)
            repo.case("x/p", "plain")
            rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            md = repo.root / "goldens/models/g"
            prov = json.loads((md / "provenance.json").read_text())
            gguf = (md / "model.f32.gguf").read_bytes()
            self.assertEqual(prov["files_sha256"], {"model.f32.gguf": hashlib.sha256(gguf).hexdigest()})
            self.assertEqual(list(prov)[list(prov).index("weights_sha256") + 1], "files_sha256")
            self.assertNotIn("files_sha256", json.loads((repo.root / "goldens/models/plain/provenance.json").read_text()))
            spec = load_model(repo.root, "g")
            self.assertFalse(regen.model_is_stale(spec, md))
            edited = bytearray(gguf)
            edited[-1] ^= 1
            (md / "model.f32.gguf").write_bytes(bytes(edited))
            self.assertTrue(regen.model_is_stale(spec, md), "an edited GGUF file is not stale")
            rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            self.assertEqual((md / "model.f32.gguf").read_bytes(), gguf, "the GGUF was not rebuilt")
            self.assertFalse(regen.model_is_stale(spec, md))
        finally:
            repo.close()


class CommittedGoldensAreFresh(unittest.TestCase):
    """Every committed case whose model is here is fresh by the rules above, and only
    checkpoint cases record `files_sha256` (random models' manifests kept their bytes)."""

    def test_fresh(self):
        from harness_goldens import regen
        from harness_goldens.project import Project
        from harness_goldens.spec import discover, load_case

        proj = Project.at(ROOT)
        models: dict = {}
        seen = 0
        for f in discover(proj):
            c = load_case(proj, f, models)
            if c.reference_engine is not None:
                continue
            m = json.loads((proj.goldens / c.id / "manifest.json").read_text())
            if c.model.is_random:
                self.assertNotIn("files_sha256", m["model"], c.id)
            if c.model.absent(proj) is not None:
                continue
            self.assertFalse(regen.case_is_stale(c, proj.goldens / c.id, c.model.dir(proj)), f"{c.id} is stale")
            seen += 1
        self.assertGreater(seen, 0)
        for spec in models.values():
            if spec.is_random:
                self.assertFalse(regen.model_is_stale(spec, proj.goldens / "models" / spec.id), spec.id)


# ---------------------------------------------------------------------------------------------
# 3. One writer per golden directory


# Writes goldens/x/case as a regen does (temp dir, files one by one, swap) under the case's lock,
# logging start and end to a shared file; says on stdout when it holds the lock.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from harness_goldens import store
    root, log = Path(sys.argv[2]), sys.argv[3]
    def note(what):
        with open(log, "a") as f:
            f.write(f"{what} {os.getpid()}\\n")
    with store.lock(root, "x/case"):
        print("locked", flush=True)
        note("start")
        final = root / "x" / "case"
        tmp = store.tmp_sibling(final)
        for k in range(4):
            store.write_files(tmp, {f"t{k}.npy": str(os.getpid()).encode()})
            time.sleep(0.5)
        store.commit_dir(tmp, final)
        note("end")
    """
)


class Lock(unittest.TestCase):
    def test_two_writers_never_interleave_and_the_second_says_whom_it_waits_for(self):
        with tempfile.TemporaryDirectory() as t:
            root, log = Path(t) / "goldens", Path(t) / "log"
            root.mkdir()
            cmd = [sys.executable, "-c", WRITER, str(TOOLS), str(root), str(log)]
            a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(a.stdout.readline().strip(), "locked")
            b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out_b, err_b = b.communicate(timeout=60)
            out_a, err_a = a.communicate(timeout=60)
            self.assertEqual((a.returncode, b.returncode), (0, 0), err_a + err_b)
            self.assertIn(f"note: waiting for another regen of x/case (pid {a.pid})", err_b)
            self.assertNotIn("waiting", err_a)
            events = log.read_text().split("\n")[:-1]
            self.assertEqual(events, [f"start {a.pid}", f"end {a.pid}", f"start {b.pid}", f"end {b.pid}"], "the writers interleaved")
            final = root / "x" / "case"
            self.assertEqual({p.read_text() for p in final.iterdir()}, {str(b.pid)}, "the directory is not one writer's")
            self.assertEqual(sorted(p.name for p in (root / "x").iterdir()), ["case"], "a temp directory was left")
            self.assertFalse((root / store.LOCKS).exists(), "the lock file outlived the writers")

    def test_many_short_holders_never_overlap(self):
        # The lock file is removed by each holder as it lets go: waiters that locked the removed
        # file must open it again, never hold "the lock" two at a time.
        script = textwrap.dedent(
            """
            import os, sys
            from pathlib import Path
            sys.path.insert(0, sys.argv[1])
            from harness_goldens import store
            root, log = Path(sys.argv[2]), sys.argv[3]
            for _ in range(40):
                with store.lock(root, "x/case"):
                    with open(log, "a") as f:
                        f.write(f"start {os.getpid()}\\n")
                    with open(log, "a") as f:
                        f.write(f"end {os.getpid()}\\n")
            """
        )
        with tempfile.TemporaryDirectory() as t:
            root, log = Path(t) / "goldens", Path(t) / "log"
            root.mkdir()
            procs = [subprocess.Popen([sys.executable, "-c", script, str(TOOLS), str(root), str(log)], stderr=subprocess.PIPE, text=True) for _ in range(4)]
            for p in procs:
                err = p.communicate(timeout=120)[1]
                self.assertEqual(p.returncode, 0, err)
            events = log.read_text().split("\n")[:-1]
            self.assertEqual(len(events), 4 * 40 * 2)
            for i in range(0, len(events), 2):
                start, end = events[i], events[i + 1]
                self.assertEqual((start.split()[0], end.split()[0], start.split()[1]), ("start", "end", end.split()[1]), f"overlap at {i}: {events[i:i + 4]}")
            self.assertFalse((root / store.LOCKS).exists())

    def test_recover_leaves_alone_a_directory_being_written(self):
        with tempfile.TemporaryDirectory() as t:
            root = Path(t)
            busy = root / "x" / ".case.tmp-999999"
            busy.mkdir(parents=True)
            holder = subprocess.Popen(
                [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from harness_goldens import store\n"
                 "with store.lock(Path(sys.argv[2]), 'x/case'):\n    print('locked', flush=True); time.sleep(60)", str(TOOLS), str(root)],
                stdout=subprocess.PIPE, text=True,
            )
            try:
                self.assertEqual(holder.stdout.readline().strip(), "locked")
                self.assertTrue(store.is_locked(root, "x/case"))
                self.assertEqual(store.recover(root), [])
                self.assertTrue(busy.exists(), "recover removed the temp directory of a running writer")
            finally:
                holder.kill()
                holder.wait()
            self.assertFalse(store.is_locked(root, "x/case"), "a killed holder left the lock held")
            self.assertTrue(store.lock_file(root, "x/case").exists())
            self.assertEqual(store.recover(root), [f"removed unfinished {busy}"])
            self.assertFalse(busy.exists())
            self.assertFalse((root / store.LOCKS).exists(), "the killed holder's lock file was not removed")
            # A lock file left by a killed run is taken over, then removed.
            store.lock_file(root, "x/case").parent.mkdir(parents=True)
            store.lock_file(root, "x/case").write_text("999999\n")
            with store.lock(root, "x/case"):
                self.assertEqual(store.lock_file(root, "x/case").read_text(), f"{os.getpid()}\n")
            self.assertFalse((root / store.LOCKS).exists())

    def test_two_regens_of_one_case_run_one_after_the_other(self):
        # Two real `regen_goldens.py --case llama/mha` on a stale copy of the case, started together:
        # the second to get the lock finds the goldens fresh (one regenerates, never both).
        repo = Repo()
        try:
            repo.copy_committed("llama/mha", "llama-tiny-mha")
            case = repo.root / "cases/llama/mha.yaml"
            case.write_text(case.read_text().replace("[[1, 17,", "[[1, 18,"))
            cmd = [sys.executable, str(TOOLS / "regen_goldens.py"), "--root", str(repo.root), "--quiet", "--case", "llama/mha"]
            e = {**os.environ, "CI": ""}
            procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            errs = [p.communicate(timeout=600)[1] for p in procs]
            self.assertEqual([p.returncode for p in procs], [0, 0], errs)
            self.assertEqual(sorted(last_line(x) for x in errs), ["regenerated 0 of 1 cases", "regenerated 1 of 1 cases"], errs)
            d = repo.root / "goldens/llama/mha"
            m = repo.manifest("llama/mha")
            self.assertEqual({p.name for p in d.iterdir()}, {e["file"] for e in m["taps"]} | {"manifest.json"})
            for t in m["taps"]:
                self.assertEqual(hashlib.sha256((d / t["file"]).read_bytes()).hexdigest(), t["sha256"])
            self.assertEqual(sorted(p.name for p in d.parent.iterdir()), ["mha"], "a temp directory was left")
        finally:
            repo.close()


# ---------------------------------------------------------------------------------------------
# 4. File modes


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


class Modes(unittest.TestCase):
    def test_store_writes_honour_the_umask(self):
        for mask in (0o022, 0o002, 0o077, 0o027):
            with self.subTest(umask=oct(mask)), tempfile.TemporaryDirectory() as t, umask(mask):
                t = Path(t)
                self.assertEqual(store.umask(), mask)
                store.write_file_atomic(t / "m" / "structure.json", b"{}\n")
                self.assertEqual(modes(t / "m"), {"structure.json": 0o666 & ~mask})
                # Replacing a 0o600 file (as mkstemp or an old run left it) gives the umask's mode.
                (t / "m" / "structure.json").chmod(0o600)
                store.write_file_atomic(t / "m" / "structure.json", b"{}\n")
                self.assertEqual(modes(t / "m"), {"structure.json": 0o666 & ~mask})
                # A directory written whole and swapped in, the directory made by mkdtemp (0o700).
                tmp = Path(tempfile.mkdtemp(dir=t, prefix=".case.tmp-"))
                store.write_files(tmp, {"a.npy": b"a", "manifest.json": b"{}"})
                store.commit_dir(tmp, t / "case")
                self.assertEqual(modes(t / "case"), {"a.npy": 0o666 & ~mask, "manifest.json": 0o666 & ~mask})
                self.assertEqual((t / "case").stat().st_mode & 0o777, 0o777 & ~mask)
                # A file a library wrote through mkstemp.
                fd, name = tempfile.mkstemp(dir=t / "case")
                os.close(fd)
                store.honour_umask(t / "case")
                self.assertEqual(Path(name).stat().st_mode & 0o777, 0o666 & ~mask)

    def test_regen_writes_model_safetensors_and_goldens_with_the_umask(self):
        repo = Repo()
        try:
            repo.spec("tiny", LLAMA + "gguf: [f32]\n")
            repo.case("x/a", "tiny")
            with umask(0o002):
                rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            got = {k: v for k, v in modes(repo.root / "goldens").items() if not k.startswith(store.LOCKS)}
            files = {k for k in got if (repo.root / "goldens" / k).is_file()}
            self.assertIn("models/tiny/model.safetensors", files)
            self.assertIn("models/tiny/model.f32.gguf", files)
            self.assertEqual({k: v for k, v in got.items() if v != (0o664 if k in files else 0o775)}, {}, "modes other than the umask's")
        finally:
            repo.close()


if __name__ == "__main__":
    unittest.main()
