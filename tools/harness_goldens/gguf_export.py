"""Write a Llama checkpoint as GGUF (F32 or Q8_0), as llama.cpp's convert_hf_to_gguf.py does.

For model specs with `gguf: [f32, q8_0]`, regen.py writes `model.<type>.gguf` beside
model.safetensors; the harness's `candle-gguf-<type>` engines run it with candle-transformers'
quantized_llama. The layout follows llama.cpp:

- names: `token_embd`, `blk.N.attn_{norm,q,k,v,output}`, `blk.N.ffn_{norm,gate,up,down}`,
  `output_norm`, `output` (omitted when tied to the embeddings);
- q_proj and k_proj rows are permuted per head from HF's half-split RoPE order to the
  interleaved order that GGUF's `llama` architecture implies (llama.cpp's `LlamaModel.permute`);
- 1-d tensors (norms) stay F32; 2-d weights get the file's type;
- a synthetic SentencePiece (`llama`) vocabulary of exactly vocab_size tokens (`synthetic_vocab`):
  llama.cpp refuses a file without `tokenizer.ggml.model` and its token list, although the harness
  only ever feeds token ids;
- `harness.source.sha256` is the sha256 of the model.safetensors it came from (the Rust side
  refuses a GGUF file older than the weights).

The bytes are a function of the weights and the type only (no timestamps), so --check can
compare them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy

import gguf

TYPES = {"f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32), "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
SOURCE_SHA256 = "harness.source.sha256"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rows (per head: first halves, then second halves of the rotated pairs) -> interleaved
    pairs, exactly llama.cpp's `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def synthetic_vocab(n: int) -> tuple[list[str], list[int]]:
    """Tokens and token types for a vocabulary of n ids: `<unk>`, `<s>`, `</s>` (ids 0, 1, 2, as
    HF Llama's unk/bos/eos), then SentencePiece byte tokens `<0x00>`, `<0x01>`, ... (so llama.cpp
    finds its newline token and can byte-tokenize ASCII text), then `<tok{id}>` placeholders."""
    if n < 3:
        raise ValueError(f"a GGUF vocabulary needs at least 3 tokens (unk, bos, eos), vocab_size is {n}")
    T = gguf.TokenType
    tokens, types = ["<unk>", "<s>", "</s>"], [T.UNKNOWN, T.CONTROL, T.CONTROL]
    for i in range(3, n):
        if i - 3 < 256:
            tokens.append(f"<0x{i - 3:02X}>")
            types.append(T.BYTE)
        else:
            tokens.append(f"<tok{i}>")
            types.append(T.NORMAL)
    return tokens, [int(t) for t in types]


def export(model_dir: Path, qtype: str, out: Path, source_sha256: str, name: str) -> None:
    if qtype not in TYPES:
        raise ValueError(f"unknown GGUF type `{qtype}` (known: {', '.join(TYPES)})")
    ggml_type, file_type = TYPES[qtype]
    cfg = json.loads((model_dir / "config.json").read_text())
    state = safetensors.numpy.load_file(str(model_dir / "model.safetensors"))
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    if head_dim * n_head != hidden:
        raise ValueError("GGUF llama needs head_dim * num_attention_heads == hidden_size")
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise ValueError("only the default RoPE can be written")

    w = gguf.GGUFWriter(str(out), arch="llama")
    w.add_string("general.name", name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(int(file_type))
    tokens, types = synthetic_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_string(SOURCE_SHA256, source_sha256)

    def add(name: str, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a.astype(np.float32))
        if a.ndim == 1 or ggml_type == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, ggml_type), raw_dtype=ggml_type)

    add("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", permute(state[p + "self_attn.q_proj.weight"], n_head))
        add(f"blk.{i}.attn_k.weight", permute(state[p + "self_attn.k_proj.weight"], n_kv))
        add(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    if "lm_head.weight" in state:
        add("output.weight", state["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
