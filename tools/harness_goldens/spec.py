"""Cases and model specs as the Python side reads them.

The Rust side (harness/src/case.rs) is the full validator; this module reads the same YAML,
checks what the reference run needs, and fails with `file: message` on anything else.

Functions taking `root` take a Project (project.py: the root and its cases and goldens
directories) or a root directory, read as `--root` reads it (its harness.toml, if any).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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


def _with_npy_hashes(inputs: dict, base_dir: Path) -> dict:
    """`inputs` with every `{npy: PATH}` value replaced by `{npy: PATH, sha256: HEX}` (the file's
    bytes, resolved from `base_dir`; "missing" when it cannot be read): the goldens depend on the
    file's content, not its name."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, dict) and isinstance(v.get("npy"), str):
            try:
                h = sha256_file(Path(base_dir) / v["npy"])
            except OSError:
                h = "missing"
            v = {"npy": v["npy"], "sha256": h}
        out[k] = v
    return out


def golden_digest(doc: dict, keys: tuple[str, ...], base_dir: Path | str | None = None) -> str:
    """sha256 of `keys` of a YAML document, canonicalized (taps by name: tolerances do not count;
    `source.fetch` is a command, not content). With `base_dir` (the case file's directory), each
    `inputs.<name>: {npy: PATH}` counts as `{npy: PATH, sha256: <the file's sha256, or "missing">}`,
    so that new content in the file makes the goldens stale."""
    out = {}
    for k in keys:
        v = doc.get(k)
        if v is None:
            continue
        if k == "taps":
            v = [t.get("tap") if isinstance(t, dict) else t for t in v] if isinstance(v, list) else []
        elif k == "source" and isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if kk != "fetch"}
        elif k == "inputs" and isinstance(v, dict) and base_dir is not None:
            v = _with_npy_hashes(v, Path(base_dir))
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


# ---------------------------------------------------------------------------------------------
# Named inputs: `inputs.<name>` for any tensor a model's forward takes besides token rows
# (pixel_values, input_features, decoder_input_ids, ...). harness/src/named.rs reads the same.

# Keys of `inputs:` that are not named inputs.
ROW_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INPUT_OPTIONS = (*ROW_INPUTS, "text", "tokenizer")

# Tensor parameters of `model.forward` the harness may give, with their dtype and rank:
# structure.py records those of a model's forward in its structure.json (`inputs`).
KNOWN_INPUTS = {
    "input_ids": ("int64", 2),
    "attention_mask": ("int64", 2),
    "token_type_ids": ("int64", 2),
    "position_ids": ("int64", 2),
    "pixel_values": ("float32", 4),
    "input_features": ("float32", 3),
    "input_values": ("float32", 2),
    "decoder_input_ids": ("int64", 2),
    "decoder_attention_mask": ("int64", 2),
}

# The dtypes a named input can have, as numpy dtypes (little-endian, as .npy files store them).
NAMED_DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "bool": np.dtype("|b1")}
# More elements than this in one named input are refused: a case is a small reproduction, not a
# dataset (the same limit as harness/src/named.rs).
MAX_NAMED_ELEMENTS = 1 << 24

_GAMMA = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1
_I64 = (-(1 << 63), (1 << 63) - 1)


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first `n` outputs of splitmix64 seeded with `seed` (uint64): the state advances by
    0x9E3779B97F4A7C15 before each output, which is the state mixed by
    z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31,
    all mod 2^64 (harness-api's SplitMix64, api/src/inputs.rs, computes the same)."""
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GAMMA) + np.uint64(seed & _U64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def random_tensor(shape: list[int], dtype: str, seed: int, low=None, high=None) -> np.ndarray:
    """`{random: {shape, dtype, seed, low, high}}`: one splitmix64 output per element, in C order.
    float32: low + (high - low) * u in float64, u = (next >> 40) / 2^24, rounded to float32
    (low, high default 0.0, 1.0); int64: low + next % (high - low) (high exclusive, u64 modulo);
    bool: the top bit of next."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    z = splitmix64(seed, n)
    if dtype == "float32":
        lo = 0.0 if low is None else float(low)
        hi = 1.0 if high is None else float(high)
        u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
        with np.errstate(over="ignore"):
            v = (lo + (hi - lo) * u).astype(np.float32)
    elif dtype == "int64":
        r = z % np.uint64(int(high) - int(low))
        with np.errstate(over="ignore"):
            # low + r, wrapping in u64: it is in [low, high), so it fits an int64.
            v = (r + np.uint64(int(low) & _U64)).view(np.int64)
    elif dtype == "bool":
        v = (z >> np.uint64(63)) == np.uint64(1)
    else:
        raise ValueError(f"no random {dtype}")
    return np.ascontiguousarray(v.reshape(shape))


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FORMS = "`{random: {shape: [..], dtype: float32|int64|bool, seed: N, low: X, high: Y}}`, `{npy: FILE}` or a nested list"


def _random_input(file: Path, at: str, r) -> np.ndarray:
    if not isinstance(r, dict):
        raise SpecError(file, f"`{at}.random` must be a mapping {{shape, dtype, seed, low, high}}", at=f"{at}.random")
    unknown = sorted(set(map(str, r)) - {"shape", "dtype", "seed", "low", "high"})
    if unknown:
        raise SpecError(file, f"unknown key `{unknown[0]}` in `{at}.random` (hint: it takes shape, dtype, seed, low, high)", at=f"{at}.random.{unknown[0]}")
    for k in ("shape", "dtype", "seed"):
        if k not in r:
            raise SpecError(file, f"`{at}.random` needs `{k}`", at=f"{at}.random")
    shape = r["shape"]
    if not isinstance(shape, list) or not shape or not all(_int(d) and d >= 1 for d in shape):
        raise SpecError(file, f"`{at}.random.shape` must be a non-empty list of positive sizes, not {shape!r}", at=f"{at}.random.shape")
    if int(np.prod([float(d) for d in shape])) > MAX_NAMED_ELEMENTS:
        raise SpecError(file, f"`{at}.random.shape` {shape} has more than {MAX_NAMED_ELEMENTS:,} elements", at=f"{at}.random.shape")
    dtype = r["dtype"]
    if dtype not in NAMED_DTYPES:
        raise SpecError(file, f"`{at}.random.dtype` must be float32, int64 or bool, not {dtype!r}", at=f"{at}.random.dtype")
    seed = r["seed"]
    if not _int(seed) or not 0 <= seed <= _U64:
        raise SpecError(file, f"`{at}.random.seed` must be an integer in [0, 2^64), not {seed!r}", at=f"{at}.random.seed")
    low, high = r.get("low"), r.get("high")
    if dtype == "float32":
        for k, v in (("low", low), ("high", high)):
            if v is not None and not (_number(v) and np.isfinite(float(v))):
                raise SpecError(file, f"`{at}.random.{k}` must be a finite number, not {v!r}", at=f"{at}.random.{k}")
        lo, hi = 0.0 if low is None else float(low), 1.0 if high is None else float(high)
        if not lo < hi:
            raise SpecError(file, f"`{at}.random` needs low < high, has {lo} and {hi}", at=f"{at}.random")
    elif dtype == "int64":
        for k, v in (("low", low), ("high", high)):
            if v is None:
                raise SpecError(file, f"`{at}.random` of int64 needs `{k}` (hint: values in [low, high), high exclusive)", at=f"{at}.random")
            # An integral float (3.0) is the integer, as the Rust side reads it.
            if not (_int(v) or (isinstance(v, float) and v.is_integer())) or not _I64[0] <= v <= _I64[1]:
                raise SpecError(file, f"`{at}.random.{k}` must be an int64, not {v!r}", at=f"{at}.random.{k}")
        low, high = int(low), int(high)
        if high <= low:
            raise SpecError(file, f"`{at}.random` needs integers low < high (high is exclusive), has {low} and {high}", at=f"{at}.random.high")
    return random_tensor(shape, dtype, seed, low, high)


def _npy_input(file: Path, at: str, path, base_dir: Path) -> np.ndarray:
    if not isinstance(path, str) or not path:
        raise SpecError(file, f"`{at}.npy` must be a path (relative to the case file's directory)", at=f"{at}.npy")
    p = base_dir / path
    if not p.is_file():
        raise SpecError(file, f"`{at}.npy`: the file {path} does not exist ({p}) (hint: the path is relative to the case file's directory)", at=f"{at}.npy")
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise SpecError(file, f"`{at}.npy`: {path} is not a readable .npy file: {e}", at=f"{at}.npy") from None
    if not isinstance(a, np.ndarray):
        raise SpecError(file, f"`{at}.npy`: {path} is not a .npy array (an .npz archive?)", at=f"{at}.npy")
    if a.dtype not in NAMED_DTYPES.values():
        raise SpecError(file, f"`{at}.npy`: {path} holds {a.dtype.str} ({a.dtype}); a named input is float32, int64 or bool, little-endian", at=f"{at}.npy")
    return np.ascontiguousarray(a)


def _nested_shape(file: Path, at: str, v) -> list[int]:
    if not isinstance(v, list):
        return []
    if not v:
        raise SpecError(file, f"`{at}` is an empty list", at=at)
    shapes = [_nested_shape(file, f"{at}[{i}]", x) for i, x in enumerate(v)]
    for i, s in enumerate(shapes):
        if s != shapes[0]:
            raise SpecError(file, f"ragged `{at}`: element {i} has shape {s}, element 0 has {shapes[0]} (hint: every row of a nested list has the same length)", at=f"{at}[{i}]")
    return [len(v), *shapes[0]]


def _leaves(v):
    if isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def _inline_input(file: Path, at: str, v: list, dtype: str) -> np.ndarray:
    shape = _nested_shape(file, at, v)
    flat = list(_leaves(v))
    ok = {"float32": _number, "int64": lambda x: _int(x) and _I64[0] <= x <= _I64[1], "bool": lambda x: isinstance(x, bool)}[dtype]
    for i, x in enumerate(flat):
        if not ok(x):
            where = at + "".join(f"[{j}]" for j in np.unravel_index(i, shape))
            raise SpecError(file, f"`{where}` is {x!r}, but this input is {dtype} (hint: {'numbers' if dtype == 'float32' else 'integers' if dtype == 'int64' else 'true/false'})", at=where)
    if dtype == "float32":
        with np.errstate(over="ignore"):
            a = np.array(flat, dtype=np.float64).astype(np.float32)
    else:
        a = np.array(flat, dtype=NAMED_DTYPES[dtype])
    return a.reshape(shape)


def _dtype_name(a: np.ndarray) -> str:
    return next(k for k, d in NAMED_DTYPES.items() if a.dtype == d)


def named_input(file: Path, name: str, v, dtype: str, base_dir: Path) -> np.ndarray:
    """The tensor of `inputs.<name>` (`dtype`: the forward's dtype for it, which an inline list
    takes), non-finite floats refused."""
    at = f"inputs.{name}"
    if isinstance(v, dict) and set(v) == {"random"}:
        a = _random_input(file, at, v["random"])
    elif isinstance(v, dict) and set(v) == {"npy"}:
        a = _npy_input(file, at, v["npy"], base_dir)
    elif isinstance(v, list):
        a = _inline_input(file, at, v, dtype)
    else:
        raise SpecError(file, f"`{at}` must be {_FORMS}", at=at)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        i = np.unravel_index(int(np.argmin(np.isfinite(a).reshape(-1))), a.shape)
        raise SpecError(file, f"`{at}` has a non-finite value {a[i]} at {list(map(int, i))} (hint: inputs must be finite)", at=at)
    return a


def recorded_inputs(root: Project | Path, spec: ModelSpec) -> list[dict] | None:
    """`inputs` of the model's structure.json, when one recorded from this spec is there."""
    f = as_project(root).goldens / "models" / spec.id / "structure.json"
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("spec_digest") != spec.digest or not isinstance(d.get("inputs"), list):
        return None
    return [i for i in d["inputs"] if isinstance(i, dict) and isinstance(i.get("name"), str)]


def _known_inputs() -> list[dict]:
    return [{"name": n, "dtype": d, "rank": r, "required": False} for n, (d, r) in KNOWN_INPUTS.items()]


def named_inputs(file: Path, family: str, inputs_doc: dict, forward_inputs: list[dict] | None, base_dir: Path) -> dict[str, np.ndarray]:
    """Every key of `inputs:` besides INPUT_OPTIONS, as a tensor checked against the forward's
    inputs (structure.json's `inputs`; without one, KNOWN_INPUTS): its name, dtype and rank."""
    meta = {i["name"]: i for i in (forward_inputs if forward_inputs is not None else _known_inputs())}
    out = {}
    for key, v in inputs_doc.items():
        key = str(key)
        if key in INPUT_OPTIONS:
            continue
        at = f"inputs.{key}"
        if key not in meta:
            accepted = [n for n in meta if n not in ROW_INPUTS]
            whose = f"`{family}`'s forward" if forward_inputs is not None else "the harness"
            raise SpecError(
                file,
                f"unknown input `{key}`: {whose} takes {', '.join(f'`{n}`' for n in accepted) or 'no other input'} "
                f"besides {', '.join(f'`{n}`' for n in INPUT_OPTIONS)} (hint: name one of those)",
                at=at,
            )
        want, rank = meta[key].get("dtype"), meta[key].get("rank")
        a = named_input(file, key, v, want, base_dir)
        got = _dtype_name(a)
        if got != want:
            raise SpecError(file, f"`{at}` is {got}, but `{family}`'s forward takes `{key}` as {want} (hint: give it as {want})", at=at)
        if a.ndim != rank:
            raise SpecError(file, f"`{at}` has rank {a.ndim} (shape {list(a.shape)}), but `{key}` has rank {rank} in `{family}`'s forward", at=at)
        out[key] = a
    return out


def check_batch(file: Path, inputs: dict, text) -> None:
    """Every input's batch (its first axis; rows of `text`) is the same."""
    batches = []
    if text is not None:
        batches.append(("text", 1 if isinstance(text, str) else len(text)))
    for k, v in inputs.items():
        batches.append((k, int(v.shape[0]) if isinstance(v, np.ndarray) else len(v)))
    for k, b in batches[1:]:
        if b != batches[0][1]:
            raise SpecError(file, f"`inputs.{k}` has batch {b} (its first axis), but `inputs.{batches[0][0]}` has {batches[0][1]} (hint: every input has the same batch)", at=f"inputs.{k}")


def check_required(file: Path, family: str, inputs: dict, text, forward_inputs: list[dict]) -> None:
    """Every input the forward requires (structure.json's `required`) is given; `text` gives the
    tokenizer's outputs. Named inputs must be the forward's."""
    given = set(inputs) | (set(ROW_INPUTS) if text is not None else set())
    names = [i["name"] for i in forward_inputs]
    for k in inputs:
        if k not in ROW_INPUTS and k not in names:
            accepted = [n for n in names if n not in ROW_INPUTS]
            raise SpecError(
                file,
                f"unknown input `{k}`: `{family}`'s forward takes {', '.join(f'`{n}`' for n in accepted) or 'no other input'} "
                f"besides {', '.join(f'`{n}`' for n in INPUT_OPTIONS)} (hint: name one of those)",
                at=f"inputs.{k}",
            )
    for i in forward_inputs:
        if i.get("required") and i["name"] not in given:
            what = "(or `inputs.text`)" if i["name"] == "input_ids" else f"({i['dtype']}, rank {i['rank']}: {_FORMS})"
            raise SpecError(file, f"`{family}`'s forward needs `inputs.{i['name']}` {what}, which the case does not give", at="inputs")


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
    # The named inputs (`inputs.<name>` besides the token rows), also in `inputs`.
    named: dict = field(default_factory=dict)


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
    if not isinstance(inputs_doc, dict):
        raise SpecError(file, "`inputs` must be a mapping", at="inputs")
    inputs = {}
    for key in ROW_INPUTS:
        if key in inputs_doc and inputs_doc[key] is not None:
            inputs[key] = _rows(file, key, inputs_doc[key])
    spec = models[mid]
    # Named inputs are checked against the model's structure.json when one recorded from this
    # spec is there (else against KNOWN_INPUTS; regen checks them again on the fresh structure).
    forward_inputs = recorded_inputs(root, spec)
    named = named_inputs(file, spec.family, inputs_doc, forward_inputs, file.parent)
    text = inputs_doc.get("text")
    if text is not None:
        if inputs:
            raise SpecError(file, "give either `inputs.text` or token ids, not both")
        if not isinstance(text, (str, list)) or not text:
            raise SpecError(file, "`inputs.text` must be a string, a list of strings, or a list of pairs")
    elif "input_ids" not in inputs and not named:
        raise SpecError(file, "`inputs.input_ids` (or `inputs.text`, or a named input such as `pixel_values`) is required")
    inputs.update(named)
    check_batch(file, inputs, text)
    if forward_inputs is not None:
        check_required(file, spec.family, inputs, text, forward_inputs)
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
        digest=golden_digest(doc, CASE_KEYS, file.parent),
        raw=doc,
        decode=decode,
        text=text,
        tokenizer=dict(tokenizer),
        bisect=bool(doc.get("bisect", False)),
        reference_engine=reference_engine,
        named=named,
    )


def glob_to_regex(pattern: str) -> re.Pattern:
    """`*` matches one path segment (no dots), as in harness/src/case.rs."""
    parts = [re.escape(p).replace(r"\*", r"[^.]*") for p in pattern.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


def _tap_hint(pattern: str, available: list[str]) -> str:
    """A tap name this model has for a pattern it has not: the pattern without leading segments
    (`vision_model.embeddings` for a model whose paths start at `embeddings`), a close name, or
    the model's top-level modules."""
    segs = pattern.split(".")
    for k in range(1, len(segs)):
        sub = ".".join(segs[k:])
        if any(glob_to_regex(sub).match(a) for a in available):
            return f"did you mean `{sub}`?"
    close = difflib.get_close_matches(pattern, available, n=1)
    if close:
        return f"did you mean `{close[0]}`?"
    top = sorted({a.split(".")[0] for a in available})
    return f"this model's taps start with: {', '.join(top)}"


def expand_taps(file: Path, patterns: list[str], available: list[str]) -> list[str]:
    """Taps selected by `patterns`, in the order of `available` (forward order)."""
    chosen = set()
    for i, p in enumerate(patterns):
        rx = glob_to_regex(p)
        hits = [a for a in available if rx.match(a)]
        if not hits:
            raise SpecError(file, f"tap `{p}` matches no module of the model (hint: {_tap_hint(p, available)})", at=f"taps[{i}]")
        chosen.update(hits)
    return [a for a in available if a in chosen]
