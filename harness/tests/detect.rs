//! The comparison can fail, and fails at the right place.

mod common;

use std::sync::Arc;

use common::TempRepo;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::golden::sha256_file;
use harness::report::{TapStatus, Verdict};
use harness::tensor::{Tensor, read_npy, write_npy};

/// Add `delta` to element `index` of a golden and re-sign the manifest, as if the reference had
/// produced that value.
fn perturb_golden(repo: &TempRepo, case: &str, tap: &str, index: usize, delta: f32, resign: bool) {
    let path = repo.path(&format!("goldens/{case}/{tap}.npy"));
    let t = read_npy(&path, None).unwrap();
    let shape = t.shape().to_vec();
    let mut v = t.into_vec();
    v[index] += delta;
    write_npy(&path, &Tensor::new(shape, v).unwrap()).unwrap();
    if resign {
        let mpath = repo.path(&format!("goldens/{case}/manifest.json"));
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        for e in m["taps"].as_array_mut().unwrap() {
            if e["name"] == tap {
                e["sha256"] = sha256_file(&path).unwrap().into();
            }
        }
        std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }
}

#[test]
fn reference_passes_unmodified() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&r));
}

#[test]
fn perturbed_golden_fails_at_that_tap_and_index() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    // [1, 12, 64]: element 7*64 + 5 is token 7, channel 5.
    perturb_golden(&repo, "llama/mha", "model.layers.1.mlp", 7 * 64 + 5, 0.25, true);
    let r = repo.run("llama/mha", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Fail);
    let t = r.first_divergent_tap().unwrap();
    assert_eq!(t.name, "model.layers.1.mlp");
    assert_eq!(t.max_abs_index.as_deref(), Some(&[0, 7, 5][..]));
    assert_eq!(t.metrics.as_ref().unwrap().mismatches, 1);
    // Only that tap fails: the golden changed, the engine did not.
    let failing: Vec<_> = r.taps.iter().filter(|t| !t.status.is_pass()).map(|t| t.name.as_str()).collect();
    assert_eq!(failing, ["model.layers.1.mlp"]);
    let text = harness::report::terminal::render(&r);
    assert!(text.contains("first divergence: model.layers.1.mlp (max_abs 2.50e-1 at [0,7,5]"), "{text}");
    // A project without harness.toml: the default rerun command.
    assert!(text.contains("rerun: cargo test --test cases -- --exact 'reference::llama/mha'"), "{text}");
}

#[test]
fn perturbation_within_tolerance_passes() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    perturb_golden(&repo, "llama/mha", "model.layers.1.mlp", 3, 1e-6, true);
    assert_eq!(repo.run("llama/mha", "reference", vec![]).verdict, Verdict::Pass);
}

#[test]
fn golden_edited_behind_the_manifest_is_an_error() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    perturb_golden(&repo, "llama/mha", "logits", 0, 1.0, false);
    let r = repo.run("llama/mha", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Error);
    let t = r.taps.iter().find(|t| t.name == "logits").unwrap();
    let TapStatus::Error { message } = &t.status else { panic!("{:?}", t.status) };
    assert!(message.contains("logits.npy") && message.contains("does not match the manifest"), "{message}");
    // An integrity error says nothing about the model: no hints, no per-layer "added" error.
    assert!(r.hints.is_empty(), "{:?}", r.hints);
    let repo = TempRepo::with_cases(&["llama/padded-batch"]);
    perturb_golden(&repo, "llama/padded-batch", "model.layers.0.self_attn", 0, 1.0, false);
    let r = repo.run("llama/padded-batch", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Error);
    assert!(r.hints.is_empty(), "{:?}", r.hints);
    assert!(r.taps.iter().all(|t| t.added.is_none()), "{}", harness::report::terminal::render(&r));
}

fn weight_mutant(name: &str, index: usize) -> Arc<dyn harness::engine::Engine> {
    Arc::new(ReferenceEngine::mutant("perturbed", Mutation::PerturbWeight { name: name.into(), index, delta: 0.5 }))
}

/// One weight changed: the first tap that reads it fails and every tap before it passes.
fn assert_first_use(weight: &str, first_tap: &str) {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "perturbed", vec![weight_mutant(weight, 5)]);
    assert_eq!(r.verdict, Verdict::Fail);
    let i = r.first_divergence.unwrap();
    assert_eq!(r.taps[i].name, first_tap, "{}", harness::report::terminal::render(&r));
    assert!(r.taps[..i].iter().all(|t| t.status.is_pass()));
    assert!(i > 0, "taps before the first use are compared too");
}

#[test]
fn perturbed_weight_fails_at_its_first_use() {
    assert_first_use("model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj");
    assert_first_use("model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.v_proj");
    assert_first_use("model.layers.1.post_attention_layernorm.weight", "model.layers.1.post_attention_layernorm");
}

#[test]
fn engine_failure_is_reported_not_panicked() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "perturbed", vec![weight_mutant("no.such.weight", 0)]);
    assert_eq!(r.verdict, Verdict::Error);
    assert!(r.error.as_deref().unwrap().contains("no weight `no.such.weight`"), "{:?}", r.error);
}

#[test]
#[ignore = "prints a sample report for docs/diagnosis.md"]
fn print_sample_report() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "perturbed", vec![weight_mutant("model.layers.1.mlp.up_proj.weight", 5)]);
    println!("{}", harness::report::terminal::render(&r));
}

/// An engine written here, independently of the detectors: the reference engine's outputs with
/// `alter(tap, index in the tap, last-axis width, value)` applied to every element.
type Alter = fn(&str, usize, usize, f32) -> f32;

struct Altered {
    name: &'static str,
    alter: Alter,
}

struct AlteredModel(Box<dyn harness::engine::LoadedModel>, Alter);

impl harness::engine::Engine for Altered {
    fn name(&self) -> &str {
        self.name
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, m: &harness::case::ModelSpec) -> harness::Result<Box<dyn harness::engine::LoadedModel>> {
        Ok(Box::new(AlteredModel(ReferenceEngine::new().load(m)?, self.alter)))
    }
}

impl harness::engine::LoadedModel for AlteredModel {
    fn run(&self, inputs: &harness::case::Inputs, taps: &[&str]) -> harness::Result<harness::engine::Outputs> {
        let out = self.0.run(inputs, taps)?;
        Ok(out
            .into_iter()
            .map(|(k, t)| {
                let shape = t.shape().to_vec();
                let w = *shape.last().unwrap_or(&1);
                let data = t.data().iter().enumerate().map(|(i, &x)| (self.1)(&k, i, w, x)).collect();
                (k, Tensor::new(shape, data).unwrap())
            })
            .collect())
    }
}

/// Every output rounded to bfloat16 (round to nearest even): a reduced-precision engine.
fn bf16(_: &str, _: usize, _: usize, x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

#[test]
fn reduced_precision_is_named_as_such_and_not_as_a_position_bug() {
    // (float16 output rounding alone, 4.9e-4 relative, is within the default rtol 1e-3.)
    for case in ["llama/mha", "bert/sequence", "gpt2/sequence"] {
        let name = "bf16-round";
        let repo = TempRepo::with_cases(&[case]);
        let r = repo.run(case, name, vec![Arc::new(Altered { name, alter: bf16 })]);
        let text = harness::report::terminal::render(&r);
        assert_eq!(r.verdict, Verdict::Fail, "{text}");
        assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::ReducedPrecision, "{name}: {text}");
        assert!(r.hints[0].message.contains("reduced-precision rounding"), "{text}");
    }
    // A structured bug with a small error is not called reduced precision.
    let repo = TempRepo::with_cases(&["bert/sequence"]);
    let r = repo.run(
        "bert/sequence",
        "mutant",
        vec![Arc::new(ReferenceEngine::mutant("mutant", Mutation::LayerNormEps(1e-2)))],
    );
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(
        !r.hints.iter().any(|h| h.kind == harness::diagnose::HintKind::ReducedPrecision),
        "{}",
        harness::report::terminal::render(&r)
    );
    assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::RowScale, "{}", harness::report::terminal::render(&r));
    // GPT-2's LayerNorms have biases (random in gpt2-tiny): a factor per token only once the
    // bias is taken out.
    let repo = TempRepo::with_cases(&["gpt2/sequence"]);
    let eps = Arc::new(ReferenceEngine::mutant("mutant", Mutation::LayerNormEps(1e-2)));
    let r = repo.run("gpt2/sequence", "mutant", vec![eps]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::RowScale, "{text}");
    assert!(r.hints[0].message.contains("with `transformer.h.0.ln_1.bias` taken out"), "{text}");
}

/// An error that starts small: every tap from layer 0 on is scaled by 1 + 5e-5 (inside the
/// tolerance, hundreds of times the float32 noise floor), from layer 1 on by 1 + 1e-2.
fn drift(tap: &str, _: usize, _: usize, x: f32) -> f32 {
    let f = if tap.starts_with("model.layers.0") {
        1.0 + 5e-5
    } else if tap.starts_with("model.embed") {
        1.0
    } else {
        1.0 + 1e-2
    };
    x * f
}

#[test]
fn where_the_error_starts_is_noted_before_the_first_divergence() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "drift", vec![Arc::new(Altered { name: "drift", alter: drift })]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert!(r.first_divergent_tap().unwrap().name.starts_with("model.layers.1"), "{text}");
    let note = r.notes.iter().find(|n| n.starts_with("the error starts before")).unwrap_or_else(|| panic!("{text}"));
    assert!(note.contains("at `model.layers.0.input_layernorm`"), "{note}");
    // The reference engine itself: no such note.
    let r = repo.run("llama/mha", "reference", vec![]);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

/// An engine whose RoPE table is one position ahead (position i holds golden position i + 1),
/// written here: the per-position tap gets the pattern analysis token taps get.
struct RopeAhead;
struct RopeAheadModel(Box<dyn harness::engine::LoadedModel>);

impl harness::engine::Engine for RopeAhead {
    fn name(&self) -> &str {
        "rope-ahead"
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, m: &harness::case::ModelSpec) -> harness::Result<Box<dyn harness::engine::LoadedModel>> {
        Ok(Box::new(RopeAheadModel(ReferenceEngine::new().load(m)?)))
    }
}

impl harness::engine::LoadedModel for RopeAheadModel {
    fn run(&self, inputs: &harness::case::Inputs, taps: &[&str]) -> harness::Result<harness::engine::Outputs> {
        // One more position than asked, then drop the first: position i is golden position i + 1.
        let mut longer = inputs.clone();
        let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
        let mut ids = Vec::new();
        for r in 0..b {
            ids.extend_from_slice(inputs.input_ids.row(r));
            ids.push(1);
        }
        longer.input_ids = harness::case::IdMatrix { batch: b, seq: s + 1, data: ids };
        longer.attention_mask = None;
        let ahead = self.0.run(&longer, &["model.rotary_emb"])?;
        let mut out = self.0.run(inputs, taps)?;
        let t = &ahead["model.rotary_emb"];
        let w = t.shape()[2];
        let data = t.data()[w..].to_vec();
        out.insert("model.rotary_emb".into(), Tensor::new(vec![1, s, w], data).unwrap());
        Ok(out)
    }
}

#[test]
fn a_position_table_off_by_one_is_named_on_the_position_tap() {
    let repo = TempRepo::with_cases(&["llama/long-prompt"]);
    let r = repo.run("llama/long-prompt", "rope-ahead", vec![Arc::new(RopeAhead)]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.first_divergent_tap().unwrap().name, "model.rotary_emb", "{text}");
    let h = &r.hints[0];
    assert_eq!(h.kind, harness::diagnose::HintKind::TokenMisalignment, "{text}");
    assert!(h.message.contains("golden token i+1"), "{text}");
}

/// A small error spread over every channel (0.9 of the tolerance, signs alternating) that
/// crosses it in two channels only: no "only some channels are wrong, the others match" claim,
/// since the others do not match.
fn spread(tap: &str, i: usize, w: usize, x: f32) -> f32 {
    if tap.starts_with("model.embed") {
        return x;
    }
    let allowed = 1e-4 + 1e-3 * x.abs();
    let c = i % w;
    let size = if c == 3 || c == 17 { 1.5 } else { 0.9 };
    let sign = if (i * 2654435761usize) % 7 < 3 { -1.0 } else { 1.0 };
    x + sign * size * allowed
}

#[test]
fn spread_drift_is_not_called_some_channels() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "spread", vec![Arc::new(Altered { name: "spread", alter: spread })]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert!(
        !r.hints.iter().any(|h| matches!(
            h.kind,
            harness::diagnose::HintKind::SomeChannels | harness::diagnose::HintKind::SomeHeads
        )),
        "{text}"
    );
}

/// A bias dropped at one projection: every token of `o_proj` off by the same per-channel amount.
fn bias_dropped(tap: &str, i: usize, w: usize, x: f32) -> f32 {
    if tap == "model.layers.0.self_attn.o_proj" { x - 0.02 * (((i % w) * 7 % 11) as f32 - 5.0) } else { x }
}

/// A norm weight applied as `w` instead of `1 + w`: each channel scaled by its own factor.
fn norm_weight_wrong(tap: &str, i: usize, w: usize, x: f32) -> f32 {
    if tap == "model.layers.0.input_layernorm" { x * (0.6 + 0.8 * ((i % w) * 5 % 13) as f32 / 13.0) } else { x }
}

#[test]
fn per_channel_offsets_and_scales_are_named() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    for (name, alter, kind, tap) in [
        (
            "bias-dropped",
            bias_dropped as Alter,
            harness::diagnose::HintKind::ChannelOffset,
            "model.layers.0.self_attn.o_proj",
        ),
        (
            "norm-w",
            norm_weight_wrong as Alter,
            harness::diagnose::HintKind::ChannelScale,
            "model.layers.0.input_layernorm",
        ),
    ] {
        let r = repo.run("llama/mha", name, vec![Arc::new(Altered { name, alter })]);
        let text = harness::report::terminal::render(&r);
        assert_eq!(r.verdict, Verdict::Fail, "{text}");
        assert_eq!(r.taps[r.first_divergence.unwrap()].name, tap, "{text}");
        assert_eq!(r.hints[0].kind, kind, "{name}: {text}");
    }
    // bf16 rounding is noise, not a per-channel pattern.
    let r = repo.run("llama/mha", "bf16-round", vec![Arc::new(Altered { name: "bf16-round", alter: bf16 })]);
    assert!(
        !r.hints.iter().any(|h| matches!(
            h.kind,
            harness::diagnose::HintKind::ChannelOffset | harness::diagnose::HintKind::ChannelScale
        )),
        "{}",
        harness::report::terminal::render(&r)
    );
}

/// An engine written here, independently of the detectors: the reference engine's outputs with
/// one tap recomputed from others (`rewire`), as a port that wires a module wrongly computes it.
type Rewire = fn(&harness::case::ModelSpec, &mut harness::engine::Outputs);

struct Rewired {
    name: &'static str,
    rewire: Rewire,
}

struct RewiredModel(Box<dyn harness::engine::LoadedModel>, harness::case::ModelSpec, Rewire);

impl harness::engine::Engine for Rewired {
    fn name(&self) -> &str {
        self.name
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, m: &harness::case::ModelSpec) -> harness::Result<Box<dyn harness::engine::LoadedModel>> {
        Ok(Box::new(RewiredModel(ReferenceEngine::new().load(m)?, m.clone(), self.rewire)))
    }
}

impl harness::engine::LoadedModel for RewiredModel {
    fn run(&self, inputs: &harness::case::Inputs, taps: &[&str]) -> harness::Result<harness::engine::Outputs> {
        let mut out = self.0.run(inputs, taps)?;
        (self.2)(&self.1, &mut out);
        Ok(out)
    }
}

fn tensor(out: &harness::engine::Outputs, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = &out[name];
    (t.shape().to_vec(), t.data().to_vec())
}

/// Llama's post-attention norm skipped: it passes on its input, `x + attention(x)`.
fn norm_skipped(_: &harness::case::ModelSpec, out: &mut harness::engine::Outputs) {
    let (shape, x) = tensor(out, "model.layers.0");
    let (_, a) = tensor(out, "model.layers.1.self_attn");
    let stream = x.iter().zip(&a).map(|(x, a)| x + a).collect();
    out.insert("model.layers.1.post_attention_layernorm".into(), Tensor::new(shape, stream).unwrap());
}

/// Gemma 3's per-head query norm skipped: it passes on the query projection, split into heads
/// (`[b, s, h*d]` to `[b, h, s, d]`).
fn q_norm_skipped(_: &harness::case::ModelSpec, out: &mut harness::engine::Outputs) {
    let (shape, q) = tensor(out, "model.layers.0.self_attn.q_proj");
    let (heads_shape, _) = tensor(out, "model.layers.0.self_attn.q_norm");
    let (s, h, d) = (shape[1], heads_shape[1], heads_shape[3]);
    let mut split = vec![0f32; q.len()];
    for t in 0..s {
        for head in 0..h {
            for i in 0..d {
                split[(head * s + t) * d + i] = q[t * h * d + head * d + i];
            }
        }
    }
    out.insert("model.layers.0.self_attn.q_norm".into(), Tensor::new(heads_shape, split).unwrap());
}

/// BERT's pooler fed the last token instead of [CLS]: `dense(encoder[:, -1])`.
fn pooler_last(m: &harness::case::ModelSpec, out: &mut harness::engine::Outputs) {
    let bytes = std::fs::read(m.dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let (w, b) = (f32s("pooler.dense.weight"), f32s("pooler.dense.bias"));
    let (shape, h) = tensor(out, "encoder");
    let (s, n) = (shape[1], shape[2]);
    let last = &h[(s - 1) * n..s * n];
    let y = (0..n).map(|o| b[o] + (0..n).map(|i| w[o * n + i] * last[i]).sum::<f32>()).collect();
    out.insert("pooler.dense".into(), Tensor::new(vec![1, n], y).unwrap());
}

#[test]
fn a_skipped_module_and_a_pooler_on_the_wrong_token_are_named_from_the_data() {
    use harness::diagnose::HintKind;
    for (case, name, rewire, tap, kind, says) in [
        (
            "llama/mha",
            "norm-skipped",
            norm_skipped as Rewire,
            "model.layers.1.post_attention_layernorm",
            HintKind::ModuleSkipped,
            "`model.layers.0` + `model.layers.1.self_attn` (the residual stream",
        ),
        (
            "gemma3/sequence",
            "q-norm-skipped",
            q_norm_skipped as Rewire,
            "model.layers.0.self_attn.q_norm",
            HintKind::ModuleSkipped,
            "equals the golden `model.layers.0.self_attn.q_proj` split into heads",
        ),
        (
            "bert/sequence",
            "pooler-last",
            pooler_last as Rewire,
            "pooler.dense",
            HintKind::TokenMisalignment,
            "applied to the last token of `encoder`, the golden to the first token ([CLS])",
        ),
    ] {
        let repo = TempRepo::with_cases(&[case]);
        let r = repo.run(case, name, vec![Arc::new(Rewired { name, rewire })]);
        let text = harness::report::terminal::render(&r);
        assert_eq!(r.verdict, Verdict::Fail, "{text}");
        assert_eq!(r.taps[r.first_divergence.unwrap()].name, tap, "{text}");
        assert_eq!(r.hints[0].kind, kind, "{name}: {text}");
        assert!(r.hints[0].message.contains(says), "{name}: {text}");
    }
}

/// A rotary cos table (`[1, seq, d]`, HF's half-split layout) computed here with `theta`,
/// frequencies times `scale`, pairs `interleaved` or not; other taps untouched.
fn rope_cos(tap: &str, i: usize, d: usize, x: f32, theta: f64, scale: f64, interleaved: bool) -> f32 {
    if tap != "model.rotary_emb" {
        return x;
    }
    let (p, j) = ((i / d) as f64, i % d);
    let k = if interleaved { j / 2 } else { j % (d / 2) };
    (p * scale * theta.powf(-2.0 * k as f64 / d as f64)).cos() as f32
}

fn rope_base_10k(t: &str, i: usize, d: usize, x: f32) -> f32 {
    rope_cos(t, i, d, x, 1e4, 1.0, false)
}

fn rope_scaled(t: &str, i: usize, d: usize, x: f32) -> f32 {
    rope_cos(t, i, d, x, 1e6, 0.25, false)
}

fn rope_interleaved(t: &str, i: usize, d: usize, x: f32) -> f32 {
    rope_cos(t, i, d, x, 1e6, 1.0, true)
}

#[test]
fn a_rotary_table_names_its_base_its_scaling_or_its_pair_layout() {
    // qwen3-tiny-gqa: rope_theta 1e6, head_dim 16.
    let repo = TempRepo::with_cases(&["qwen3/sequence"]);
    for (name, alter, says) in [
        ("rope-10k", rope_base_10k as Alter, "base theta ~ 10000 where the golden's is ~ 1000000"),
        ("rope-scaled", rope_scaled as Alter, "the golden's times 0.2500: a linear RoPE scaling factor"),
        ("rope-interleaved", rope_interleaved as Alter, "the RoPE pairs are interleaved"),
    ] {
        let r = repo.run("qwen3/sequence", name, vec![Arc::new(Altered { name, alter })]);
        let text = harness::report::terminal::render(&r);
        assert_eq!(r.taps[r.first_divergence.unwrap()].name, "model.rotary_emb", "{text}");
        assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::ErrorGrowsWithPosition, "{name}: {text}");
        assert!(r.hints[0].message.contains(says), "{name}: {text}");
    }
}

/// Large, structureless noise on one tap: nothing a detector knows.
fn scrambled(tap: &str, i: usize, _: usize, x: f32) -> f32 {
    if tap == "model.layers.1.mlp.down_proj" { x + 0.3 * ((i as f32 * 12.9898).sin() * 43758.547).fract() } else { x }
}

#[test]
fn an_error_no_detector_fits_says_no_pattern_found() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let r = repo.run("llama/mha", "scrambled", vec![Arc::new(Altered { name: "scrambled", alter: scrambled })]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.taps[r.first_divergence.unwrap()].name, "model.layers.1.mlp.down_proj", "{text}");
    assert!(r.hints.is_empty(), "{text}");
    assert!(text.contains("what it looks like: no pattern found"), "{text}");
}

/// An engine that does not expose the modules inside layer 0's MLP (fused): the reference with
/// the exact GELU where GPT-2 uses the tanh approximation.
struct FusedMlp;
struct FusedMlpModel(Box<dyn harness::engine::LoadedModel>, Vec<String>);

impl harness::engine::Engine for FusedMlp {
    fn name(&self) -> &str {
        "fused-mlp"
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, m: &harness::case::ModelSpec) -> harness::Result<Box<dyn harness::engine::LoadedModel>> {
        let inner = ReferenceEngine::mutant("gelu-erf", Mutation::GeluErf).load(m)?;
        let taps =
            m.structure.modules.iter().map(|t| t.path.clone()).filter(|p| !p.starts_with("transformer.h.0.mlp."));
        Ok(Box::new(FusedMlpModel(inner, taps.collect())))
    }
}

impl harness::engine::LoadedModel for FusedMlpModel {
    fn run(&self, inputs: &harness::case::Inputs, taps: &[&str]) -> harness::Result<harness::engine::Outputs> {
        self.0.run(inputs, taps)
    }
    fn taps(&self) -> Option<Vec<String>> {
        Some(self.1.clone())
    }
}

#[test]
fn an_activation_seen_only_at_its_mlp_is_named_from_the_weights() {
    let repo = TempRepo::with_cases(&["gpt2/sequence"]);
    let r = repo.run("gpt2/sequence", "fused-mlp", vec![Arc::new(FusedMlp)]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.taps[r.first_divergence.unwrap()].name, "transformer.h.0.mlp", "{text}");
    let h = r.hints.iter().find(|h| h.kind == harness::diagnose::HintKind::ActivationVariant);
    let h = h.unwrap_or_else(|| panic!("{text}"));
    assert!(h.message.contains("with gelu (erf) and the golden with gelu (tanh approximation)"), "{text}");
}
