"""Tests of harness_goldens/structure.py: structure.json recorded from HF (kinds and axes, causal, modules
that run more than once, staleness, bit-for-bit reproducibility), the checks that the declared
class fits the config, and the goldens tool (regen.py) writing structure.json for every model a case uses.

Models are tiny random ones built in temporary repositories (a few KB each).
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

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))  # the checkout's harness_goldens (tools/), installed or not

from harness_goldens import hf, structure  # noqa: E402
from harness_goldens.spec import SpecError, load_model  # noqa: E402

LLAMA = """
family: LlamaForCausalLM
source: {random: {seed: 1}}
config:
  vocab_size: 64
  hidden_size: 16
  intermediate_size: 32
  num_hidden_layers: 2
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
  num_hidden_layers: 2
  num_attention_heads: 2
  max_position_embeddings: 32
  type_vocab_size: 2
"""
MODERNBERT = """
family: ModernBertModel
source: {random: {seed: 3}}
config:
  vocab_size: 64
  hidden_size: 16
  intermediate_size: 24
  num_hidden_layers: 2
  num_attention_heads: 2
  max_position_embeddings: 32
  layer_types: [full_attention, sliding_attention]
  local_attention: 4
  pad_token_id: 0
  bos_token_id: 1
  eos_token_id: 2
  cls_token_id: 1
  sep_token_id: 2
"""
BART = """
family: BartModel
source: {random: {seed: 4}}
config:
  vocab_size: 64
  d_model: 16
  encoder_layers: 1
  decoder_layers: 1
  encoder_attention_heads: 2
  decoder_attention_heads: 2
  encoder_ffn_dim: 32
  decoder_ffn_dim: 32
  max_position_embeddings: 32
"""
T5 = """
family: T5ForConditionalGeneration
source: {random: {seed: 5}}
config: {vocab_size: 48, d_model: 16, d_kv: 8, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 2, relative_attention_num_buckets: 8}
"""
WAV2VEC2 = """
family: Wav2Vec2Model
source: {random: {seed: 6}}
config: {vocab_size: 32, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 16, conv_dim: [8], conv_stride: [5], conv_kernel: [10], num_conv_pos_embeddings: 4, num_conv_pos_embedding_groups: 2}
"""
VIT = """
family: ViTForImageClassification
source: {random: {seed: 7}}
config: {hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, image_size: [8, 12], patch_size: 4, num_channels: 3, num_labels: 3}
"""
WHISPER = """
family: WhisperModel
source: {random: {seed: 8}}
config:
  vocab_size: 64
  d_model: 16
  encoder_layers: 1
  decoder_layers: 1
  encoder_attention_heads: 2
  decoder_attention_heads: 2
  encoder_ffn_dim: 32
  decoder_ffn_dim: 32
  num_mel_bins: 8
  max_source_positions: 6
  max_target_positions: 16
  pad_token_id: 0
  bos_token_id: 1
  eos_token_id: 2
  decoder_start_token_id: 1
  suppress_tokens: []
  begin_suppress_tokens: []
"""
CASE = """
model: {model}
inputs:
  input_ids: [[1, 5, 9, 13, 2]]
taps: [logits]
"""


class Repo:
    """A throwaway repository: model specs under cases/models/, optionally a case using one."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        (self.root / "cases" / "models").mkdir(parents=True)

    def spec(self, mid: str, text: str):
        (self.root / "cases" / "models" / f"{mid}.yaml").write_text(textwrap.dedent(text))
        return load_model(self.root, mid)

    def case(self, cid: str, model: str, text: str = CASE):
        f = self.root / "cases" / f"{cid}.yaml"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text.format(model=model))

    def build(self, mid: str, text: str):
        spec = self.spec(mid, text)
        d = self.root / "goldens" / "models" / mid
        hf.build_random(spec, d)
        return spec, d

    def regen(self, *args) -> tuple[int, str]:
        from harness_goldens import regen

        err = io.StringIO()
        env = os.environ.pop("CI", None)
        try:
            with redirect_stderr(err):
                rc = regen.main(["--root", str(self.root), "--quiet", *args])
        finally:
            if env is not None:
                os.environ["CI"] = env
        return rc, err.getvalue()

    def close(self):
        self.tmp.cleanup()


class Axes(unittest.TestCase):
    """Kinds from the two probe runs' shapes, (batch, seq) = (2, 5) then (3, 7)."""

    def kind(self, a, b):
        return structure._axes(a, b, ((2, 5), (3, 7)))

    def test_kinds(self):
        self.assertEqual(self.kind((2, 5, 16), (3, 7, 16)), {"kind": "tokens", "batch_axis": 0, "seq_axis": 1, "shape": [None, None, 16]})
        self.assertEqual(self.kind((1, 5, 8), (1, 7, 8)), {"kind": "positions", "batch_axis": None, "seq_axis": 1, "shape": [1, None, 8]})
        self.assertEqual(self.kind((2, 16), (3, 16)), {"kind": "rows", "batch_axis": 0, "seq_axis": None, "shape": [None, 16]})
        # Gemma 3's q_norm: [batch, heads, seq, head_dim].
        self.assertEqual(self.kind((2, 4, 5, 16), (3, 4, 7, 16)), {"kind": "whole", "batch_axis": 0, "seq_axis": 2, "shape": [None, 4, None, 16]})
        self.assertEqual(self.kind((64, 16), (64, 16))["kind"], "whole")

    def test_every_axis_that_varies_is_null(self):
        # similarity: [batch, batch]; a flattened [batch * seq, hidden].
        self.assertEqual(self.kind((2, 2), (3, 3)), {"kind": "rows", "batch_axis": 0, "seq_axis": None, "shape": [None, None]})
        self.assertEqual(self.kind((10, 16), (21, 16)), {"kind": "whole", "batch_axis": None, "seq_axis": None, "shape": [None, 16]})


    def test_an_encoder_decoder_records_which_sequence_each_axis_follows(self):
        # The decoder's probe ids are one longer (6, 8) than the encoder's (5, 7).
        seqs = {"input_ids": (5, 7), "decoder_input_ids": (6, 8)}
        enc = structure._axes((2, 5, 16), (3, 7, 16), ((2, 5), (3, 7)), seqs)
        dec = structure._axes((2, 6, 16), (3, 8, 16), ((2, 5), (3, 7)), seqs)
        frames = structure._axes((2, 8, 16), (3, 8, 16), ((2, 5), (3, 7)), {"decoder_input_ids": (6, 8)})
        self.assertEqual(enc, {"kind": "tokens", "batch_axis": 0, "seq_axis": 1, "shape": [None, None, 16], "follows": "input_ids"})
        self.assertEqual(dec, {"kind": "tokens", "batch_axis": 0, "seq_axis": 1, "shape": [None, None, 16], "follows": "decoder_input_ids"})
        self.assertEqual(frames, {"kind": "rows", "batch_axis": 0, "seq_axis": None, "shape": [None, 8, 16], "follows": None})


class Record(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repo = Repo()
        cls.llama = structure.record(*cls.repo.build("llama", LLAMA))
        cls.bert = structure.record(*cls.repo.build("bert", BERT))
        cls.modernbert = structure.record(*cls.repo.build("modernbert", MODERNBERT))

    @classmethod
    def tearDownClass(cls):
        cls.repo.close()

    def module(self, s, path):
        return next(m for m in s["modules"] if m["path"] == path)

    def test_kinds_of_a_decoder(self):
        s = self.llama
        self.assertEqual(self.module(s, "model.embed_tokens")["kind"], "tokens")
        self.assertEqual(self.module(s, "model.embed_tokens")["shape"], [None, None, 16])
        rope = self.module(s, "model.rotary_emb")
        self.assertEqual((rope["kind"], rope["shape"], rope["class"]), ("positions", [1, None, 8], "LlamaRotaryEmbedding"))
        logits = self.module(s, "logits")
        self.assertEqual((logits["kind"], logits["class"], logits.get("output")), ("tokens", None, True))
        self.assertNotIn("output", self.module(s, "lm_head"))
        self.assertEqual(s["layers"], {"prefix": "model.layers", "count": 2, "types": None})
        self.assertEqual([i["name"] for i in s["inputs"]], ["input_ids", "attention_mask", "position_ids"])
        self.assertEqual([i["required"] for i in s["inputs"]], [True, False, False])
        self.assertEqual((s["model_type"], s["vocab_size"], s["max_positions"], s["position_offset"]), ("llama", 64, 32, 0))

    def test_order_is_hf_run_module_order(self):
        spec = load_model(self.repo.root, "llama")
        order, _ = hf.run(hf.load(spec, self.repo.root / "goldens/models/llama"), {"input_ids": [[1, 2, 3]]}, None)
        self.assertEqual([m["path"] for m in self.llama["modules"]], order)
        self.assertEqual(order[-4:], ["model", "last_hidden_state", "lm_head", "logits"])

    def test_kinds_of_an_encoder(self):
        s = self.bert
        self.assertEqual(self.module(s, "embeddings.position_embeddings")["kind"], "positions")
        for p in ("pooler", "pooled.cls", "pooled.mean.normalized"):
            self.assertEqual(self.module(s, p)["kind"], "rows", p)
        self.assertNotIn("logits", [m["path"] for m in s["modules"]])
        self.assertIn("token_type_ids", [i["name"] for i in s["inputs"]])
        self.assertEqual(s["type_vocab_size"], 2)
        # BERT's attention dropout is a module whose forward is replaced by a functional call.
        self.assertIn("encoder.layer.0.attention.self.dropout", s["not_run"])
        self.assertEqual(s["not_run"], sorted(s["not_run"]))

    def test_causal_is_measured(self):
        self.assertTrue(self.llama["causal"])
        self.assertFalse(self.bert["causal"])
        self.assertFalse(self.modernbert["causal"])

    def test_modules_that_run_twice_are_repeated_not_modules(self):
        s = self.modernbert
        self.assertEqual(s["repeated"], [{"path": "rotary_emb", "class": "ModernBertRotaryEmbedding", "runs": 2}])
        self.assertNotIn("rotary_emb", [m["path"] for m in s["modules"]])
        self.assertEqual(s["layers"]["types"], ["full_attention", "sliding_attention"])

    def test_reproducible_bit_for_bit(self):
        spec = load_model(self.repo.root, "llama")
        again = structure.structure_bytes(structure.record(spec, self.repo.root / "goldens/models/llama"))
        self.assertEqual(again, structure.structure_bytes(self.llama))
        self.assertTrue(again.endswith(b"}\n"))

    def test_committed_structure_reproduces(self):
        # The committed file of llama-tiny-gqa is what a fresh recording gives (the generator's
        # versions aside, when this runs under other ones).
        spec = load_model(ROOT, "llama-tiny-gqa")
        d = ROOT / "goldens/models/llama-tiny-gqa"
        fresh = structure.record(spec, d)
        committed = json.loads((d / structure.FILE).read_text())
        if committed["generator"] != fresh["generator"]:
            committed.pop("generator"), fresh.pop("generator")
        self.assertEqual(committed, fresh)

    def test_an_input_the_probe_cannot_make_is_named(self):
        repo = Repo()
        try:
            spec, d = repo.build("wav2vec2", WAV2VEC2)
            with self.assertRaises(SpecError) as e:
                structure.record(spec, d)
            self.assertIn("`input_values`, which the harness cannot give yet", str(e.exception))
            self.assertIn("wav2vec2.yaml", str(e.exception))
        finally:
            repo.close()


class NonTokenModels(unittest.TestCase):
    """Probes for models whose forward takes more than token ids: images (pixel_values), audio
    features (input_features), an encoder-decoder's decoder ids (decoder_input_ids)."""

    @classmethod
    def setUpClass(cls):
        cls.repo = Repo()

    @classmethod
    def tearDownClass(cls):
        cls.repo.close()

    def module(self, s, path):
        return next(m for m in s["modules"] if m["path"] == path)

    def test_vision_has_no_vocab_and_is_not_measured_causal(self):
        spec, d = self.repo.build("vit", VIT)
        s = structure.record(spec, d)
        self.assertEqual((s["main_input"], s["vocab_size"], s["causal"], s["max_positions"]), ("pixel_values", None, False, None))
        self.assertEqual(s["inputs"][0], {"name": "pixel_values", "dtype": "float32", "rank": 4, "required": True})
        # image_size [8, 12], patch 4: 2 x 3 patches and [CLS]. The patch count does not vary
        # between the probe runs, so per-patch outputs are `rows` (batch axis only).
        emb = self.module(s, "vit.embeddings")
        self.assertEqual((emb["kind"], emb["batch_axis"], emb["seq_axis"], emb["shape"]), ("rows", 0, None, [None, 7, 16]))
        self.assertEqual(self.module(s, "logits")["shape"], [None, 3])
        self.assertEqual(s["layers"]["count"], 2)
        self.assertEqual(structure.structure_bytes(structure.record(spec, d)), structure.structure_bytes(s))

    def test_encoder_decoder_gets_decoder_ids(self):
        spec, d = self.repo.build("bart", BART)
        s = structure.record(spec, d)
        self.assertTrue(s["is_encoder_decoder"])
        self.assertEqual([(i["name"], i["required"]) for i in s["inputs"] if i["required"]], [("input_ids", True), ("decoder_input_ids", True)])
        self.assertEqual(self.module(s, "decoder")["kind"], "tokens")
        self.assertFalse(s["causal"])  # the last encoder token reaches every decoder position
        # Each side's modules say which ids they follow; the mask of input_ids is not the decoder's.
        self.assertEqual(self.module(s, "encoder.layers.0")["follows"], "input_ids")
        self.assertEqual(self.module(s, "decoder.layers.0")["follows"], "decoder_input_ids")
        self.assertEqual(self.module(s, "decoder.embed_positions")["follows"], "decoder_input_ids")
        self.assertTrue(s["decoder_causal"])
        self.assertEqual(self.module(s, "encoder_last_hidden_state")["follows"], "input_ids")

    def test_a_seq2seq_head_without_a_base_model_takes_last_hidden_state_from_its_decoder(self):
        # T5ForConditionalGeneration's first output is its logits; last_hidden_state is the
        # decoder's output (width d_model, not the vocabulary), recorded after the decoder.
        spec, d = self.repo.build("t5", T5)
        s = structure.record(spec, d)
        last, logits = self.module(s, "last_hidden_state"), self.module(s, "logits")
        self.assertEqual((last["shape"], last["follows"]), ([None, None, 16], "decoder_input_ids"))
        self.assertEqual(logits["shape"], [None, None, 48])
        self.assertEqual(self.module(s, "encoder_last_hidden_state")["follows"], "input_ids")
        self.assertTrue(s["decoder_causal"])

    def test_audio_features(self):
        spec, d = self.repo.build("whisper", WHISPER)
        s = structure.record(spec, d)
        self.assertEqual((s["main_input"], s["causal"]), ("input_features", False))
        self.assertEqual(s["inputs"][0], {"name": "input_features", "dtype": "float32", "rank": 3, "required": True})
        # 2 * max_source_positions frames, halved by the encoder's second convolution.
        self.assertEqual(self.module(s, "encoder")["shape"], [None, 6, 16])
        self.assertEqual((self.module(s, "encoder")["follows"], self.module(s, "decoder")["follows"]), (None, "decoder_input_ids"))
        self.assertTrue(s["decoder_causal"])
        self.assertEqual(self.module(s, "decoder")["kind"], "tokens")
        # The encoder's output is a named output, recorded where the encoder finishes.
        enc = self.module(s, "encoder_last_hidden_state")
        self.assertEqual((enc["output"], enc["kind"], enc["follows"]), (True, "rows", None))
        paths = [m["path"] for m in s["modules"]]
        self.assertLess(paths.index("encoder_last_hidden_state"), paths.index("decoder.layers.0"))


class TiedThroughASubModel(unittest.TestCase):
    """BartForConditionalGeneration ties lm_head to model.shared itself, but the encoder's and
    decoder's embed_tokens through BartModel's own `_tied_weights_keys`: every copy is stored
    once, under model.shared (as save_pretrained does; safetensors refuses tensors sharing
    memory), and loading ties them again."""

    def test_stored_once_and_loaded_tied(self):
        import safetensors.torch
        import torch

        repo = Repo()
        try:
            spec, d = repo.build("bart", BART.replace("family: BartModel", "family: BartForConditionalGeneration"))
            stored = safetensors.torch.load_file(str(d / "model.safetensors"))
            embeddings = sorted(k for k in stored if "shared" in k or "embed_tokens" in k or k.startswith("lm_head"))
            self.assertEqual(embeddings, ["model.shared.weight"])
            model = hf.load(spec, d)
            for k in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
                self.assertTrue(torch.equal(model.get_parameter(k), stored["model.shared.weight"]), k)
            self.assertEqual(structure.record(spec, d)["class"], "BartForConditionalGeneration")
        finally:
            repo.close()


class Stale(unittest.TestCase):
    def test_missing_spec_or_config_change_makes_it_stale(self):
        repo = Repo()
        try:
            spec, d = repo.build("llama", LLAMA)
            f = d / structure.FILE
            self.assertTrue(structure.is_stale(spec, d, f), "missing")
            structure.write_into(spec, d, d)
            self.assertFalse(structure.is_stale(spec, d, f))
            edited = repo.spec("llama", LLAMA + "  rms_norm_eps: 1.0e-5\n")
            self.assertTrue(structure.is_stale(edited, d, f), "spec changed")
            (d / "config.json").write_text((d / "config.json").read_text().replace('"vocab_size": 64', '"vocab_size": 65'))
            self.assertTrue(structure.is_stale(spec, d, f), "config.json changed")
        finally:
            repo.close()


class ClassFitsConfig(unittest.TestCase):
    """Each mismatch is a `file: message (hint: ...)` SpecError before anything is written."""

    def setUp(self):
        self.repo = Repo()

    def tearDown(self):
        self.repo.close()

    def check(self, text: str) -> str:
        spec = self.repo.spec("m", text)
        with self.assertRaises(SpecError) as e:
            structure.check_class(spec)
        msg = str(e.exception)
        # Located at the offending key: `file:line:col: message`.
        self.assertRegex(msg, "^" + re.escape(str(spec.file)) + r":\d+:\d+: ", msg)
        self.assertIn("(hint: ", msg)
        return msg

    def test_unknown_class_has_a_did_you_mean(self):
        msg = self.check(LLAMA.replace("LlamaForCausalLM", "LlamaForCausalLm"))
        self.assertIn("`family: LlamaForCausalLm` is not a model class of transformers", msg)
        self.assertIn("did you mean `LlamaForCausalLM`?", msg)

    def test_a_config_the_config_class_rejects(self):
        msg = self.check(LLAMA.replace("hidden_size: 16", "hidden_size: 17"))
        self.assertIn("config rejected by LlamaConfig", msg)
        self.assertIn("not a multiple of the number of attention heads", msg)
        msg = self.check(LLAMA.replace("hidden_size: 16", "hidden_size: sixteen"))
        self.assertIn("hidden_size", msg)

    def test_model_type_of_another_class(self):
        msg = self.check(LLAMA + "  model_type: mistral\n")
        self.assertIn("config has `model_type: mistral`, which does not fit `family: LlamaForCausalLM`", msg)
        self.assertIn("`family: MistralForCausalLM`", msg)
        msg = self.check(BERT + "  model_type: roberta\n")
        self.assertIn("`family: RobertaModel`", msg)

    def test_architectures_of_another_class(self):
        msg = self.check(LLAMA + "  architectures: [Qwen2ForCausalLM]\n")
        self.assertIn("does not name `family: LlamaForCausalLM`", msg)
        self.assertIn("declare `family: Qwen2ForCausalLM`", msg)

    def test_a_checkpoint_of_another_model_type(self):
        spec = self.repo.spec("ckpt", "family: BertModel\nsource: {path: models/ckpt}\n")
        d = self.repo.root / "models" / "ckpt"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
        with self.assertRaises(SpecError) as e:
            structure.check_class(spec, d)
        self.assertIn("has `model_type: distilbert`, which does not fit `family: BertModel`", str(e.exception))
        self.assertIn("`family: DistilBertModel`", str(e.exception))

    def test_keys_the_config_does_not_read(self):
        msg = self.check(LLAMA + "  sliding_window: 4\n")
        self.assertIn("config key `sliding_window` is not read by LlamaConfig", msg)
        self.assertIn("`family: MistralForCausalLM` reads it", msg)
        # Llama's RoPE ignores partial_rotary_factor (it is stored in rope_parameters unused).
        msg = self.check(LLAMA + "  partial_rotary_factor: 0.5\n")
        self.assertIn("`partial_rotary_factor`", msg)
        self.assertIn("`family: Phi3ForCausalLM`", msg)
        msg = self.check(BERT + "  frobnicate: 1\n  zorp: 2\n")
        self.assertIn("config keys `frobnicate`, `zorp` are not read by BertConfig", msg)
        self.assertIn("no class of this task in transformers reads them all", msg)

    def test_aliases_and_legacy_keys_are_read(self):
        # transformers-4 spellings: rope_theta / rope_scaling (folded into rope_parameters),
        # DistilBERT's attribute_map, ModernBERT's legacy keys converted in __post_init__, and
        # Phi3's partial_rotary_factor and head_dim (read by its modeling code).
        ok = [
            LLAMA + "  rope_theta: 1000.0\n  rope_scaling: {rope_type: linear, factor: 2.0}\n",
            "family: DistilBertModel\nsource: {random: {seed: 1}}\nconfig: {vocab_size: 64, hidden_size: 16, num_attention_heads: 2, num_hidden_layers: 1}\n",
            MODERNBERT.replace("  layer_types: [full_attention, sliding_attention]\n", "  global_attn_every_n_layers: 2\n  global_rope_theta: 1000.0\n"),
            LLAMA.replace("LlamaForCausalLM", "Phi3ForCausalLM") + "  partial_rotary_factor: 0.5\n  head_dim: 8\n  pad_token_id: 0\n",
        ]
        for text in ok:
            spec = self.repo.spec("ok", text)
            self.assertIsNotNone(structure.check_class(spec), text)

    def test_every_committed_model_spec_fits(self):
        for f in sorted((ROOT / "cases" / "models").glob("*.yaml")):
            spec = load_model(ROOT, f.stem)
            d = None if spec.is_random or spec.absent(ROOT) else spec.dir(ROOT)
            structure.check_class(spec, d)

    def test_regen_writes_nothing_for_a_bad_spec(self):
        self.repo.spec("bad", LLAMA + "  sliding_window: 4\n")
        self.repo.case("x/a", "bad")
        rc, err = self.repo.regen()
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"bad.yaml:\d+:\d+: config key `sliding_window` is not read")
        goldens = self.repo.root / "goldens"
        self.assertEqual([p for p in goldens.rglob("*") if p.is_file()] if goldens.exists() else [], [])


class Regen(unittest.TestCase):
    """regen.py writes structure.json with a random model's weights, alone for a
    checkpoint, regenerates it when stale, and --check compares it."""

    def test_random_and_checkpoint_models(self):
        repo = Repo()
        try:
            repo.spec("tiny", LLAMA)
            repo.case("x/a", "tiny")
            # A checkpoint on disk: the same model saved under models/, read through `path:`.
            repo.build("src", BERT)
            shutil.copytree(repo.root / "goldens/models/src", repo.root / "models/ckpt")
            shutil.rmtree(repo.root / "goldens/models/src")
            (repo.root / "cases/models/src.yaml").unlink()
            repo.spec("ckpt", "family: BertModel\nsource: {path: models/ckpt}\n")
            repo.case("x/b", "ckpt", CASE.replace("[logits]", "[last_hidden_state]"))
            rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            models = repo.root / "goldens/models"
            self.assertEqual(sorted(p.name for p in (models / "tiny").iterdir()), ["config.json", "model.safetensors", "provenance.json", "structure.json"])
            self.assertEqual([p.name for p in (models / "ckpt").iterdir()], ["structure.json"])
            s = json.loads((models / "ckpt/structure.json").read_text())
            self.assertEqual((s["model"], s["class"], s["causal"]), ("ckpt", "BertModel", False))
            rc, err = repo.regen("--check")
            self.assertEqual(rc, 0, err)
            self.assertIn("2 models (weights and structure.json) reproduced bit for bit", err)

            # Stale: a missing structure.json is written again (the weights stay byte-identical),
            # and --check names one that differs.
            weights = (models / "tiny/model.safetensors").read_bytes()
            (models / "tiny/structure.json").unlink()
            (models / "ckpt/structure.json").write_text("{}\n")
            rc, err = repo.regen("--check")
            self.assertEqual(rc, 1)
            self.assertIn("goldens/models/tiny/structure.json: missing from the repository", err)
            self.assertIn("goldens/models/ckpt/structure.json: differs from a fresh regeneration", err)
            rc, err = repo.regen()
            self.assertEqual(rc, 0, err)
            self.assertEqual((models / "tiny/model.safetensors").read_bytes(), weights)
            self.assertEqual(json.loads((models / "ckpt/structure.json").read_text())["model"], "ckpt")
            rc, err = repo.regen("--check")
            self.assertEqual(rc, 0, err)

            # --pending: a changed structure.json goes beside the accepted one.
            accepted = (models / "ckpt/structure.json").read_bytes()
            (models / "ckpt/structure.json").write_text("{}\n")
            rc, err = repo.regen("--pending")
            self.assertEqual(rc, 0, err)
            self.assertIn("models/ckpt", err)
            self.assertEqual((models / "ckpt/structure.json").read_text(), "{}\n")
            self.assertEqual((models / "ckpt/structure.json.new").read_bytes(), accepted)
        finally:
            repo.close()


if __name__ == "__main__":
    unittest.main()
