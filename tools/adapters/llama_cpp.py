#!/usr/bin/env python3
"""llama.cpp as an external engine, through llama-cpp-python's low-level ctypes API.

    tools/.venv/bin/python tools/adapters/llama_cpp.py REQUEST_JSON     # protocol 1
    HARNESS_PROTOCOL=2 tools/.venv/bin/python tools/adapters/llama_cpp.py  # protocol 2 (JSON lines)

Install: tools/.venv/bin/pip install -r tools/adapters/requirements-llama-cpp.txt. Engine files:
cases/engines/llama-cpp.yaml (exact settings) and llama-cpp-defaults.yaml (llama.cpp's own
defaults). Notes, name mapping and measurements: tools/adapters/LLAMA_CPP_NOTES.md.

It loads `<model dir>/model.<gguf>.gguf` (written by tools/harness_goldens/gguf_export.py), runs each batch
row as its own sequence through `llama_decode` (padding left out), and captures intermediate
tensors with ggml's scheduler eval callback (`cb_eval`): every graph node whose name llama.cpp
gave it (`attn_norm-0`, `Qcur-0`, `attn_out-0`, `l_out-0`, `result_output`, ...). Tensors are
written under those names, in ggml's dimension order (numpy shape == ggml `ne`, with the batch
appended as the outermost ggml dimension: `[ne0, seq, batch]`), with the values exactly as ggml
computed them: `Qcur-N`/`Kcur-N` rows stay in the GGUF's per-head interleaved RoPE order. The
engine file's name and layout rules map them onto HF's taps.

Several nodes of one graph can share a name (llama.cpp names the q projection, its reshape and
its RoPE all `Qcur-0`). A tensor is identified by its name and its op; the first node in graph
order of that name keeps the plain name, later ones are written as `<name>~<OP>`
(`Qcur-0~ROPE`).

Options (engine file `options:`, overridable per case and per request):
  gguf        "f32" | "q8_0"                  which model.<gguf>.gguf (default f32)
  kv_type     "f32" | "f16"                   KV cache type (default f32)
  flash_attn  false | true | "auto"           flash attention (default false)
  n_threads   int                             threads (default 1)
  n_ctx       int                             context size (default: the model's context length)
  verbose     bool                            llama.cpp's info logs to stderr (default false)
Protocol 1 requests carry no options: a v1 engine file sets them with `env:`, as JSON in
LLAMA_CPP_OPTIONS (`env: {LLAMA_CPP_OPTIONS: '{"gguf": "q8_0"}'}`); request options win over it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

# This file is named like the package it drives: run as a script, its directory comes first on
# sys.path and `import llama_cpp` would import this file. Import the package without it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
try:
    import llama_cpp
    from llama_cpp import llama_cpp as C
except ImportError as e:  # reported to the harness when the engine is created
    llama_cpp = None
    IMPORT_ERROR = str(e)
sys.path.append(str(_HERE))

from protocol import Engine, EngineError, serve  # noqa: E402

SETUP = "tools/.venv/bin/pip install -r tools/adapters/requirements-llama-cpp.txt"


# ggml.h, struct ggml_tensor (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
# GGML_MAX_NAME 64). Checked against ggml_tensor_overhead() at load.
class GgmlTensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + padding
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
KV_TYPES = {"f32": GGML_TYPE_F32, "f16": GGML_TYPE_F16}
GGUF_TYPES = ("f32", "q8_0")
DEFAULTS = {"gguf": "f32", "kv_type": "f32", "flash_attn": False, "n_threads": 1, "n_ctx": None, "verbose": False}

# HF tap -> the ggml node (name, op) whose output IS that module's output, for llama.cpp's `llama`
# graph (src/models/llama.cpp, src/llama-graph.cpp). `{0}` is the layer. One node may serve
# several taps (HF's self_attn returns its o_proj's output; mlp returns down_proj's).
TAPS = [
    (r"model\.embed_tokens", "embd", "GET_ROWS"),
    (r"model\.layers\.(\d+)\.input_layernorm", "attn_norm-{0}", "MUL"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj", "Qcur-{0}", "MUL_MAT"),  # rows interleaved per head
    (r"model\.layers\.(\d+)\.self_attn\.k_proj", "Kcur-{0}", "MUL_MAT"),  # rows interleaved per head
    (r"model\.layers\.(\d+)\.self_attn\.v_proj", "Vcur-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj", "attn_out-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.self_attn", "attn_out-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm", "ffn_norm-{0}", "MUL"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj", "ffn_gate-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj", "ffn_up-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj", "ffn_out-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)\.mlp", "ffn_out-{0}", "MUL_MAT"),
    (r"model\.layers\.(\d+)", "l_out-{0}", "ADD"),
    (r"model\.norm", "result_norm", "MUL"),
    (r"last_hidden_state", "result_norm", "MUL"),
    (r"lm_head", "result_output", "MUL_MAT"),
    (r"logits", "result_output", "MUL_MAT"),
]
# HF taps with no ggml node, and why (the `not_produced` of a v2 reply).
NOT_PRODUCED = [
    (r"model\.rotary_emb", "llama.cpp has no cos/sin table: GGML_OP_ROPE computes the rotation inside the op (`Qcur-N~ROPE`)"),
    (r"model\.layers\.\d+\.mlp\.act_fn", "fused: llama.cpp computes silu(gate) * up in one GGML_OP_GLU (`ffn_swiglu-N`); silu(gate) alone never exists"),
    (r"model\.layers\.\d+\.self_attn\.rotary_emb", "RoPE is applied inside GGML_OP_ROPE"),
]
# What the `load` reply says it can produce (globs of HF taps).
TAP_GLOBS = [
    "model.embed_tokens",
    "model.layers.*.input_layernorm",
    "model.layers.*.self_attn.q_proj",
    "model.layers.*.self_attn.k_proj",
    "model.layers.*.self_attn.v_proj",
    "model.layers.*.self_attn.o_proj",
    "model.layers.*.self_attn",
    "model.layers.*.post_attention_layernorm",
    "model.layers.*.mlp.gate_proj",
    "model.layers.*.mlp.up_proj",
    "model.layers.*.mlp.down_proj",
    "model.layers.*.mlp",
    "model.layers.*",
    "model.norm",
    "last_hidden_state",
    "lm_head",
    "logits",
]


def ggml_node(hf: str) -> tuple[str, str] | None:
    """The (ggml name, op) whose output is HF tap `hf`, or None."""
    for pattern, name, op in TAPS:
        m = re.fullmatch(pattern, hf)
        if m:
            return name.format(*m.groups()), op
    return None


def not_produced_reason(hf: str) -> str:
    for pattern, why in NOT_PRODUCED:
        if re.fullmatch(pattern, hf):
            return why
    return "llama.cpp's llama graph has no tensor equal to this module's output"


def _flash_attn_type(v) -> int:
    if v is True or v == "on" or v == "enabled":
        return C.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if v is False or v in (None, "off", "disabled"):
        return C.LLAMA_FLASH_ATTN_TYPE_DISABLED
    if v == "auto":
        return C.LLAMA_FLASH_ATTN_TYPE_AUTO
    raise EngineError(f"option flash_attn: {v!r} is not false, true or \"auto\"")


class Ggml:
    """The few ggml functions the capture needs, from the libggml-base that llama_cpp loaded."""

    def __init__(self):
        libdir = Path(llama_cpp.__file__).resolve().parent / "lib"
        cands = sorted(libdir.glob("libggml-base.*"))
        if not cands:
            raise EngineError(f"no libggml-base in {libdir}", f"reinstall llama-cpp-python: {SETUP}")
        lib = ctypes.CDLL(str(cands[0]))
        self.op_name = lib.ggml_op_name
        self.op_name.argtypes, self.op_name.restype = [ctypes.c_int], ctypes.c_char_p
        self.nbytes = lib.ggml_nbytes
        self.nbytes.argtypes, self.nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
        self.is_contiguous = lib.ggml_is_contiguous
        self.is_contiguous.argtypes, self.is_contiguous.restype = [ctypes.c_void_p], ctypes.c_bool
        self.n_dims = lib.ggml_n_dims
        self.n_dims.argtypes, self.n_dims.restype = [ctypes.c_void_p], ctypes.c_int
        self.tensor_get = lib.ggml_backend_tensor_get
        self.tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.tensor_get.restype = None
        overhead = lib.ggml_tensor_overhead
        overhead.restype = ctypes.c_size_t
        if overhead() != ctypes.sizeof(GgmlTensor) + GGML_OBJECT_SIZE:
            raise EngineError(
                f"struct ggml_tensor of this llama.cpp build is {overhead() - GGML_OBJECT_SIZE} bytes, the adapter's is {ctypes.sizeof(GgmlTensor)}",
                "the ggml ABI changed: update GgmlTensor in tools/adapters/llama_cpp.py from ggml.h",
            )


class Capture:
    """The eval callback: keeps a copy of every F32 node whose name is wanted, keyed by its name
    (`<name>~<OP>` for later nodes of a name already taken by a node of another op)."""

    def __init__(self, ggml: Ggml):
        self.ggml = ggml
        self.wanted: set[str] | None = set()  # ggml names; None: everything
        self.tensors: dict[str, np.ndarray] = {}
        self.ops: dict[str, str] = {}  # stored name -> op
        self.ops_seen: set[str] = set()
        self.error: str | None = None
        self.callback = C.ggml_backend_sched_eval_callback(self._cb)

    def reset(self, wanted: set[str] | None) -> None:
        self.wanted, self.tensors, self.ops, self.error = wanted, {}, {}, None

    def _cb(self, t_ptr, ask, _user_data):
        try:
            t = GgmlTensor.from_address(t_ptr)
            name = t.name.decode("utf-8", "replace")
            if ask:
                self.ops_seen.add(self.ggml.op_name(t.op).decode())
                return self.wanted is None or name in self.wanted
            if self.wanted is not None and name not in self.wanted:
                return True
            op = self.ggml.op_name(t.op).decode()
            key = name
            if key in self.ops:
                if self.ops[key] == op:
                    return True  # a second node of the same name and op: keep the first
                key = f"{name}~{op}"
                if key in self.ops:
                    return True
            if t.type != GGML_TYPE_F32:
                return True
            # ggml_n_dims drops trailing 1s: a one-token [hidden, 1] activation would lose its token
            # axis. Keep at least 2 dims ([tokens, ne0] in numpy order, what every mapped tap is).
            n = max(self.ggml.n_dims(t_ptr), 2)
            shape = tuple(int(t.ne[i]) for i in reversed(range(n)))  # numpy order
            if self.ggml.is_contiguous(t_ptr):
                a = np.empty(shape, dtype=np.float32)
                self.ggml.tensor_get(t_ptr, a.ctypes.data, 0, a.nbytes)
            else:
                # A view: read its whole source span, then index with its strides (host memory).
                span = sum((int(t.ne[i]) - 1) * int(t.nb[i]) for i in range(4)) + 4
                buf = (ctypes.c_char * span).from_address(t.data)
                strides = tuple(int(t.nb[i]) for i in reversed(range(n)))
                a = np.lib.stride_tricks.as_strided(np.frombuffer(buf, dtype=np.float32), shape, strides).copy()
            self.tensors[key] = a
            self.ops[key] = op
        except Exception as e:  # noqa: BLE001  an exception must not cross into C
            self.error = f"{type(e).__name__}: {e}"
        return True


class Log:
    """llama.cpp's and ggml's log to stderr: warnings and errors, everything with `verbose`.
    llama-cpp-python's own filter (llama_cpp._logger) maps levels by an older enum ggml_log_level
    (INFO 1, WARN 2, ERROR 3; this ggml has DEBUG 1, INFO 2, WARN 3, ERROR 4), so it lets info
    through as warnings; this one reads ggml.h's."""

    def __init__(self):
        self.verbose = False
        self.last = 0
        self.callback = C.llama_log_callback(self._cb)

    def _cb(self, level, text, _user_data):
        if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous message
            self.last = level
        if self.verbose or self.last in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", "replace"))
            sys.stderr.flush()


class LlamaCpp(Engine):
    def __init__(self):
        if llama_cpp is None:
            raise EngineError(f"llama-cpp-python is not installed ({IMPORT_ERROR})", f"install it: {SETUP}")
        self.model_info: dict = {}
        self.load_options: dict = {}
        self.opts: dict = {}
        self.model = None
        self.ctx = None
        self.model_gguf = None
        self.ggml = Ggml()
        self.capture = Capture(self.ggml)
        self.log = Log()
        self.flash_attn_used: bool | None = None

    # ---- setup ----

    def load(self, model: dict, options: dict) -> dict:
        C.llama_backend_init()
        C.llama_log_set(self.log.callback, None)
        self.model_info = model
        self.load_options = dict(options)
        self._configure(options)
        return {
            "capabilities": {"decode": True, "blocks": False},
            "taps": TAP_GLOBS,
            "info": self.info(),
        }

    def info(self) -> str:
        o = self.opts
        fa = {True: "used", False: "not used", None: "unknown"}[self.flash_attn_used]
        return (
            f"llama-cpp-python {llama_cpp.__version__}, model.{o['gguf']}.gguf, KV cache {o['kv_type'].upper()}, "
            f"flash attention {o['flash_attn']!r} ({fa}), {o['n_threads']} thread(s)"
        )

    def _configure(self, options: dict) -> None:
        """(Re)load the model and context when the options that shape them change. A request's
        options override the load's, which override LLAMA_CPP_OPTIONS, which overrides DEFAULTS."""
        try:
            env = json.loads(os.environ.get("LLAMA_CPP_OPTIONS") or "{}")
        except json.JSONDecodeError as e:
            raise EngineError(f"LLAMA_CPP_OPTIONS is not JSON: {e}") from None
        options = {**env, **self.load_options, **options}
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise EngineError(f"unknown option(s) {sorted(unknown)}", f"known: {', '.join(DEFAULTS)}")
        o = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
        if o["gguf"] not in GGUF_TYPES:
            raise EngineError(f"option gguf: {o['gguf']!r} is not one of {list(GGUF_TYPES)}")
        if o["kv_type"] not in KV_TYPES:
            raise EngineError(f"option kv_type: {o['kv_type']!r} is not one of {list(KV_TYPES)}")
        _flash_attn_type(o["flash_attn"])
        self.log.verbose = bool(o["verbose"])
        if self.model is None or o["gguf"] != self.model_gguf:
            self._free()
            path = Path(self.model_info["dir"]) / f"model.{o['gguf']}.gguf"
            if not path.exists():
                raise EngineError(f"{path} does not exist", f"add `{o['gguf']}` to the model spec's `gguf:` and run tools/regen_goldens.py")
            mp = C.llama_model_default_params()
            mp.n_gpu_layers = 0
            self.model = C.llama_model_load_from_file(str(path).encode(), mp)
            if not self.model:
                raise EngineError(f"llama.cpp cannot load {path}", "run with option verbose: true to see llama.cpp's log on stderr")
            self.model_gguf = o["gguf"]
            self.ctx = None
        if self.ctx is None or any(o[k] != self.opts.get(k) for k in ("kv_type", "flash_attn", "n_threads", "n_ctx")):
            if self.ctx is not None:
                C.llama_free(self.ctx)
                self.ctx = None
            cp = C.llama_context_default_params()
            n_ctx = int(o["n_ctx"] or C.llama_model_n_ctx_train(self.model))
            cp.n_ctx = n_ctx
            cp.n_batch = n_ctx  # a whole prompt is one ubatch: one callback per node
            cp.n_ubatch = n_ctx
            cp.n_seq_max = 1
            cp.n_threads = cp.n_threads_batch = int(o["n_threads"])
            cp.type_k = cp.type_v = KV_TYPES[o["kv_type"]]
            cp.flash_attn_type = _flash_attn_type(o["flash_attn"])
            cp.cb_eval = self.capture.callback
            cp.cb_eval_user_data = None
            cp.no_perf = True
            self.ctx = C.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise EngineError("llama.cpp cannot create a context with these options", f"options: {o}")
            self.n_ctx = C.llama_n_ctx(self.ctx)
            self.n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self.model))
            # Which attention ran (flash attention "auto" is resolved by llama.cpp): a 2-token probe.
            self.capture.ops_seen.clear()
            self._sequence([1, 1], [0, 1], set())
            self.flash_attn_used = "FLASH_ATTN_EXT" in self.capture.ops_seen
        self.opts = o

    def _free(self) -> None:
        if self.ctx is not None:
            C.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            C.llama_model_free(self.model)
            self.model = None

    # ---- running ----

    def _decode(self, tokens: list[int], positions: list[int], wanted: set[str] | None) -> dict[str, np.ndarray]:
        """One llama_decode of `tokens` (sequence 0, logits for every token) on top of what the KV
        cache holds; returns the captured tensors (numpy order: [tokens, ne0])."""
        n = len(tokens)
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise EngineError(f"token ids {bad[:5]} are outside the model's vocabulary of {self.n_vocab}")
        batch = C.llama_batch_init(n, 0, 1)
        try:
            for i, (tok, pos) in enumerate(zip(tokens, positions)):
                batch.token[i] = int(tok)
                batch.pos[i] = int(pos)
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            self.capture.reset(wanted)
            rc = C.llama_decode(self.ctx, batch)
        finally:
            C.llama_batch_free(batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc} for {n} tokens at positions {positions[0]}..{positions[-1]}", "run with option verbose: true to see llama.cpp's log")
        if self.capture.error:
            raise EngineError(f"capturing tensors failed: {self.capture.error}")
        out = dict(self.capture.tensors)
        # The captured logits are llama.cpp's own: check them against llama_get_logits_ith.
        if "result_output" in out:
            got = out["result_output"]
            for i in (0, n - 1):
                row = np.ctypeslib.as_array(C.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                if not np.array_equal(row, got[i]):
                    raise EngineError(f"captured result_output row {i} differs from llama_get_logits_ith({i})")
        return out

    def _sequence(self, tokens: list[int], positions: list[int], wanted: set[str] | None) -> dict[str, np.ndarray]:
        """A fresh sequence: clear the KV cache, then decode the prompt."""
        if len(tokens) > self.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}", "raise option n_ctx")
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        return self._decode(tokens, positions, wanted)

    def _plan(self, taps: list[dict]) -> tuple[list[tuple[str, str]], dict[str, str], set[str]]:
        """[(ggml name, op)] to write, {hf: why not produced}, ggml names to capture. Each tensor
        is written once, under its ggml name (what the engine file's rules run backwards to, so
        the request's `engine` names agree); the rules map it to every HF tap it serves."""
        plan, missing = {}, {}
        for t in taps:
            node = ggml_node(t["hf"])
            if node is None:
                missing[t["hf"]] = not_produced_reason(t["hf"])
            else:
                plan.setdefault(node[0], node[1])
        return list(plan.items()), missing, set(plan)

    @staticmethod
    def _rows(inputs: dict) -> list[tuple[list[int], list[int], np.ndarray]]:
        """Per batch row: (real tokens, their positions, the indices of the real tokens)."""
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        mask = np.asarray(inputs.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        pos = inputs.get("position_ids")
        rows = []
        for b in range(ids.shape[0]):
            idx = np.flatnonzero(mask[b] != 0)
            if idx.size == 0:
                rows.append(([], [], idx))
                continue
            if pos is not None:
                p = [int(x) for x in np.asarray(pos)[b, idx]]
            else:
                p = list(range(idx.size))
            if any(b2 != a + 1 for a, b2 in zip(p, p[1:])):
                raise EngineError(f"row {b}: the real tokens' positions {p[:8]}... are not consecutive", "llama.cpp needs consecutive positions within a sequence")
            rows.append(([int(x) for x in ids[b, idx]], p, idx))
        return rows

    def _assemble(self, per_row: list[dict | None], rows_idx: list[np.ndarray], plan, batch: int, seq: int) -> dict[str, np.ndarray]:
        """[batch, seq, ...] per tensor (zeros at padding), written in ggml order (reversed)."""
        out = {}
        for name, _ in plan:
            full = None
            for b, captured in enumerate(per_row):
                if captured is None:
                    continue
                a = captured[name]
                if full is None:
                    full = np.zeros((batch, seq) + a.shape[1:], dtype=np.float32)
                full[b, rows_idx[b]] = a
            if full is not None:
                out[name] = np.ascontiguousarray(full.transpose(tuple(reversed(range(full.ndim)))))
        return out

    def _check_ops(self, captured: dict, plan) -> None:
        for key, op in plan:
            if key not in captured:
                raise EngineError(f"llama.cpp's graph had no F32 node `{key}`", "the graph of this llama.cpp version differs from the one the adapter knows: see LLAMA_CPP_NOTES.md")
            got = self.capture.ops.get(key)
            if got != op:
                raise EngineError(f"node `{key}` is a {got}, the adapter expects {op}", "the graph of this llama.cpp version differs from the one the adapter knows: see LLAMA_CPP_NOTES.md")

    def forward(self, inputs, taps, options, case):
        self._configure(options)
        plan, missing, names = self._plan(taps)
        rows = self._rows(inputs)
        ids = np.asarray(inputs["input_ids"])
        per_row = []
        for toks, pos, _ in rows:
            if not toks:
                per_row.append(None)
                continue
            captured = self._sequence(toks, pos, names)
            self._check_ops(captured, plan)
            per_row.append(captured)
        return self._assemble(per_row, [r[2] for r in rows], plan, ids.shape[0], ids.shape[1]), missing

    def decode(self, inputs, tokens, taps, options, case):
        self._configure(options)
        plan, missing, names = self._plan(taps)
        rows = self._rows(inputs)
        ids = np.asarray(inputs["input_ids"])
        tokens = np.asarray(tokens, dtype=np.int64)
        batch, steps = tokens.shape
        if batch != ids.shape[0]:
            raise EngineError(f"decode tokens have {batch} rows, the prompt {ids.shape[0]}")
        per_step: list[list] = [[] for _ in range(steps + 1)]
        for b, (toks, pos, _) in enumerate(rows):
            if len(toks) != ids.shape[1]:
                raise EngineError(f"row {b} of a decode prompt has padding", "decode cases have no padding")
            if len(toks) + steps > self.n_ctx:
                raise EngineError(f"{len(toks)} + {steps} tokens do not fit the context of {self.n_ctx}", "raise option n_ctx")
            captured = self._sequence(toks, pos, names)
            self._check_ops(captured, plan)
            per_step[0].append(captured)
            for k in range(1, steps + 1):
                captured = self._decode([int(tokens[b, k - 1])], [pos[-1] + k], names)
                self._check_ops(captured, plan)
                per_step[k].append(captured)
        results = []
        for k, caps in enumerate(per_step):
            seq = ids.shape[1] if k == 0 else 1
            idx = [np.arange(seq)] * batch
            results.append((self._assemble(caps, idx, plan, batch, seq), missing))
        return results


if __name__ == "__main__":
    sys.exit(serve(LlamaCpp))
