"""Cases and model specs as the Python side reads them.

The Rust side (harness/src/case.rs) is the full validator; this module reads the same YAML,
checks what the reference run needs, and fails with `file: message` on anything else.

Functions taking `root` take a Project (project.py: the root and its cases and goldens
directories) or a root directory, read as `--root` reads it (its harness.toml, if any).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .project import Project, as_project

# Specs, expected findings, and cases that need no goldens (metamorphic properties).
RESERVED_DIRS = ("models", "engines", "expected", "metamorphic")

# Pickled checkpoint files, refused (loading a pickle can run code): the same list as the Rust
# side's `PICKLES` in api/src/model.rs (tools/tests/test_spec.py checks that they agree).
PICKLES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt")


class SpecError(Exception):
    """A problem in a case or model spec, with the file it is about and, given the key path `at`
    (`family`, `config.sliding_window`, `taps[2]`), the line and column of that value."""

    def __init__(self, file: Path | str, msg: str, at: str | None = None):
        where = locate(Path(file), at) if at else None
        super().__init__(f"{file}:{where}: {msg}" if where else f"{file}: {msg}")


def locate(file: Path, path: str) -> str | None:
    """`line:col` (1-based) of the value at `path` in a YAML file, or of its nearest ancestor."""
    try:
        node = yaml.compose(file.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    best = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if node is None:
            break
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            i = int(part[1:-1])
            node = node.value[i] if i < len(node.value) else None
        elif isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        else:
            node = None
        if node is not None:
            best = node
    if best is None:
        return None
    return f"{best.start_mark.line + 1}:{best.start_mark.column + 1}"


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# What goldens depend on (harness/src/digest.rs computes the same): a case's or model spec's keys
# that change the tensors tools/ write. Editing anything else (a description, `engines:`,
# tolerances, `shrink:`) leaves the goldens fresh.
CASE_KEYS = ("model", "inputs", "taps", "decode", "bisect", "compare_padding")
SPEC_KEYS = ("family", "source", "config", "dtype", "gguf")


def _canonical(v):
    """Floats as the hex of their IEEE-754 bits: Python and Rust print floats differently."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return "f:" + struct.pack(">d", v).hex()
    if isinstance(v, list):
        return [_canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in v.items()}
    return v


def golden_digest(doc: dict, keys: tuple[str, ...]) -> str:
    """sha256 of `keys` of a YAML document, canonicalized (taps by name: tolerances do not count;
    `source.fetch` is a command, not content)."""
    out = {}
    for k in keys:
        v = doc.get(k)
        if v is None:
            continue
        if k == "taps":
            v = [t.get("tap") if isinstance(t, dict) else t for t in v] if isinstance(v, list) else []
        elif k == "source" and isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if kk != "fetch"}
        out[k] = _canonical(v)
    text = json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ModelSpec:
    id: str
    file: Path
    family: str
    source: dict
    config: dict
    dtype: str
    # golden_digest of the file: what the goldens depend on.
    digest: str
    # `gguf: [f32, q8_0]`: also write the model as GGUF in these types (harness_goldens/gguf_export.py).
    gguf: list[str] = field(default_factory=list)

    @property
    def is_random(self) -> bool:
        return "random" in self.source

    def dir(self, root: Project | Path) -> Path:
        """Where the model's files are: goldens/models/<id>/ (random), the checkpoint (`path`,
        relative to the project root), or the snapshot in the local HF cache (`hf`)."""
        proj = as_project(root)
        if self.is_random:
            return proj.goldens / "models" / self.id
        if "hf" in self.source:
            return resolve_hf(self.source["hf"], self.source.get("revision"))[0]
        p = Path(self.source["path"])
        return p if p.is_absolute() else proj.root / p

    def revision(self) -> str | None:
        """`hf` sources: the commit hash the local cache resolves (recorded in the manifest)."""
        return resolve_hf(self.source["hf"], self.source.get("revision"))[1] if "hf" in self.source else None

    def absent(self, root: Project | Path) -> str | None:
        """Why a `path`/`hf` checkpoint is not on disk, with the command that provides it; None
        when it is there (random models are generated)."""
        if self.is_random:
            return None
        d = self.dir(root)
        if d.is_dir():
            return None
        fetch = self.source.get("fetch") or (f"huggingface-cli download {self.source['hf']}" if "hf" in self.source else "put the checkpoint there")
        return f"model `{self.id}` is absent ({d} does not exist); provide it with: {fetch}"


# Files of a checkpoint directory (`path`/`hf`), besides model.safetensors (`weights_sha256`),
# that a case's goldens depend on: the config (the forward; structure.json's `config_sha256`
# covers only structure.json), the tokenizer's files (text cases' tokenizer taps and inputs) and
# sentence-transformers' (sentence taps). Those present are recorded as `model.files_sha256`
# ({name: sha256}) in each case manifest; an edit, a removal or a new one makes the goldens
# stale. Plus every file of each module directory modules.json names (1_Pooling/config.json,
# a Dense layer's weights).
CHECKPOINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


def checkpoint_files(model_dir: Path) -> list[str]:
    """The files of CHECKPOINT_FILES in `model_dir`, and those of the module directories its
    modules.json names, as sorted relative POSIX paths."""
    out = {n for n in CHECKPOINT_FILES if (model_dir / n).is_file()}
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    for m in modules if isinstance(modules, list) else []:
        sub = m.get("path") if isinstance(m, dict) else None
        if not isinstance(sub, str) or not sub or sub.startswith("/") or ".." in Path(sub).parts:
            continue
        d = model_dir / sub
        if d.is_dir():
            out.update(p.relative_to(model_dir).as_posix() for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(out)


def files_sha256(spec: ModelSpec, model_dir: Path) -> dict[str, str]:
    """What a case manifest records as `model.files_sha256`: {name: sha256} of checkpoint_files
    for a checkpoint; nothing for a random model (its config.json is the spec's, covered by
    `spec_digest`, and its weights by `weights_sha256`)."""
    if spec.is_random:
        return {}
    return {n: sha256_file(model_dir / n) for n in checkpoint_files(model_dir)}


def gguf_files_sha256(spec: ModelSpec, model_dir: Path) -> dict[str, str]:
    """What a random model's provenance.json records as `files_sha256`: {name: sha256} of the
    GGUF files its spec's `gguf:` lists (those present); nothing without `gguf:`."""
    names = [f"model.{q}.gguf" for q in spec.gguf]
    return {n: sha256_file(model_dir / n) for n in sorted(names) if (model_dir / n).is_file()}


def hf_cache_dir() -> Path:
    """As huggingface_hub picks it (and harness/src/hub.rs): HF_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    env = lambda k: os.environ.get(k) or None  # noqa: E731
    if env("HF_HUB_CACHE"):
        return Path(env("HF_HUB_CACHE"))
    if env("HF_HOME"):
        return Path(env("HF_HOME")) / "hub"
    base = Path(env("XDG_CACHE_HOME")) if env("XDG_CACHE_HOME") else Path(env("HOME") or "~").expanduser() / ".cache"
    return base / "huggingface" / "hub"


def resolve_hf(repo: str, revision: str | None) -> tuple[Path, str | None]:
    """(snapshot dir, commit hash) of `repo` in the local cache; the dir does not exist (and the
    hash is None) when the cache lacks it."""
    d = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        h = rev
    else:
        try:
            h = (d / "refs" / rev).read_text().strip()
        except OSError:
            return d / "snapshots" / f"<no {rev}>", None
    snap = d / "snapshots" / h
    return snap, (h if snap.is_dir() else None)


@dataclass
class Case:
    id: str
    file: Path
    model: ModelSpec
    inputs: dict
    taps: list[str]
    # golden_digest of the file: what the goldens depend on.
    digest: str
    raw: dict = field(default_factory=dict)
    # `decode.tokens`: one row per batch row, fed one token per step after the prompt.
    decode: list[list[int]] | None = None
    # `bisect: true`: also write `depth.{k}.{tap}` goldens of the model truncated to k layers.
    bisect: bool = False
    # `inputs.text` (a string, strings, or [first, second] pairs) and `inputs.tokenizer`; the
    # model inputs are then filled in by tokenizing (hf.tokenize).
    text: str | list | None = None
    tokenizer: dict = field(default_factory=dict)
    # `reference: {engine: NAME}`: compared against that engine's outputs, so it has no goldens.
    reference_engine: str | None = None


def _load_yaml(file: Path) -> tuple[dict, bytes]:
    data = file.read_bytes()
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise SpecError(file, f"invalid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise SpecError(file, "expected a mapping at the top level")
    return doc, data


def load_model(root: Project | Path, model_id: str) -> ModelSpec:
    file = as_project(root).cases / "models" / f"{model_id}.yaml"
    if not file.exists():
        raise SpecError(file, f"no model spec `{model_id}`")
    doc, data = _load_yaml(file)
    source = doc.get("source")
    if not isinstance(source, dict) or not ({"random", "path", "hf"} & set(source)):
        raise SpecError(file, "`source` must be `random: {seed: N}`, `path: DIR` or `hf: org/name`")
    if "path" in source and not isinstance(source["path"], str):
        raise SpecError(file, "`source.path` must be a directory")
    if "hf" in source and not (isinstance(source["hf"], str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source["hf"])):
        raise SpecError(file, "`source.hf` must be a hub id `org/name`")
    return ModelSpec(
        id=model_id,
        file=file,
        family=doc.get("family", ""),
        source=source,
        config=dict(doc.get("config") or {}),
        dtype=doc.get("dtype", "float32"),
        digest=golden_digest(doc, SPEC_KEYS),
        gguf=list(doc.get("gguf") or []),
    )


def case_id(root: Project | Path, file: Path) -> str:
    """The case's id: its path under the cases directory, without the suffix (`llama/mha`)."""
    cases = as_project(root).cases
    try:
        rel = file.relative_to(cases)
    except ValueError:  # one of them reached through a symlink
        rel = file.resolve().relative_to(cases.resolve())
    return rel.with_suffix("").as_posix()


def discover(root: Project | Path) -> list[Path]:
    """Every case file under the cases directory (not its reserved directories), sorted."""
    base = as_project(root).cases
    out = []
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if rel.parts and rel.parts[0] in RESERVED_DIRS:
            continue
        if p.is_file() and p.suffix in (".yaml", ".yml"):
            out.append(p)
    return out


def _rows(file: Path, key: str, v) -> list[list[int]]:
    if not isinstance(v, list) or not v:
        raise SpecError(file, f"`inputs.{key}` must be a non-empty list")
    rows = v if isinstance(v[0], list) else [v]
    if len({len(r) for r in rows}) != 1:
        raise SpecError(file, f"ragged batch in `inputs.{key}`")
    return rows


def load_case(root: Project | Path, file: Path, models: dict[str, ModelSpec]) -> Case:
    root = as_project(root)
    doc, data = _load_yaml(file)
    mid = doc.get("model")
    if not isinstance(mid, str):
        raise SpecError(file, "`model` must name a model spec")
    if mid not in models:
        models[mid] = load_model(root, mid)
    inputs_doc = doc.get("inputs") or {}
    inputs = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in inputs_doc and inputs_doc[key] is not None:
            inputs[key] = _rows(file, key, inputs_doc[key])
    text = inputs_doc.get("text")
    if text is not None:
        if inputs:
            raise SpecError(file, "give either `inputs.text` or token ids, not both")
        if not isinstance(text, (str, list)) or not text:
            raise SpecError(file, "`inputs.text` must be a string, a list of strings, or a list of pairs")
    elif "input_ids" not in inputs:
        raise SpecError(file, "`inputs.input_ids` (or `inputs.text`) is required")
    tokenizer = inputs_doc.get("tokenizer") or {}
    unknown = set(tokenizer) - {"add_special_tokens", "padding", "truncation", "max_length"}
    if unknown:
        raise SpecError(file, f"unknown tokenizer options {sorted(unknown)}")
    taps = []
    for t in doc.get("taps") or []:
        taps.append(t["tap"] if isinstance(t, dict) else t)
    decode = None
    if doc.get("decode") is not None:
        d = doc["decode"]
        if not isinstance(d, dict) or "tokens" not in d:
            raise SpecError(file, "`decode` must be `{tokens: [[...]]}`")
        decode = _rows(file, "decode.tokens", d["tokens"])
        if "input_ids" not in inputs or len(decode) != len(inputs["input_ids"]):
            raise SpecError(file, "`decode.tokens` needs one row per row of input_ids")
    reference = doc.get("reference")
    reference_engine = reference.get("engine") if isinstance(reference, dict) else None
    return Case(
        id=case_id(root, file),
        file=file,
        model=models[mid],
        inputs=inputs,
        taps=taps,
        digest=golden_digest(doc, CASE_KEYS),
        raw=doc,
        decode=decode,
        text=text,
        tokenizer=dict(tokenizer),
        bisect=bool(doc.get("bisect", False)),
        reference_engine=reference_engine,
    )


def glob_to_regex(pattern: str) -> re.Pattern:
    """`*` matches one path segment (no dots), as in harness/src/case.rs."""
    parts = [re.escape(p).replace(r"\*", r"[^.]*") for p in pattern.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


def expand_taps(file: Path, patterns: list[str], available: list[str]) -> list[str]:
    """Taps selected by `patterns`, in the order of `available` (forward order)."""
    chosen = set()
    for p in patterns:
        rx = glob_to_regex(p)
        hits = [a for a in available if rx.match(a)]
        if not hits:
            raise SpecError(file, f"tap `{p}` matches no module of the model")
        chosen.update(hits)
    return [a for a in available if a in chosen]
