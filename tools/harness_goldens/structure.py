"""What the harness needs to know about an HF architecture, recorded from HF itself.

`record(spec, model_dir)` loads the model and runs its forward with hooks on probe inputs
(seeded random token ids; images, audio features and decoder ids for models that take them, see
MAKERS): two runs of different (batch, seq) to find each module's batch and sequence axes, and,
for a model whose main input is token ids, a third with the last token of every row changed to
measure whether the model is causal. The result is written as goldens/models/<id>/structure.json
(format below, see docs/families.md, "What is recorded: `structure.json`"); the Rust side reads
it instead of knowing module lists by hand.

`check_class(spec, model_dir)` checks that the declared class fits the config before anything is
built or written: the class exists, its config class accepts the config, `model_type` /
`architectures` name this class, and every `config:` key is one the class's config reads.

Everything here is deterministic: `structure_bytes` reproduces bit for bit (no timestamps).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
from pathlib import Path

import numpy as np

from . import hf, store
from .spec import KNOWN_INPUTS, ModelSpec, SpecError, sha256_bytes

FORMAT = 1
FILE = "structure.json"

# Two probe runs of different (batch, seq): an axis whose size is the batch in both runs is the
# batch axis, one that is the sequence length in both the sequence axis. Sizes differ between
# runs, so no fixed dimension of a config can equal them in both. Inputs of a fixed length
# (images, audio features) keep it in both runs: their per-patch outputs [batch, patches, ...]
# have no sequence axis and come out as kind `rows`.
PROBES = ((2, 5), (3, 7))
PROBE_SEED = 0

# KNOWN_INPUTS (spec.py): the tensor parameters of `model.forward` the harness may give, with
# their dtype and rank, recorded as `inputs`. A probe can make only those in MAKERS; a class whose
# forward requires another raises a SpecError naming it.


@dataclasses.dataclass
class Probe:
    """What the makers read: the model's config, and the vocabulary of its (text) input ids."""

    config: object
    vocab: int | None


def _make_ids(rng: np.random.Generator, probe: Probe, batch: int, seq: int) -> list[list[int]]:
    return rng.integers(0, probe.vocab, size=(batch, seq)).tolist()


def _uniform(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """float32 uniform in [-1, 1)."""
    return rng.random(shape, dtype=np.float32) * np.float32(2) - np.float32(1)


def _vision_config(config):
    return getattr(config, "vision_config", None) or config


def _make_pixels(rng: np.random.Generator, probe: Probe, batch: int, seq: int) -> np.ndarray:
    """[batch, num_channels, image_size, image_size] (image_size an int or a pair)."""
    v = _vision_config(probe.config)
    size = getattr(v, "image_size", None)
    h, w = (size, size) if isinstance(size, int) else tuple(size or (None, None))
    channels = getattr(v, "num_channels", 3)
    if not all(isinstance(x, int) and x > 0 for x in (h, w, channels)):
        raise ValueError(f"no image size in the config (image_size {size!r}, num_channels {channels!r})")
    return _uniform(rng, (batch, channels, h, w))


def _make_features(rng: np.random.Generator, probe: Probe, batch: int, seq: int) -> np.ndarray:
    """[batch, num_mel_bins, 2 * max_source_positions] (Whisper-like: the encoder's convolutions
    halve the frames to its positions)."""
    c = probe.config
    bins, positions = getattr(c, "num_mel_bins", None), getattr(c, "max_source_positions", None)
    if not (isinstance(bins, int) and isinstance(positions, int)):
        raise ValueError(f"no num_mel_bins / max_source_positions in the config ({bins!r}, {positions!r})")
    return _uniform(rng, (batch, bins, 2 * positions))


def _decoder_vocab(probe: Probe) -> int | None:
    c = probe.config
    v = getattr(c, "decoder_vocab_size", None)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    get = getattr(c, "get_text_config", None)
    if callable(get):
        try:
            v = getattr(get(decoder=True), "vocab_size", None)
        except TypeError:
            v = None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return probe.vocab


# The decoder's probe ids are this much longer than the encoder's, so that each output's
# sequence axis tells which of the two sequences it follows (`follows`).
DECODER_EXTRA = 1


def _make_decoder_ids(rng: np.random.Generator, probe: Probe, batch: int, seq: int) -> list[list[int]]:
    vocab = _decoder_vocab(probe)
    if vocab is None:
        raise ValueError("no vocab_size for the decoder in the config")
    return rng.integers(0, vocab, size=(batch, seq + DECODER_EXTRA)).tolist()


# The inputs whose second axis is a token sequence an output can follow.
SEQUENCES = ("input_ids", "decoder_input_ids")


MAKERS = {
    "input_ids": _make_ids,
    "pixel_values": _make_pixels,
    "input_features": _make_features,
    "decoder_input_ids": _make_decoder_ids,
}


# ---------------------------------------------------------------------------------------------
# Does the class fit the config?


def _auto_mappings() -> dict[str, dict]:
    """transformers' auto mappings {NAME: {model_type: class name(s)}}, model classes only."""
    from transformers.models.auto import modeling_auto

    return {
        n: getattr(modeling_auto, n)
        for n in sorted(dir(modeling_auto))
        if n.endswith("_MAPPING_NAMES") and n != "CONFIG_MAPPING_NAMES" and isinstance(getattr(modeling_auto, n), dict)
    }


def _names(v) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def model_class_names() -> list[str]:
    """Every model class name in transformers' auto mappings, sorted."""
    out = set()
    for m in _auto_mappings().values():
        for v in m.values():
            out.update(_names(v))
    return sorted(out)


def did_you_mean(name: str) -> str | None:
    close = difflib.get_close_matches(name, model_class_names(), n=1, cutoff=0.6)
    if not close:
        low = {n.lower(): n for n in model_class_names()}
        close = [low[name.lower()]] if name.lower() in low else []
    return close[0] if close else None


def model_class(spec: ModelSpec):
    """The spec's `family` as a transformers model class (check (a))."""
    import transformers

    name = spec.family
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if cls is None or not inspect.isclass(cls) or not hasattr(cls, "config_class") or not hasattr(cls, "forward"):
        guess = did_you_mean(str(name)) if name else None
        hint = f"did you mean `{guess}`?" if guess else "`family:` must name a model class of transformers, e.g. LlamaForCausalLM"
        raise SpecError(spec.file, f"`family: {name}` is not a model class of transformers {transformers.__version__} (hint: {hint})", at="family")
    return cls


def _tasks_of(class_name: str) -> list[str]:
    """The auto mappings that list `class_name` (its tasks), most specific first."""
    found = [n for n, m in _auto_mappings().items() if any(class_name in _names(v) for v in m.values())]
    return sorted(found, key=lambda n: (n in ("MODEL_MAPPING_NAMES", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"), n))


def class_for_model_type(class_name: str, model_type: str) -> str | None:
    """The class doing the same task as `class_name` for `model_type` (e.g. LlamaForCausalLM and
    `mistral` -> MistralForCausalLM), else the base model class of that type."""
    maps = _auto_mappings()
    for task in _tasks_of(class_name) + ["MODEL_MAPPING_NAMES"]:
        v = maps[task].get(model_type)
        if v:
            return _names(v)[0]
    return None


# Keys PreTrainedConfig.__post_init__ itself reads, whatever the class.
_BASE_KEYS = {"model_type", "num_labels", "torch_dtype"}
# transformers-4 spellings that transformers 5 folds into `rope_parameters`.
_ROPE_ALIASES = {"rope_scaling", "rope_theta"}


# In a config module: `kwargs.get("key")` / `kwargs.pop("key")` (transformers-4 keys a config
# converts, e.g. ModernBERT's global_attn_every_n_layers) and `getattr(self, "key", ...)`; in a
# modeling module: `getattr(config, "key", ...)` (e.g. Phi3's head_dim, not a Phi3Config field).
_CONFIG_READS = re.compile(r"""kwargs\.(?:get|pop)\(\s*["'](\w+)["']|getattr\(\s*self\s*,\s*["'](\w+)["']""")
_MODEL_READS = re.compile(r"""getattr\(\s*[\w.]*config\s*,\s*["'](\w+)["']""")


def _own_modules(cls) -> list:
    """The transformers.models.* modules defining `cls` and its bases."""
    out = []
    for c in cls.__mro__:
        m = inspect.getmodule(c)
        if m is not None and m.__name__.startswith("transformers.models.") and m not in out:
            out.append(m)
    return out


def _source_reads(cls, pattern: re.Pattern) -> set[str]:
    keys = set()
    for m in _own_modules(cls):
        try:
            src = inspect.getsource(m)
        except (OSError, TypeError):
            continue
        for groups in pattern.findall(src):
            keys.update(g for g in (groups if isinstance(groups, tuple) else (groups,)) if g)
    return keys


def config_keys(config_class, model_cls=None) -> set[str]:
    """Config keys `config_class` (and `model_cls`'s modeling code) read: its default config's
    to_dict(), its fields and __init__ parameters, its attribute_map aliases, the keys its
    __post_init__ takes from kwargs, those the modeling code reads with getattr(config, ...),
    and the RoPE aliases when it has rope_parameters (`partial_rotary_factor` only when its
    default rope_parameters carry one: Llama's RoPE ignores it). Any other key is stored as an
    attribute that no code reads."""
    keys = set(_BASE_KEYS) | set(getattr(config_class, "attribute_map", {}) or {})
    keys |= _source_reads(config_class, _CONFIG_READS)
    if model_cls is not None:
        keys |= _source_reads(model_cls, _MODEL_READS)
    default = {}
    try:
        default = config_class().to_dict()
    except Exception:  # noqa: BLE001 - composite configs may need arguments; fields still tell
        pass
    keys |= set(default)
    if dataclasses.is_dataclass(config_class):
        keys |= {f.name for f in dataclasses.fields(config_class)}
    for p in inspect.signature(config_class.__init__).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            keys.add(p.name)
    if "rope_parameters" in keys:
        keys |= _ROPE_ALIASES
        rp = default.get("rope_parameters")
        if isinstance(rp, dict) and any(k == "partial_rotary_factor" or (isinstance(v, dict) and "partial_rotary_factor" in v) for k, v in rp.items()):
            keys.add("partial_rotary_factor")
    return keys


# Classes a hint names first when several fit (the families this harness has cases for), so that
# `sliding_window` on Llama suggests Mistral rather than a rarer Llama derivative.
WELL_KNOWN = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "GPT2LMHeadModel",
    "BertModel",
    "ModernBertModel",
    "DistilBertForSequenceClassification",
)


def class_reading(class_name: str, wanted: set[str], spec_keys: set[str]) -> str | None:
    """A class doing the same task as `class_name` whose config reads every key of `wanted`:
    a WELL_KNOWN one first, then the one reading most of `spec_keys`, then the one whose config
    keys are most like `class_name`'s (Jaccard); None when no class reads them. Imports every
    candidate's config class: only called on the error path."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    maps = _auto_mappings()
    tasks = _tasks_of(class_name)
    if not tasks:
        return None
    declared = getattr(transformers, class_name)
    own = config_keys(declared.config_class, declared)
    best = None
    for model_type, v in sorted(maps[tasks[0]].items()):
        cand = _names(v)[0]
        if cand == class_name:
            continue
        try:
            keys = config_keys(CONFIG_MAPPING[model_type], getattr(transformers, cand))
        except Exception:  # noqa: BLE001 - a config that cannot be imported here is no candidate
            continue
        if not wanted <= keys:
            continue
        score = (cand in WELL_KNOWN, len(spec_keys & keys), len(own & keys) / len(own | keys))
        if best is None or score > best[0]:
            best = (score, cand)
    return best[1] if best else None


def check_class(spec: ModelSpec, model_dir: Path | None = None):
    """Check that the spec's class fits its config, before anything is written; returns the
    class. Random models: the spec's `config:`; checkpoints: the directory's config.json (when
    present). Each failure is a SpecError on the spec file with a hint."""
    cls = model_class(spec)
    cc = cls.config_class
    expected = cc.model_type
    if spec.is_random:
        config, where = dict(spec.config), "config has"
    else:
        f = (model_dir / "config.json") if model_dir is not None else None
        if f is None or not f.exists():
            return cls
        try:
            config, where = json.loads(f.read_text()), f"{f} has"
        except ValueError as e:
            raise SpecError(f, f"invalid JSON: {e}") from None
    # (c) model_type / architectures must name this class.
    given = config.get("model_type")
    if given is not None and given != expected:
        right = class_for_model_type(spec.family, given) if isinstance(given, str) else None
        hint = (
            f"a `model_type: {given}` model is `family: {right}`; or drop `model_type:`, tools/ write it from the class"
            if right
            else f"transformers knows no model for `model_type: {given}`; {spec.family}'s is `{expected}`"
        )
        raise SpecError(spec.file, f"{where} `model_type: {given}`, which does not fit `family: {spec.family}`, whose config is {cc.__name__} (`model_type: {expected}`) (hint: {hint})", at="config.model_type" if spec.is_random else "family")
    archs = config.get("architectures") if spec.is_random else None
    if archs is not None:
        names = archs if isinstance(archs, list) else [archs]
        if spec.family not in names:
            raise SpecError(
                spec.file,
                f"config `architectures: {names}` does not name `family: {spec.family}` (hint: declare `family: {names[0]}`, or drop `architectures:`)",
                at="config.architectures",
            )
    if not spec.is_random:
        try:
            cc.from_pretrained(str(model_dir))
        except Exception as e:  # noqa: BLE001 - any rejection is reported with its reason
            raise SpecError(model_dir / "config.json", f"{cc.__name__} rejects this config: {_one_line(e)} (hint: is `family: {spec.family}` the checkpoint's class?)") from None
        return cls
    # (d) every key must be read by the class's config: others are stored and silently ignored.
    readable = config_keys(cc, cls)
    unread = sorted(k for k in config if k not in readable)
    if unread:
        other = class_reading(spec.family, set(unread), set(config))
        keys = ", ".join(f"`{k}`" for k in unread)
        one = len(unread) == 1
        them = "it" if one else "them"
        hint = (
            f"`family: {other}` reads {them}; or remove {them}"
            if other
            else f"remove {them}: no class of this task in transformers reads {them}" + ("" if one else " all")
        )
        what = f"config key {keys} is" if one else f"config keys {keys} are"
        raise SpecError(spec.file, f"{what} not read by {cc.__name__} (`family: {spec.family}`): HF would store and ignore {them} (hint: {hint})", at=f"config.{unread[0]}")
    # (b) the config class must accept the config.
    try:
        cc(**config)
    except Exception as e:  # noqa: BLE001 - strict dataclass validation raises its own types
        raise SpecError(spec.file, f"config rejected by {cc.__name__}: {_one_line(e)} (hint: fix the value; see transformers' {cc.__name__})", at="config") from None
    return cls


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# ---------------------------------------------------------------------------------------------
# Recording the structure


def forward_inputs(cls, config) -> list[dict]:
    """The KNOWN_INPUTS among `cls.forward`'s parameters, in signature order. Required: the main
    input, the decoder's ids of an encoder-decoder, and parameters without a default."""
    main = cls.main_input_name
    out = []
    for name, p in inspect.signature(cls.forward).parameters.items():
        if name not in KNOWN_INPUTS:
            continue
        dtype, rank = KNOWN_INPUTS[name]
        required = name == main or p.default is inspect.Parameter.empty
        if name == "decoder_input_ids" and getattr(config, "is_encoder_decoder", False):
            required = True
        out.append({"name": name, "dtype": dtype, "rank": rank, "required": required})
    return out


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _first_attr(cfg, names):
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _axes(shape_a: tuple, shape_b: tuple, probes, sequences: dict | None = None) -> dict:
    """Batch and sequence axes of one output from its shapes in the two probe runs (the first axis
    of each), its kind, and its first-run shape with every axis that varies set to null.
    `sequences` ({input name: (length in run 1, in run 2)}, default the probes' ids) are the token
    sequences a sequence axis can follow; with `follows` set (an encoder-decoder), the entry
    records which one it follows."""
    (b1, s1), (b2, s2) = probes
    seqs = sequences if sequences is not None else {"input_ids": (s1, s2)}
    batch_axis = seq_axis = follows = None
    if len(shape_a) == len(shape_b):
        for i, (x, y) in enumerate(zip(shape_a, shape_b)):
            if batch_axis is None and x == b1 and y == b2:
                batch_axis = i
            elif seq_axis is None and (x, y) in seqs.values():
                seq_axis = i
                follows = next(n for n, lengths in seqs.items() if lengths == (x, y))
    if batch_axis == 0 and seq_axis == 1:
        kind = "tokens"
    elif seq_axis == 1 and shape_a[0] == 1 and shape_b[0] == 1:
        kind = "positions"
    elif batch_axis == 0 and seq_axis is None:
        kind = "rows"
    else:
        kind = "whole"
    # Null every axis that depends on the input's size: batch and seq, and any other whose size
    # differs between the runs (similarity's second axis is the batch again).
    shape = [None if i in (batch_axis, seq_axis) or i >= len(shape_b) or n != shape_b[i] else int(n) for i, n in enumerate(shape_a)]
    out = {"kind": kind, "batch_axis": batch_axis, "seq_axis": seq_axis, "shape": shape}
    if sequences is not None:
        out["follows"] = follows
    return out


def _layers(model, config) -> dict:
    """The numbered layer list: the first ModuleList with num_hidden_layers entries."""
    import torch

    count = _first_attr(_text_config(config), ["num_hidden_layers"])
    prefix = None
    for name, mod in model.named_modules():
        if name and isinstance(mod, torch.nn.ModuleList) and count is not None and len(mod) == count:
            prefix = name
            break
    types = getattr(_text_config(config), "layer_types", None)
    return {"prefix": prefix, "count": count, "types": list(types) if isinstance(types, (list, tuple)) else None}


def _position_offset(model) -> int:
    """Positions used before token 0: RoBERTa-likes index learned positions from padding_idx + 1
    (their position embedding has a padding_idx); OPT-likes carry an `offset`."""
    import torch

    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("position_embeddings", "embed_positions", "wpe"):
            continue
        off = getattr(mod, "offset", None)
        if isinstance(off, int) and not isinstance(off, bool):
            return off
        if isinstance(mod, torch.nn.Embedding) and mod.padding_idx is not None:
            return int(mod.padding_idx) + 1
    return 0


def _probe(spec: ModelSpec, inputs_meta: list[dict], probe: Probe):
    """The probe inputs of each run: {name: rows or array} for every input the forward requires."""
    rng = np.random.default_rng(PROBE_SEED)
    missing = [i["name"] for i in inputs_meta if i["required"] and i["name"] not in MAKERS]
    if missing:
        raise SpecError(
            spec.file,
            f"`{spec.family}`'s forward needs {', '.join(f'`{m}`' for m in missing)}, which the harness cannot give yet "
            f"(hint: the structure probe makes {', '.join(MAKERS)} so far; {missing[0]} needs a maker in harness_goldens/structure.py)",
            at="family",
        )
    runs = []
    for batch, seq in PROBES:
        run = {}
        for i in inputs_meta:
            if not i["required"]:
                continue
            try:
                run[i["name"]] = MAKERS[i["name"]](rng, probe, batch, seq)
            except ValueError as e:
                raise SpecError(spec.file, f"cannot make a probe `{i['name']}` for `{spec.family}`: {e} (hint: check the config)", at="config") from None
        runs.append(run)
    return runs


def _run(model, spec: ModelSpec, inputs: dict):
    try:
        return hf.run(model, inputs, None)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001 - report what HF refused, with the class
        raise SpecError(
            spec.file,
            f"HF's own forward of `{spec.family}` fails with this config: {type(e).__name__}: {_one_line(e)} "
            "(hint: check the config's sizes against each other, e.g. attention heads and key/value heads; "
            "or the class needs inputs the harness cannot give yet)",
            at="config",
        ) from None


def record(spec: ModelSpec, model_dir: Path) -> dict:
    """The structure of the model in `model_dir` (format 1), measured on probe inputs."""
    cls = model_class(spec)
    model = hf.load(spec, model_dir)
    config = model.config
    text = _text_config(config)
    inputs_meta = forward_inputs(cls, config)
    vocab = _first_attr(text, ["vocab_size"])
    # Token ids need a vocabulary; a model whose forward takes no ids (ViT: pixel_values) has none.
    takes_ids = model.main_input_name == "input_ids" or any(i["name"] == "input_ids" and i["required"] for i in inputs_meta)
    if vocab is None and takes_ids:
        raise SpecError(spec.file, f"`{spec.family}`'s config has no vocab_size (hint: its forward takes token ids, which need one)")
    runs = _probe(spec, inputs_meta, Probe(config, vocab))
    results = [_run(model, spec, r) for r in runs]
    outputs = set(hf.named_outputs(model, model_dir))
    sentence = [n for n in hf.SENTENCE_TAPS if n in outputs]
    if sentence:
        for r, (_order, arrays) in zip(runs, results):
            feats = {"input_ids": r["input_ids"], "attention_mask": [[1] * len(row) for row in r["input_ids"]]}
            arrays.update(hf.sentence(model_dir, None, feats, hf.torch.float32, spec.file))

    (order, arrays), (order2, arrays2) = results
    counts = {n: order.count(n) for n in order}
    # An encoder-decoder has two sequences (Whisper: the decoder's alone, its encoder's frames
    # are fixed): each entry says which one its sequence axis follows.
    sequences = None
    if getattr(config, "is_encoder_decoder", False):
        sequences = {n: (len(runs[0][n][0]), len(runs[1][n][0])) for n in SEQUENCES if n in runs[0]}
    counts2 = {n: order2.count(n) for n in order2}
    modules_by_name = dict(model.named_modules())
    modules, seen = [], set()
    for n in order + [s for s in sentence if s not in order]:
        if n in seen:
            continue
        seen.add(n)
        if counts.get(n, 1) != 1 or counts2.get(n, 1) != 1:
            continue
        a, b = arrays.get(n), arrays2.get(n)
        if a is None or b is None:
            continue  # its first output is not a tensor
        is_output = n in outputs and n not in modules_by_name
        entry = {"path": n, "class": None if is_output else type(modules_by_name[n]).__name__}
        entry.update(_axes(a.shape, b.shape, PROBES, sequences))
        if is_output:
            entry["output"] = True
        modules.append(entry)
    repeated = [
        {"path": n, "class": type(modules_by_name[n]).__name__, "runs": counts[n]}
        for n in dict.fromkeys(order)
        if counts[n] > 1 and n in modules_by_name
    ]
    not_run = sorted(n for n in modules_by_name if n and n not in counts)

    causal = False
    if model.main_input_name == "input_ids" and not getattr(config, "is_encoder_decoder", False):
        causal = _measure_causal(model, spec, runs[0], arrays, vocab)
    # An encoder-decoder's decoder, measured the same way on its own ids: causal, a prefix of
    # decoder_input_ids gives the same decoder outputs at its positions (shrinking cuts to one).
    decoder_causal = None
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in runs[0]:
        decoder_causal = _measure_causal(model, spec, runs[0], arrays, _decoder_vocab(Probe(config, vocab)), "decoder_input_ids")
    # Else (vision, audio: the main input is pixel_values, input_features, ...) `causal: false`
    # is recorded without measuring: the measurement changes a token id, and such a model has
    # none to change. An encoder-decoder is not causal in its input ids: every decoder position
    # attends to every encoder position.

    return {
        "format": FORMAT,
        "model": spec.id,
        "class": spec.family,
        "model_type": cls.config_class.model_type,
        "spec_digest": spec.digest,
        "config_sha256": sha256_bytes((model_dir / "config.json").read_bytes()),
        "generator": {"tool": store.TOOL, **hf.versions()},
        "causal": causal,
        **({"decoder_causal": decoder_causal} if decoder_causal is not None else {}),
        "is_encoder_decoder": bool(getattr(config, "is_encoder_decoder", False)),
        "main_input": model.main_input_name,
        "inputs": inputs_meta,
        "vocab_size": vocab,
        "type_vocab_size": _first_attr(text, ["type_vocab_size"]),
        "max_positions": _first_attr(text, ["max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"]),
        "position_offset": _position_offset(model),
        "layers": _layers(model, config),
        "modules": modules,
        "repeated": repeated,
        "not_run": not_run,
    }


def _measure_causal(model, spec: ModelSpec, run: dict, arrays: dict, vocab: int, ids: str = "input_ids") -> bool:
    """Change the last token of every row of `ids` in the first run; a causal model leaves every
    earlier position of last_hidden_state bit-identical (logits when there is no
    last_hidden_state: a head that calls a part of the base model, as OPT's calls its decoder,
    never runs the base model's forward)."""
    changed = {k: ([list(row) for row in v] if isinstance(v, list) else v) for k, v in run.items()}
    for row in changed[ids]:
        row[-1] = (row[-1] + 1) % vocab
    _, arrays3 = _run(model, spec, changed)
    rows = (len(run[ids]), len(run[ids][0]))
    measured = [t for t in ("last_hidden_state", "logits") if t in arrays and t in arrays3 and arrays[t].shape[:2] == rows]
    if not measured:
        raise SpecError(spec.file, f"cannot tell whether `{spec.family}` is causal: its forward gives no [batch, seq, ...] last_hidden_state or logits (hint: the harness supports token models so far)")
    h1, h3 = arrays[measured[0]], arrays3[measured[0]]
    return bool(
        h1.shape == h3.shape and h1[:, :-1].tobytes() == h3[:, :-1].tobytes() and h1[:, -1:].tobytes() != h3[:, -1:].tobytes()
    )


def structure_bytes(d: dict) -> bytes:
    return (json.dumps(d, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_into(spec: ModelSpec, model_dir: Path, out_dir: Path) -> None:
    """Record the structure of the model in `model_dir` and write out_dir/structure.json (plain
    write: callers write into a directory that is swapped in atomically; a checkpoint's file
    alone goes through store.write_file_atomic)."""
    store.write_files(out_dir, {FILE: structure_bytes(record(spec, model_dir))})


def is_stale(spec: ModelSpec, model_dir: Path, structure_file: Path) -> bool:
    """Missing, another format, or recorded from another spec or config.json."""
    try:
        d = json.loads(structure_file.read_text())
    except (OSError, ValueError):
        return True
    cfg = model_dir / "config.json"
    if not cfg.exists():
        return True
    return (
        not isinstance(d, dict)
        or d.get("format") != FORMAT
        or d.get("spec_digest") != spec.digest
        or d.get("config_sha256") != sha256_bytes(cfg.read_bytes())
    )
