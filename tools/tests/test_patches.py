"""tools/adapters/patches.py: each port-bug kind, on the committed tiny checkpoints
(goldens/models/<id>), computes what the bug computes at the module it names, and nothing before
it changes. Needs torch and transformers (the tools venv)."""

from __future__ import annotations

import json
import sys
import unittest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS / "adapters"))

try:
    import torch
    import torch.nn.functional as F

    from harness_goldens import hf
    from harness_goldens.spec import ModelSpec

    import patches
except ImportError as e:  # pragma: no cover - without the venv
    raise unittest.SkipTest(f"needs the tools venv (torch, transformers): {e}")

MODELS = ROOT / "goldens" / "models"


def load(model_id: str, spec: str = ""):
    d = MODELS / model_id
    family = json.loads((d / "structure.json").read_text())["class"]
    config = json.loads((d / "config.json").read_text())
    m = hf.load(ModelSpec(id=model_id, file=d / "config.json", family=family, source={}, config=config, dtype="float32", digest=""), d)
    if spec:
        patches.apply(m, spec)
    return m


def run(model, inputs: dict, taps: list[str]) -> dict:
    _, arrays = hf.run(model, inputs, taps)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def captured_input(model, module: str, inputs: dict) -> torch.Tensor:
    """The first input of `module` in a forward of `model`."""
    got = {}
    h = model.get_submodule(module).register_forward_hook(lambda _m, a, _o: got.setdefault("x", a[0].detach().clone()))
    run(model, inputs, [])
    h.remove()
    return got["x"]


SEQ = {"input_ids": [[1, 17, 203, 45, 9, 88, 120, 3, 64, 250, 31, 7, 101, 99, 14, 160]]}
BERT = {"input_ids": [[101, 7, 300, 45, 9, 88, 120, 102, 64, 250, 31, 77, 400, 5, 102]], "token_type_ids": [[0] * 8 + [1] * 7]}
PADDED = {
    "input_ids": [[1, 232, 346, 52, 265, 112, 95, 400], [0, 0, 0, 1, 443, 498, 193, 493]],
    "attention_mask": [[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]],
}


def close(a, b, tol=1e-5):
    return torch.allclose(a, b, atol=tol, rtol=tol)


class Parse(unittest.TestCase):
    def test_kinds_modules_and_arguments(self):
        self.assertEqual(
            patches.parse("window::7; heads_swap:a.b:1,2;skip:x"),
            [("window", "", "7"), ("heads_swap", "a.b", "1,2"), ("skip", "x", None)],
        )
        with self.assertRaisesRegex(ValueError, "kind one of"):
            patches.parse("nope:model.norm")
        m = load("llama-tiny-mha")
        with self.assertRaisesRegex(ValueError, "matches no module"):
            patches.apply(m, "skip:model.layers.9.mlp")
        with self.assertRaisesRegex(ValueError, "needs an argument"):
            patches.apply(m, "scale:model.norm")
        with self.assertRaisesRegex(ValueError, "has no bias"):
            patches.apply(m, "bias_drop:model.layers.0.self_attn.q_proj")
        with self.assertRaisesRegex(ValueError, "no attention soft-capping"):
            patches.apply(m, "softcap_off:model.layers.0.self_attn")
        # `*` is one path segment: the input norms of the two layers.
        self.assertEqual(patches.apply(load("llama-tiny-mha"), "scale:model.layers.*.input_layernorm:2"), 2)


class Activations(unittest.TestCase):
    def test_gelu_erf_where_gpt2_uses_tanh(self):
        taps = ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.act"]
        g = run(load("gpt2-tiny"), SEQ, taps)
        b = run(load("gpt2-tiny", "gelu_erf:transformer.h.0.mlp.act"), SEQ, taps)
        self.assertTrue(torch.equal(b["transformer.h.0.mlp.c_fc"], g["transformer.h.0.mlp.c_fc"]))
        self.assertTrue(close(b["transformer.h.0.mlp.act"], F.gelu(g["transformer.h.0.mlp.c_fc"])))
        self.assertFalse(close(b["transformer.h.0.mlp.act"], g["transformer.h.0.mlp.act"], 1e-4))

    def test_gelu_tanh_where_distilbert_uses_erf(self):
        lin1, act = "distilbert.transformer.layer.0.ffn.lin1", "distilbert.transformer.layer.0.ffn.activation"
        b = run(load("distilbert-tiny", f"gelu_tanh:{act}"), BERT, [lin1, act])
        self.assertTrue(close(b[act], F.gelu(b[lin1], approximate="tanh")))

    def test_gate_up_swapped(self):
        gu, act = "model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.activation_fn"
        g = run(load("phi3-tiny"), SEQ, [gu, act])
        b = run(load("phi3-tiny", "gate_up_swap:model.layers.*.mlp"), SEQ, [gu, act])
        self.assertTrue(torch.equal(b[gu], g[gu]))
        _, up = g[gu].chunk(2, dim=-1)
        self.assertTrue(close(b[act], F.silu(up)))


class Linear(unittest.TestCase):
    def test_bias_drop(self):
        q = "model.layers.0.self_attn.q_proj"
        m = load("qwen2-tiny")
        g = run(m, SEQ, [q])
        b = run(load("qwen2-tiny", f"bias_drop:{q}"), SEQ, [q])
        self.assertTrue(close(b[q], g[q] - m.get_submodule(q).bias.detach()))

    def test_transpose_weight_linear_and_conv1d(self):
        q = "distilbert.transformer.layer.1.attention.q_lin"
        m = load("distilbert-tiny", f"transpose_weight:{q}")
        x = captured_input(m, q, BERT)
        lin = m.get_submodule(q)
        self.assertTrue(close(run(m, BERT, [q])[q], x @ lin.weight.detach() + lin.bias.detach()))
        c = "transformer.h.0.attn.c_proj"
        m = load("gpt2-tiny", f"transpose_weight:{c}")
        x = captured_input(m, c, SEQ)
        conv = m.get_submodule(c)
        self.assertTrue(close(run(m, SEQ, [c])[c], x @ conv.weight.detach().t() + conv.bias.detach()))
        with self.assertRaisesRegex(ValueError, "square"):
            load("gpt2-tiny", "transpose_weight:transformer.h.0.mlp.c_fc")

    def test_heads_swap_and_head_scale(self):
        k = "model.layers.1.self_attn.k_proj"
        g = run(load("llama-tiny-mha"), SEQ, [k])[k].reshape(1, 16, 4, 16)
        b = run(load("llama-tiny-mha", f"heads_swap:{k}:1,2"), SEQ, [k])[k].reshape(1, 16, 4, 16)
        self.assertTrue(torch.equal(b[..., [0, 3], :], g[..., [0, 3], :]))
        self.assertTrue(torch.equal(b[..., 1, :], g[..., 2, :]) and torch.equal(b[..., 2, :], g[..., 1, :]))
        s = run(load("llama-tiny-mha", f"head_scale:{k}:3,2.0"), SEQ, [k])[k].reshape(1, 16, 4, 16)
        self.assertTrue(close(s[..., 3, :], 2 * g[..., 3, :]) and torch.equal(s[..., :3, :], g[..., :3, :]))


class Positions(unittest.TestCase):
    def test_shift_positions_on_learned_positions(self):
        g = run(load("gpt2-tiny"), SEQ, ["transformer.wpe"])["transformer.wpe"]
        b = run(load("gpt2-tiny", "shift_positions:transformer.wpe:1"), SEQ, ["transformer.wpe"])["transformer.wpe"]
        self.assertTrue(torch.equal(b[:, :-1], g[:, 1:]))

    def test_shift_positions_on_rope(self):
        t = "model.rotary_emb"
        g = run(load("qwen2-tiny"), SEQ, [t])[t]
        b = run(load("qwen2-tiny", f"shift_positions:{t}:1"), SEQ, [t])[t]
        self.assertTrue(close(b[:, :-1], g[:, 1:]))

    def test_rope_theta(self):
        t = "model.rotary_emb"
        g = run(load("llama-tiny-gqa"), SEQ, [t])[t]
        same = run(load("llama-tiny-gqa", f"rope_theta:{t}:500000"), SEQ, [t])[t]
        self.assertTrue(close(same, g))
        b = run(load("llama-tiny-gqa", f"rope_theta:{t}:10000"), SEQ, [t])[t]
        inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
        want = torch.cat([torch.arange(16).float()[:, None] * inv] * 2, dim=-1).cos()
        self.assertTrue(close(b[0], want))


class Attention(unittest.TestCase):
    def test_mask_ignore_changes_only_the_left_padded_row(self):
        o = "model.layers.0.self_attn.o_proj"
        g = run(load("qwen2-tiny"), PADDED, [o])[o]
        b = run(load("qwen2-tiny", "mask_ignore:model"), PADDED, [o])[o]
        self.assertTrue(close(b[0], g[0]))
        self.assertFalse(close(b[1, 3:], g[1, 3:], 1e-3))

    def test_kv_group_tile_and_restores_repeat_kv(self):
        import transformers.models.mistral.modeling_mistral as mm

        orig = mm.repeat_kv
        taps = ["model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"]
        g = run(load("mistral-tiny-swa"), SEQ, taps)
        b = run(load("mistral-tiny-swa", "kv_group:model.layers.*.self_attn:tile"), SEQ, taps)
        self.assertIs(mm.repeat_kv, orig)
        self.assertTrue(torch.equal(b[taps[0]], g[taps[0]]))
        self.assertFalse(close(b[taps[1]], g[taps[1]], 1e-3))
        # Query heads 0, 2, 5 and 7 read the same kv head under both mappings (8 heads, 2 kv):
        # through o_proj's inverse, only heads 1, 3, 4 and 6 differ.
        w = load("mistral-tiny-swa").get_submodule(taps[1]).weight.detach().double()
        xg = torch.linalg.solve(w, g[taps[1]][0].double().T).T.reshape(16, 8, 8)
        xb = torch.linalg.solve(w, b[taps[1]][0].double().T).T.reshape(16, 8, 8)
        diff = (xb - xg).abs().amax(dim=(0, 2))
        self.assertEqual([h for h in range(8) if diff[h] > 1e-4], [1, 3, 4, 6])

    def test_attn_scale_softcap_and_norm_on_gemma2(self):
        o, n = "model.layers.0.self_attn.o_proj", "model.layers.0.input_layernorm"
        m = load("gemma2-tiny")
        g = run(m, SEQ, [o, n])
        same = run(load("gemma2-tiny", f"attn_scale:model.layers.*.self_attn:{24 ** -0.5}"), SEQ, [o])
        self.assertTrue(close(same[o], g[o]))
        for spec in ("attn_scale:model.layers.*.self_attn:0.25", "softcap_off:model.layers.*.self_attn"):
            b = run(load("gemma2-tiny", spec), SEQ, [o, n])
            self.assertTrue(torch.equal(b[n], g[n]), spec)
            self.assertFalse(close(b[o], g[o], 1e-3), spec)
        b = run(load("gemma2-tiny", f"norm_plus_one:{n}"), SEQ, [n])[n]
        w = m.get_submodule(n).weight.detach()
        self.assertTrue(close(b, g[n] * w / (1 + w), 1e-4))

    def test_window(self):
        o = "model.layers.0.self_attn.o_proj"
        g = run(load("mistral-tiny-swa"), SEQ, [o])[o]
        self.assertTrue(close(run(load("mistral-tiny-swa", "window::6"), SEQ, [o])[o], g))
        b = run(load("mistral-tiny-swa", "window::7"), SEQ, [o])[o]
        self.assertTrue(close(b[:, :6], g[:, :6]))
        self.assertFalse(close(b[:, 6:], g[:, 6:], 1e-3))
        # ModernBERT: the half-window (config.sliding_window = local_attention // 2).
        w = "layers.1.attn.Wo"
        g = run(load("modernbert-tiny"), BERT, [w])[w]
        b = run(load("modernbert-tiny", "window::8"), BERT, [w])[w]
        self.assertFalse(close(b, g, 1e-3))


class Misc(unittest.TestCase):
    def test_round_keeps_reduced_precision(self):
        d = "model.layers.0.mlp.down_proj"
        g = run(load("llama-tiny-mha"), SEQ, [d])[d]
        for kind, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("round", torch.bfloat16)):
            spec = f"{kind}:{d}" + (":bfloat16" if kind == "round" else "")
            b = run(load("llama-tiny-mha", spec), SEQ, [d])[d]
            self.assertTrue(torch.equal(b, g.to(dt).float()), kind)

    def test_dropout_on_differs_between_runs(self):
        m = load("gpt-neox-tiny", "dropout_on:gpt_neox.emb_dropout:0.1")
        a = run(m, SEQ, ["gpt_neox.emb_dropout"])["gpt_neox.emb_dropout"]
        b = run(m, SEQ, ["gpt_neox.emb_dropout"])["gpt_neox.emb_dropout"]
        self.assertFalse(torch.equal(a, b))

    def test_pool_last_and_token_types_off(self):
        m = load("bert-tiny")
        g = run(m, BERT, ["last_hidden_state", "pooler.dense", "embeddings.token_type_embeddings"])
        b = run(load("bert-tiny", "pool_last:pooler"), BERT, ["pooler.dense"])["pooler.dense"]
        dense = m.get_submodule("pooler.dense")
        self.assertTrue(close(b, dense(g["last_hidden_state"][:, -1]).detach()))
        t = run(load("bert-tiny", "token_types_off:embeddings"), BERT, ["embeddings.token_type_embeddings"])
        t = t["embeddings.token_type_embeddings"]
        self.assertTrue(torch.equal(t[0], g["embeddings.token_type_embeddings"][0, :1].expand(15, -1)))

    def test_parallel_residual_off(self):
        taps = ["gpt_neox.layers.0", "gpt_neox.layers.0.post_attention_dropout", "gpt_neox.layers.0.post_attention_layernorm"]
        m = load("gpt-neox-tiny")
        g = run(m, SEQ, taps + ["gpt_neox.emb_dropout"])
        b = run(load("gpt-neox-tiny", "parallel_residual_off:gpt_neox.layers.*"), SEQ, taps)
        ln = m.get_submodule(taps[2])
        want = ln(g["gpt_neox.emb_dropout"] + g[taps[1]]).detach()
        self.assertTrue(close(b[taps[2]], want))
        self.assertTrue(torch.equal(b[taps[1]], g[taps[1]]))
        with self.assertRaisesRegex(ValueError, "parallel-residual"):
            load("llama-tiny-mha", "parallel_residual_off:model.layers.*")

    def test_eps_skip_and_scale(self):
        n = "embeddings.LayerNorm"
        m = load("bert-tiny")
        g = run(m, BERT, ["embeddings.word_embeddings", n])
        x = captured_input(m, n, BERT)
        ln = m.get_submodule(n)
        b = run(load("bert-tiny", f"eps:{n}:0.1"), BERT, [n])[n]
        self.assertTrue(close(b, F.layer_norm(x, (64,), ln.weight, ln.bias, 0.1).detach()))
        self.assertTrue(torch.equal(run(load("bert-tiny", f"skip:{n}"), BERT, [n])[n], x))
        self.assertTrue(close(run(load("bert-tiny", f"scale:{n}:1.5"), BERT, [n])[n], 1.5 * g[n]))


class Engine(unittest.TestCase):
    """hf_patched.py's forward without a patch is the goldens' forward."""

    def test_unpatched_forward_reproduces_a_golden_bit_for_bit(self):
        import numpy as np

        import hf_patched

        e = hf_patched.HfPatched()
        d = MODELS / "gpt2-tiny"
        e.load({"id": "gpt2-tiny", "class": "GPT2LMHeadModel", "dir": str(d), "config": {}, "dtype": "float32"}, {})
        ids = np.array([[1, 12, 344, 469, 310, 128, 228, 250, 218, 68, 436, 198, 8, 401, 11, 124]])
        out = e.forward({"input_ids": ids, "position_ids": np.arange(16)[None]}, [{"hf": "logits", "engine": None}], {}, None)
        golden = np.load(ROOT / "goldens" / "gpt2" / "sequence" / "logits.npy")
        self.assertTrue(np.array_equal(out["logits"], golden))


if __name__ == "__main__":
    unittest.main()
