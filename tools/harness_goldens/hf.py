"""HF transformers as the reference: build tiny models, run forwards with module hooks.

Everything runs on the CPU in float32 with eager attention under torch.no_grad(), single
threaded with deterministic algorithms, so that a rerun reproduces every golden bit for bit.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
from pathlib import Path

# Before torch loads: bitwise-reproducible MKL paths, one thread, nothing from the network.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
# torch picks its vectorized CPU kernels (softmax, norms, reductions) by what the CPU offers, and
# AVX-512 and AVX2 kernels round differently: goldens made on one machine then fail `--check` on
# the other by 1-4 ulps. Every x86-64 CI machine has AVX2, so the kernels are pinned to it.
# Convolutions (Whisper's, ViT's patch embedding) run in oneDNN, which picks its own ISA: pinned
# the same way (measured: Whisper's conv2 differed on an AVX-512 machine with ATen pinned alone).
if platform.machine() in ("x86_64", "AMD64"):
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from .spec import PICKLES, ModelSpec, SpecError  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.utils.logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Sentence-embedding taps computed from `last_hidden_state` (see `pooled`), for encoder families
# that embedding models are built on.
POOLED_TAPS = ("pooled.cls", "pooled.mean", "pooled.cls.normalized", "pooled.mean.normalized")
POOLED_FAMILIES = {"BertModel", "ModernBertModel"}
# sentence-transformers checkpoints (a modules.json) of those families also get these, from
# sentence_transformers itself (see `sentence`).
SENTENCE_TAPS = ("sentence_embedding", "similarity")
# The tokenizer goldens of text cases, compared first by the harness.
TOKENIZER_TAPS = ("tokenizer.input_ids", "tokenizer.attention_mask", "tokenizer.token_type_ids")


def versions() -> dict:
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability().lower(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def model_class(spec: ModelSpec):
    """The spec's `family` as a transformers class; an unknown name fails with a did-you-mean."""
    from .structure import model_class as checked

    return checked(spec)


def build_random(spec: ModelSpec, out_dir: Path) -> None:
    """Initialise `spec` from its config and seed and save config.json + model.safetensors."""
    cls = model_class(spec)
    seed = int(spec.source["random"]["seed"])
    try:
        config = cls.config_class(**spec.config)
    except Exception as e:  # noqa: BLE001 - strict dataclass validation raises its own error types
        raise SpecError(spec.file, f"invalid config: {e}", at="config") from None
    # Size first, on the meta device: absurd dims fail here with a message, not in the allocator.
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in cls._from_config(config, attn_implementation="eager").parameters())
    except Exception as e:  # noqa: BLE001 - whatever the class raises for a config it cannot build
        raise SpecError(
            spec.file,
            f"`{spec.family}` cannot be built from this config: {e} (hint: check the sizes under `config:`; random models are tiny)",
            at="config",
        ) from None
    if params > MAX_RANDOM_PARAMS:
        raise SpecError(
            spec.file,
            f"the config implies {params:,} weights, more than {MAX_RANDOM_PARAMS:,} (hint: random models are tiny; "
            "check the sizes under `config:`)",
            at="config",
        )
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    if spec.source["random"].get("every_weight"):
        randomize_constants(model, seed, float(getattr(config, "initializer_range", None) or 0.02))
    model = model.to(DTYPES[spec.dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.pop("_attn_implementation_autoset", None)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # Tied weights are saved once, under the source name (as save_pretrained does: the embedding,
    # not lm_head); metadata is fixed so the bytes are reproducible.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for k in _tied_copies(model, state):
        del state[k]
    safetensors.torch.save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


# A random model's weights (tiny models are kept under 2 MB; this refuses configs that would not
# fit in memory before anything is allocated).
MAX_RANDOM_PARAMS = 2**30


def randomize_constants(model, seed: int, std: float) -> None:
    """`random: {every_weight: true}`: perturb the weights HF initializes to constants (1-d: norm
    weights to 1 or 0, biases to 0) by N(0, std), seeded. With those constant, a port that drops a
    bias or reads a norm weight as `w` instead of `1 + w` computes the same numbers as HF."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)


def tied_keys(model) -> dict:
    """{tied: source} of the model and of every sub-model it holds, with full paths: a sub-model's
    own `_tied_weights_keys` count too (BartForConditionalGeneration ties `lm_head` itself, but
    the encoder's and decoder's `embed_tokens` to `model.shared` through BartModel's). A list
    (older transformers) gives keys without a source (None)."""
    own = getattr(model, "_tied_weights_keys", None) or {}
    tied = dict(own) if isinstance(own, dict) else dict.fromkeys(own)
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    if callable(expand):
        try:
            tied.update(expand(all_submodels=True))
        except (TypeError, ValueError):  # an older signature, or a pattern that matches nothing
            pass
    return tied


def _tied_copies(model, state: dict) -> list[str]:
    """Keys of `tied_keys` ({tied: source}) that share memory with their source."""
    return [k for k, src in tied_keys(model).items() if k in state and src in state and state[k].data_ptr() == state[src].data_ptr()]


def load(spec: ModelSpec, model_dir: Path, dtype: torch.dtype = torch.float32, layers: int | None = None):
    """Load a checkpoint directory from safetensors only (never pickle). With `layers`, the model
    truncated to its first `layers` layers (the rest of the checkpoint's layers are left out)."""
    cls = model_class(spec)
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        pickles = [p for p in PICKLES if (model_dir / p).exists()]
        if pickles:
            raise SpecError(model_dir / pickles[0], "pickled checkpoints are refused (they can run code); convert to model.safetensors")
        raise SpecError(weights, "model weights are missing")
    config = cls.config_class.from_pretrained(str(model_dir))
    config._attn_implementation = "eager"
    if layers is not None:
        full = config.num_hidden_layers
        config.num_hidden_layers = layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:layers]
    model = cls(config)
    state = safetensors.torch.load_file(str(weights))
    if layers is not None:
        dropped = {_layer_index(k) for k in state} - {None}
        state = {k: v for k, v in state.items() if (_layer_index(k) or 0) < layers}
        if not dropped or max(dropped) != full - 1:
            raise SpecError(weights, f"cannot find the per-layer weights to truncate to {layers} layers")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Old checkpoints carry buffers the model rebuilds itself (BERT's embeddings.position_ids).
    buffers = {n for n, _ in model.named_buffers()}
    unexpected = [u for u in unexpected if u not in buffers]
    tied = set(tied_keys(model))
    missing = [m for m in missing if m not in tied and not _is_tied(model, m)]
    if missing or unexpected:
        raise SpecError(weights, f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.to(dtype).eval()


def _layer_index(key: str) -> int | None:
    """The layer number of a per-layer weight name (`model.layers.3.mlp...` -> 3)."""
    for part in key.split("."):
        if part.isdigit():
            return int(part)
    return None


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def base_model_name(model) -> str:
    """Module path of the base model (whose first output is `last_hidden_state`)."""
    base = getattr(model, "base_model", model)
    for name, mod in model.named_modules():
        if mod is base:
            return name
    return ""


def _side_name(model, getter: str) -> str | None:
    """Module path of the submodule an encoder-decoder's `getter` (`get_encoder`,
    `get_decoder`) returns; None for other models."""
    get = getattr(model, getter, None)
    if not getattr(model.config, "is_encoder_decoder", False) or not callable(get):
        return None
    side = get()
    return next((name for name, mod in model.named_modules() if mod is side and name), None)


def encoder_name(model) -> str | None:
    """Module path of an encoder-decoder's encoder (whose first output is
    `encoder_last_hidden_state`); None for other models."""
    return _side_name(model, "get_encoder")


def named_outputs(model, model_dir: Path | None = None) -> list[str]:
    """Tap names that are not module paths."""
    names = ["last_hidden_state", "logits"]
    if encoder_name(model) is not None:
        names.append("encoder_last_hidden_state")
    if type(model).__name__ in POOLED_FAMILIES:
        names += POOLED_TAPS
        if model_dir is not None and (model_dir / "modules.json").exists():
            names += SENTENCE_TAPS
    return names


def model_max_length(model_dir: Path) -> int | None:
    """The max length `truncation: true` uses when the case gives none (as harness/src/text.rs):
    sentence-transformers' max_seq_length, else the tokenizer's model_max_length."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            v = json.loads((model_dir / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(v, (int, float)) and 1 <= v < 1e9:
            return int(v)
    return None


def text_rows(text) -> list:
    """`inputs.text` as a list of rows (a string, or a (first, second) pair)."""
    rows = [text] if isinstance(text, str) else list(text)
    return [tuple(r) if isinstance(r, list) else r for r in rows]


def tokenize(model_dir: Path, text, options: dict, file: Path) -> dict[str, list[list[int]]]:
    """HF's tokenizer on the case's text with the case's options: {input_ids, attention_mask,
    token_type_ids (when the tokenizer makes them)}."""
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    o = {"add_special_tokens": True, "padding": "longest", "truncation": False, "max_length": None, **options}
    if o["padding"] not in ("longest", "max_length"):
        raise SpecError(file, f"tokenizer padding `{o['padding']}` is not `longest` or `max_length`")
    max_length = o["max_length"]
    if max_length is None and (o["truncation"] or o["padding"] == "max_length"):
        max_length = model_max_length(model_dir)
        if max_length is None:
            raise SpecError(file, "the model's max length is unknown: give `max_length:` under `tokenizer:`")
    rows = text_rows(text)
    args = [[r[0] for r in rows], [r[1] for r in rows]] if isinstance(rows[0], tuple) else [rows]
    enc = tok(
        *args,
        padding=o["padding"],
        truncation="longest_first" if o["truncation"] else False,
        max_length=max_length,
        add_special_tokens=o["add_special_tokens"],
    )
    return {k: [list(map(int, r)) for r in enc[k]] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def sentence(model_dir: Path, text, inputs: dict, dtype: torch.dtype, file: Path) -> dict[str, np.ndarray]:
    """`sentence_embedding` and `similarity` (its cosine-similarity matrix) from
    sentence_transformers itself: its own tokenization of the text (which must equal the case's),
    then its modules (Transformer with eager attention, Pooling, Normalize)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}, local_files_only=True)
    st = st.to(dtype).eval()
    features = {k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()}
    if text is not None:
        own = (st.preprocess if hasattr(st, "preprocess") else st.tokenize)(text_rows(text))
        for k, v in features.items():
            if k in own and not torch.equal(own[k], v):
                raise SpecError(
                    file,
                    f"sentence-transformers tokenizes this text differently (`{k}` differs): `sentence_embedding` "
                    "needs the case's tokenizer options to be what sentence-transformers uses (padding longest, "
                    "truncation at its max_seq_length)",
                )
        features = dict(own)
    with torch.no_grad():
        emb = st(features)["sentence_embedding"]
        sim = st.similarity(emb, emb)
    return {"sentence_embedding": to_numpy(emb), "similarity": to_numpy(sim)}


def pooled(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """CLS and mean pooling, plain and L2-normalized, exactly as sentence-transformers computes
    them (Pooling `cls` / `mean`, then Normalize): CLS is the first real token; the mean is
    sum(h * mask) / clamp(sum(mask), min=1e-9); normalization is F.normalize(p=2, dim=1)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
    first = attention_mask.to(torch.int).argmax(dim=1)
    cls = torch.gather(hidden, 1, first.unsqueeze(-1).unsqueeze(1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(dim=1, dtype=hidden.dtype) / torch.clamp(mask.sum(dim=1, dtype=hidden.dtype), min=1e-9)
    out = {"pooled.cls": cls, "pooled.mean": mean}
    out["pooled.cls.normalized"] = torch.nn.functional.normalize(cls, p=2, dim=1)
    out["pooled.mean.normalized"] = torch.nn.functional.normalize(mean, p=2, dim=1)
    return out


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out


def as_tensor(v, model) -> torch.Tensor:
    """One forward input: rows of ids (lists) as torch.long, as ever; a numpy array (a named
    input) with its dtype (int64 -> long, bool -> bool), floats in the model's float dtype
    (float32 as given; exact in the float64 run)."""
    if not isinstance(v, np.ndarray):
        return torch.tensor(v, dtype=torch.long)
    t = torch.from_numpy(np.array(v, copy=True, order="C"))
    if t.dtype.is_floating_point:
        p = next(model.parameters(), None)
        if p is not None and p.dtype.is_floating_point:
            t = t.to(p.dtype)
    return t


def run(model, inputs: dict, taps: list[str] | None, cache: dict | None = None):
    """Forward `inputs` once. Returns (module_order, {tap: np.ndarray}).

    `module_order` lists every module (HF path) in the order its forward completed, with the
    named outputs placed where they become available. `taps=None` captures every module.
    With `cache` (a dict), the forward uses and updates `cache["past_key_values"]`.
    """
    base = base_model_name(model)
    encoder = encoder_name(model)
    # A seq2seq head with no base model of its own (T5ForConditionalGeneration): its first output
    # is the logits, and last_hidden_state is the decoder's output.
    if base == "":
        base = _side_name(model, "get_decoder") or ""
    order: list[str] = []
    captured: dict[str, torch.Tensor] = {}
    want = None if taps is None else set(taps)

    def hook(name):
        def fn(_mod, _inp, out):
            order.append(name)
            if want is None or name in want:
                t = _first(out)
                if isinstance(t, torch.Tensor):
                    captured[name] = t.detach()
            if name == base:
                order.append("last_hidden_state")
                captured["last_hidden_state"] = _first(out).detach()
            if name == encoder:
                order.append("encoder_last_hidden_state")
                captured["encoder_last_hidden_state"] = _first(out).detach()

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n != ""]
    try:
        with torch.no_grad():
            kwargs = {k: as_tensor(v, model) for k, v in inputs.items()}
            if "use_cache" in inspect.signature(model.forward).parameters:
                kwargs["use_cache"] = cache is not None
            if cache is not None and "past_key_values" in cache:
                kwargs["past_key_values"] = cache["past_key_values"]
            out = model(**kwargs)
            if cache is not None:
                cache["past_key_values"] = out.past_key_values
    finally:
        for h in handles:
            h.remove()
    if base == "":
        order.append("last_hidden_state")
        captured["last_hidden_state"] = _first(out).detach()
    if getattr(out, "logits", None) is not None:
        order.append("logits")
        captured["logits"] = out.logits.detach()
    if type(model).__name__ in POOLED_FAMILIES:
        for name, t in pooled(captured["last_hidden_state"], kwargs.get("attention_mask")).items():
            order.append(name)
            captured[name] = t
    arrays = {k: to_numpy(v) for k, v in captured.items() if want is None or k in want}
    return order, arrays


def run_decode(model, inputs: dict, tokens: list[list[int]], taps: list[str]):
    """The prompt with `use_cache=True`, then `tokens[:, k-1]` alone at step k with the cache
    (positions continue from the prompt length). Returns one `run` result per step."""
    cache: dict = {}
    steps = [run(model, inputs, taps, cache)]
    for k in range(len(tokens[0])):
        steps.append(run(model, {"input_ids": [[row[k]] for row in tokens]}, taps, cache))
    return steps


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.float64:
        return np.ascontiguousarray(t.cpu().numpy())
    if t.dtype.is_floating_point:
        return np.ascontiguousarray(t.to(torch.float32).cpu().numpy())
    return np.ascontiguousarray(t.to(torch.int64).cpu().numpy())


def available_taps(model, module_order: list[str]) -> list[str]:
    """Tappable names in forward order: every module that ran, plus the named outputs."""
    seen = set()
    out = []
    for n in module_order:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out
