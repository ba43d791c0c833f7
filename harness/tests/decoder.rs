//! Llama and Qwen3 cases fail where a port goes wrong: each mutation of the reference engine is
//! caught, and the first divergent tap is the one where the bug first acts.

mod common;

use std::sync::Arc;

use common::TempRepo;
use harness::case::{Inputs, ModelSpec};
use harness::diagnose::HintKind;
use harness::engine::{Engine, LoadedModel, Outputs};
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict, terminal::render};

fn mutant(m: Mutation) -> Arc<dyn Engine> {
    Arc::new(ReferenceEngine::mutant("mutant", m))
}

fn run_mutant(case: &str, m: Mutation) -> TrialReport {
    TempRepo::with_cases(&[case]).run(case, "mutant", vec![mutant(m)])
}

/// The trial fails, `tap` is its first divergence, and every tap before it passed.
fn assert_first_divergence(r: &TrialReport, tap: &str) {
    assert_eq!(r.verdict, Verdict::Fail, "{}", render(r));
    let i = r.first_divergence.unwrap();
    assert_eq!(r.taps[i].name, tap, "{}", render(r));
    assert!(i > 0 && r.taps[..i].iter().all(|t| t.status.is_pass()), "{}", render(r));
}

#[test]
fn decode_with_the_cache_written_one_slot_late_fails_at_step_1_not_the_prompt() {
    let r = run_mutant("llama/decode", Mutation::KvCacheWrongPosition);
    assert_first_divergence(&r, "model.layers.0.self_attn@1");
    assert!(r.taps.iter().filter(|t| t.name.ends_with("@0")).all(|t| t.status.is_pass()), "{}", render(&r));
    // The engine disagrees with its own full forward from step 1 on: no golden needed to see it.
    for k in 1..=10 {
        let check = r.taps.iter().find(|t| t.name == format!("logits@{k} == full forward")).unwrap();
        assert!(!check.status.is_pass(), "step {k}: {}", render(&r));
    }
    // Diagnosis names the step, and the reference re-run through its own cache reproduces it.
    let kinds: Vec<HintKind> = r.hints.iter().map(|h| h.kind).collect();
    assert!(kinds.contains(&HintKind::DecodeStep) && kinds.contains(&HintKind::KnownBug), "{:?}", r.hints);
    let bug = r.hints.iter().find(|h| h.kind == HintKind::KnownBug).unwrap();
    assert!(bug.message.contains("KV cache is written one slot off"), "{}", bug.message);
}

#[test]
fn qwen3_decode_with_the_cache_written_one_slot_late_fails_at_step_1() {
    let r = run_mutant("qwen3/decode", Mutation::KvCacheWrongPosition);
    assert_first_divergence(&r, "model.layers.0.self_attn@1");
}

#[test]
fn decode_report_puts_each_full_forward_check_after_its_step() {
    let r = TempRepo::with_cases(&["llama/decode"]).run("llama/decode", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Pass, "{}", render(&r));
    let names: Vec<&str> = r.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 11 * 10 + 10);
    assert_eq!(&names[..2], ["model.embed_tokens@0", "model.rotary_emb@0"]);
    assert_eq!(names[9], "logits@0");
    assert_eq!(&names[19..22], ["logits@1", "logits@1 == full forward", "model.embed_tokens@2"]);
    assert_eq!(names.last(), Some(&"logits@10 == full forward"));
}

#[test]
fn interleaved_rope_on_the_long_prompt_fails_at_the_first_layers_attention() {
    let r = run_mutant("llama/long-prompt", Mutation::RopeInterleaved);
    // q/k/v projections come before RoPE and still match; the attention output does not.
    assert_first_divergence(&r, "model.layers.0.self_attn.o_proj");
    // Position 0 has angle 0: only later tokens are wrong.
    let t = &r.taps[r.first_divergence.unwrap()];
    assert!(t.max_abs_index.as_ref().unwrap()[1] > 0, "{}", render(&r));
}

#[test]
fn llama_mutations_fail_at_the_tap_where_they_act() {
    let cases: &[(&str, Mutation, &str)] = &[
        ("llama/gqa", Mutation::GqaWrongRepeat, "model.layers.0.self_attn"),
        ("llama/mha", Mutation::NoAttentionScale, "model.layers.0.self_attn.o_proj"),
        ("llama/mha", Mutation::NoResidual("attention"), "model.layers.0.post_attention_layernorm"),
        ("llama/mha", Mutation::NoResidual("mlp"), "model.layers.0"),
        ("llama/mha", Mutation::NoFinalNorm, "model.norm"),
        ("llama/mha", Mutation::NoCausalMask, "model.layers.0.self_attn.o_proj"),
        (
            "llama/mha",
            Mutation::TransposedWeight("model.layers.1.self_attn.o_proj.weight".into()),
            "model.layers.1.self_attn.o_proj",
        ),
    ];
    for (case, m, tap) in cases {
        assert_first_divergence(&run_mutant(case, m.clone()), tap);
    }
}

#[test]
fn right_padding_alone_cannot_show_an_ignored_mask() {
    // Right padding sits after every real token, where the causal mask already hides it; this is
    // why qwen3/padded-batch has a left-padded row.
    let r = run_mutant("llama/padded-batch", Mutation::IgnoreAttentionMask);
    assert_eq!(r.verdict, Verdict::Pass, "{}", render(&r));
}

#[test]
fn qwen3_mutations_fail_at_the_tap_where_they_act() {
    let cases: &[(&str, Mutation, &str)] = &[
        // q_norm / k_norm run before RoPE and still match.
        ("qwen3/sequence", Mutation::RopeInterleaved, "model.layers.0.self_attn.o_proj"),
        ("qwen3/sequence", Mutation::GqaWrongRepeat, "model.layers.0.self_attn.o_proj"),
        ("qwen3/sequence", Mutation::NoAttentionScale, "model.layers.0.self_attn.o_proj"),
        ("qwen3/sequence", Mutation::NoResidual("attention"), "model.layers.0.post_attention_layernorm"),
        ("qwen3/sequence", Mutation::NoResidual("mlp"), "model.layers.0"),
        ("qwen3/sequence", Mutation::NoFinalNorm, "model.norm"),
        ("qwen3/padded-batch", Mutation::IgnoreAttentionMask, "model.layers.0.self_attn"),
    ];
    for (case, m, tap) in cases {
        assert_first_divergence(&run_mutant(case, m.clone()), tap);
    }
}

#[test]
fn ignored_mask_shows_in_the_left_padded_row_only() {
    let r = run_mutant("qwen3/padded-batch", Mutation::IgnoreAttentionMask);
    let t = &r.taps[r.first_divergence.unwrap()];
    assert_eq!(t.max_abs_index.as_ref().unwrap()[0], 1, "row 1 is the left-padded one: {}", render(&r));
}

#[test]
fn transposing_a_non_square_weight_is_an_engine_error() {
    let r = run_mutant("qwen3/2layer", Mutation::TransposedWeight("model.layers.0.self_attn.o_proj.weight".into()));
    assert_eq!(r.verdict, Verdict::Error);
    assert!(r.error.as_deref().unwrap().contains("is not a square matrix"), "{:?}", r.error);
}

/// An engine that runs the reference forward but has no incremental decoding.
struct NoDecode(Arc<dyn Engine>);
struct NoDecodeModel(Box<dyn LoadedModel>);

impl Engine for NoDecode {
    fn name(&self) -> &str {
        "no-decode"
    }
    fn supports(&self, m: &ModelSpec) -> Result<(), String> {
        self.0.supports(m)
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, model: &ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        Ok(Box::new(NoDecodeModel(self.0.load(model)?)))
    }
}

impl LoadedModel for NoDecodeModel {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        self.0.run(inputs, taps)
    }
}

#[test]
fn decode_case_on_an_engine_without_decode_is_a_clear_error() {
    let engine: Arc<dyn Engine> = Arc::new(NoDecode(Arc::new(ReferenceEngine::new())));
    let r = TempRepo::with_cases(&["qwen3/decode"]).run("qwen3/decode", "no-decode", vec![engine]);
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(e.starts_with("engine `no-decode` failed: this engine does not support incremental decoding"), "{e}");
}

#[test]
fn decode_longer_than_max_position_embeddings_is_refused_where_it_is_written() {
    let repo = TempRepo::with_cases(&["qwen3/decode"]);
    // qwen3-tiny-2layer has max_position_embeddings 256.
    let tokens: Vec<String> = (0..251).map(|i| (i % 200 + 2).to_string()).collect();
    let text = format!(
        "model: qwen3-tiny-2layer\ninputs:\n  input_ids: [1, 2, 3, 4, 5, 6]\ndecode:\n  tokens: [{}]\ntaps: [logits]\n",
        tokens.join(", ")
    );
    repo.write("cases/x/long.yaml", &text);
    let e = repo.load("x/long").unwrap_err().to_string();
    assert!(e.ends_with("cases/x/long.yaml:5:11: a prompt of 6 tokens plus 251 decode steps is longer than max_position_embeddings 256 (hint: use fewer decode tokens or a shorter prompt)"), "{e}");
}

#[test]
fn the_reference_decode_matches_its_own_full_forward_bit_for_bit_at_the_prompt() {
    // Step 0 of decode is the prompt through the cache path; it must be the plain forward.
    let repo = TempRepo::with_cases(&["llama/decode"]);
    let case = repo.load("llama/decode").unwrap();
    let model = ReferenceEngine::new().load(&case.model).unwrap();
    let steps = model.decode(&case.inputs, &case.decode.as_ref().unwrap().tokens, &["logits"]).unwrap();
    let full = model.run(&case.inputs, &["logits"]).unwrap();
    assert_eq!(steps[0]["logits"], full["logits"]);
    assert_eq!(steps.len(), 11);
}

/// The classes added with recorded structures (Mistral, Qwen2, Gemma 2 and 3, Phi-3, GPT-2,
/// Llama 3 RoPE scaling): each bug a real port of the class makes is caught at the tap where it
/// first acts, everything before it passing.
#[test]
fn port_bugs_of_each_decoder_class_fail_where_they_act() {
    let table: &[(&str, Mutation, &str)] = &[
        ("mistral/sequence", Mutation::WindowOffByOne, "model.layers.0.self_attn.o_proj"),
        ("mistral/sequence", Mutation::NoSlidingWindow, "model.layers.0.self_attn.o_proj"),
        ("mistral/decode", Mutation::WindowOffByOne, "model.layers.0.self_attn@0"),
        ("qwen2/sequence", Mutation::NoQkvBias, "model.layers.0.self_attn.q_proj"),
        ("gemma2/sequence", Mutation::NoSoftcap, "model.layers.0.self_attn.o_proj"),
        ("gemma2/sequence", Mutation::NormWeightNotPlusOne, "model.layers.0.input_layernorm"),
        ("gemma2/sequence", Mutation::NoEmbedScale, "model.embed_tokens"),
        ("gemma2/sequence", Mutation::WindowOffByOne, "model.layers.0.self_attn.o_proj"),
        ("gemma3/sequence", Mutation::NormWeightNotPlusOne, "model.layers.0.input_layernorm"),
        ("phi3/sequence", Mutation::PartialRotaryFull, "model.rotary_emb"),
        ("phi3/sequence", Mutation::GegluSwapped, "model.layers.0.mlp.activation_fn"),
        ("gpt2/sequence", Mutation::GeluErf, "transformer.h.0.mlp.act"),
        ("gpt2/padded-batch", Mutation::IgnoreAttentionMask, "transformer.h.0.attn"),
        ("llama3-rope/sequence", Mutation::RopeScalingIgnored, "model.rotary_emb"),
        // Layer 0 is full attention: the bug shows at the first sliding layer.
        ("qwen3/sliding", Mutation::WindowOffByOne, "model.layers.1.self_attn.o_proj"),
        ("qwen3/sliding-decode", Mutation::NoSlidingWindow, "model.layers.1.self_attn@0"),
    ];
    let mut wrong = Vec::new();
    for (case, m, tap) in table {
        let r = run_mutant(case, m.clone());
        let first = r.first_divergence.map(|i| r.taps[i].name.clone());
        let before_pass = r.first_divergence.is_some_and(|i| r.taps[..i].iter().all(|t| t.status.is_pass()));
        if r.verdict != Verdict::Fail || first.as_deref() != Some(tap) || !before_pass {
            wrong.push(format!("{case} with {m:?}: expected the first divergence at `{tap}`\n{}", render(&r)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Sliding windows are exact up to the window: a window one key too wide changes nothing before
/// position `window` (each of those queries has fewer keys than the window anyway).
#[test]
fn a_window_off_by_one_is_exact_before_the_window() {
    let r = run_mutant("mistral/sequence", Mutation::WindowOffByOne);
    let t = r.taps.iter().find(|t| t.name == "model.layers.0.self_attn.o_proj").unwrap();
    let at = t.first_mismatch_index.as_ref().expect("a mismatch");
    assert_eq!(at[1], 6, "the first wrong position is the window size (6): {}", render(&r));
}
