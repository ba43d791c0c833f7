//! The encoder families: their module lists agree with what HF ran, and each family's cases fail
//! at the right tap when the reference engine carries a real port bug.

mod common;

use std::sync::Arc;

use common::{TempRepo, repo_root};
use harness::case::load_case;
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict, terminal};

/// Families whose module lists are checked against the goldens' recorded `module_order`.
const CHECKED: &[&str] =
    &["LlamaForCausalLM", "Qwen3ForCausalLM", "BertModel", "DistilBertForSequenceClassification", "ModernBertModel"];

/// What HF ran, as the family should list it: each module once, in completion order, without
/// modules that ran more than once (their output is ambiguous) and without the base model
/// wrapper (`model`, `distilbert`: the module that completes right before `last_hidden_state`
/// after everything before it ran inside it), whose output is `last_hidden_state`.
fn hf_taps(order: &[String]) -> Vec<String> {
    let count = |n: &String| order.iter().filter(|m| *m == n).count();
    let base = order.iter().position(|n| n == "last_hidden_state").and_then(|i| i.checked_sub(1)).and_then(|i| {
        let b = &order[i];
        order[..i].iter().all(|n| n.starts_with(&format!("{b}."))).then(|| b.clone())
    });
    let mut out: Vec<String> = Vec::new();
    for n in order {
        if count(n) == 1 && Some(n) != base.as_ref() {
            out.push(n.clone());
        }
    }
    out
}

#[test]
fn family_modules_match_hf_module_order() {
    let root = repo_root();
    let mut checked: Vec<&str> = Vec::new();
    let mut models = Default::default();
    for file in harness::runner::discover(&root).unwrap() {
        let case = match load_case(&root, &file, &mut models) {
            Err(e) if e.kind == harness::ErrorKind::ModelAbsent => continue,
            c => c.unwrap(),
        };
        let class = case.model.family.class;
        // Cases compared against another engine have no goldens.
        if !CHECKED.contains(&class) || case.reference.is_some() {
            continue;
        }
        let manifest = root.join("goldens").join(&case.id).join("manifest.json");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let mut order: Vec<String> =
            m["module_order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        if order.iter().any(|n| n.ends_with("@0")) {
            // A decode case: the prompt step (step 0) is one ordinary forward.
            order = order.iter().filter_map(|n| n.strip_suffix("@0").map(String::from)).collect();
        }
        let expected = hf_taps(&order);
        let family: Vec<String> =
            (case.model.family.modules)(&case.model.config).unwrap().into_iter().map(|m| m.path).collect();
        if family != expected {
            let missing: Vec<_> = expected.iter().filter(|n| !family.contains(n)).collect();
            let extra: Vec<_> = family.iter().filter(|n| !expected.contains(n)).collect();
            panic!(
                "{class} ({}): the family's module list differs from HF's module_order\n  \
                 HF ran but the family lacks: {missing:?}\n  the family lists but HF did not run: {extra:?}\n  \
                 (if both are empty, the order differs)",
                case.id
            );
        }
        checked.push(class);
    }
    for class in CHECKED {
        assert!(checked.contains(class), "no case with goldens exercises {class}");
    }
}

fn mutant(m: Mutation) -> Arc<dyn Engine> {
    Arc::new(ReferenceEngine::mutant("mutant", m))
}

fn run_mutant(case: &str, m: Mutation) -> TrialReport {
    let repo = TempRepo::with_cases(&[case]);
    repo.run(case, "mutant", vec![mutant(m)])
}

/// `m` makes `case` fail, first at `tap`, with every earlier tap passing.
fn assert_fails_first_at(case: &str, m: Mutation, tap: &str) -> TrialReport {
    let r = run_mutant(case, m.clone());
    assert_eq!(r.verdict, Verdict::Fail, "{m:?} on {case}: {}", terminal::render(&r));
    let i = r.first_divergence.unwrap();
    assert_eq!(r.taps[i].name, tap, "{m:?} on {case}:\n{}", terminal::render(&r));
    assert!(r.taps[..i].iter().all(|t| t.status.is_pass()));
    r
}

fn failing(r: &TrialReport) -> Vec<&str> {
    r.taps.iter().filter(|t| !t.status.is_pass()).map(|t| t.name.as_str()).collect()
}

// ModernBERT (story 1: an embedding port with cosine 0.48 against HF).

#[test]
fn modernbert_without_sliding_window_fails_at_the_first_local_layer() {
    // Layer 0 is global; layer 1 is the first local layer, so layers.0.* all pass.
    let r = assert_fails_first_at("modernbert/long", Mutation::NoSlidingWindow, "layers.1.attn");
    assert!(r.taps.iter().any(|t| t.name == "layers.0" && t.status.is_pass()));
}

#[test]
fn modernbert_global_rope_on_local_layers_fails_at_the_first_local_layer() {
    assert_fails_first_at("modernbert/long", Mutation::GlobalRopeOnLocal, "layers.1.attn");
    assert_fails_first_at("modernbert/tiny-2l", Mutation::GlobalRopeOnLocal, "layers.1.attn");
}

#[test]
fn modernbert_swapped_geglu_fails_at_the_first_activation() {
    assert_fails_first_at("modernbert/sequence", Mutation::GegluSwapped, "layers.0.mlp.act");
}

#[test]
fn modernbert_without_final_norm_fails_at_final_norm() {
    assert_fails_first_at("modernbert/sequence", Mutation::NoFinalNorm, "final_norm");
}

#[test]
fn modernbert_last_token_pooling_fails_only_at_the_cls_taps() {
    let r = assert_fails_first_at("modernbert/long", Mutation::PoolLastToken, "pooled.cls");
    assert_eq!(failing(&r), ["pooled.cls", "pooled.cls.normalized"]);
    // On a padded batch, too: the last real token, not the first.
    let r = assert_fails_first_at("modernbert/padded-batch", Mutation::PoolLastToken, "pooled.cls");
    assert_eq!(failing(&r), ["pooled.cls", "pooled.cls.normalized"]);
}

#[test]
fn modernbert_ignoring_the_mask_fails_at_the_first_attention_and_the_mean_pooling() {
    let r = assert_fails_first_at("modernbert/padded-batch", Mutation::IgnoreAttentionMask, "layers.0.attn");
    assert!(failing(&r).contains(&"pooled.mean"));
}

#[test]
fn modernbert_transposed_projection_fails_at_that_projection() {
    assert_fails_first_at(
        "modernbert/sequence",
        Mutation::TransposedWeight("layers.0.attn.Wo.weight".into()),
        "layers.0.attn.Wo",
    );
}

#[test]
fn modernbert_missing_mlp_residual_fails_at_the_layer_output() {
    assert_fails_first_at("modernbert/sequence", Mutation::NoResidual("mlp"), "layers.0");
}

// DistilBERT (story 3: a classifier at 50-60% where HF says 99%).

#[test]
fn distilbert_layernorm_eps_fails_at_the_first_layernorm() {
    assert_fails_first_at("distilbert/sequence", Mutation::LayerNormEps(1e-5), "distilbert.embeddings.LayerNorm");
}

#[test]
fn distilbert_ignoring_the_mask_fails_at_the_first_attention() {
    assert_fails_first_at(
        "distilbert/padded-batch",
        Mutation::IgnoreAttentionMask,
        "distilbert.transformer.layer.0.attention",
    );
}

#[test]
fn distilbert_transposed_query_fails_at_q_lin() {
    assert_fails_first_at(
        "distilbert/sequence",
        Mutation::TransposedWeight("distilbert.transformer.layer.0.attention.q_lin.weight".into()),
        "distilbert.transformer.layer.0.attention.q_lin",
    );
}

#[test]
fn distilbert_head_on_the_last_token_fails_at_pre_classifier() {
    assert_fails_first_at("distilbert/sequence", Mutation::PoolLastToken, "pre_classifier");
}

// BERT.

#[test]
fn bert_gelu_tanh_fails_at_the_first_intermediate_activation() {
    assert_fails_first_at("bert/sequence", Mutation::GeluTanh, "encoder.layer.0.intermediate.intermediate_act_fn");
}

#[test]
fn bert_unscaled_attention_fails_at_the_first_self_attention() {
    assert_fails_first_at("bert/sequence", Mutation::NoAttentionScale, "encoder.layer.0.attention.self");
}

#[test]
fn bert_missing_residuals_fail_at_their_layernorm() {
    assert_fails_first_at(
        "bert/sequence",
        Mutation::NoResidual("attention"),
        "encoder.layer.0.attention.output.LayerNorm",
    );
    assert_fails_first_at("bert/sequence", Mutation::NoResidual("mlp"), "encoder.layer.0.output.LayerNorm");
}

#[test]
fn bert_ignoring_the_mask_fails_at_the_first_self_attention() {
    assert_fails_first_at("bert/padded-batch", Mutation::IgnoreAttentionMask, "encoder.layer.0.attention.self");
}

#[test]
fn bert_pooling_the_last_token_fails_at_the_pooler() {
    let r = assert_fails_first_at("bert/sequence", Mutation::PoolLastToken, "pooler.dense");
    assert!(r.taps.iter().any(|t| t.name == "last_hidden_state" && t.status.is_pass()));
}

#[test]
fn bert_dropout_at_inference_fails_at_the_first_dropout_and_differs_between_runs() {
    assert_fails_first_at("bert/sequence", Mutation::DropoutOn(0.1), "embeddings.dropout");
    let repo = TempRepo::with_cases(&["bert/sequence"]);
    let case = repo.load("bert/sequence").unwrap();
    let model = ReferenceEngine::mutant("mutant", Mutation::DropoutOn(0.1)).load(&case.model).unwrap();
    let a = model.run(&case.inputs, &["last_hidden_state"]).unwrap();
    let b = model.run(&case.inputs, &["last_hidden_state"]).unwrap();
    assert_ne!(a["last_hidden_state"].data(), b["last_hidden_state"].data(), "two runs with dropout on must differ");
}

#[test]
fn unmutated_reference_is_deterministic() {
    let repo = TempRepo::with_cases(&["modernbert/padded-batch"]);
    let case = repo.load("modernbert/padded-batch").unwrap();
    let model = ReferenceEngine::new().load(&case.model).unwrap();
    let a = model.run(&case.inputs, &[]).unwrap();
    let b = model.run(&case.inputs, &[]).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert_eq!(t.data(), b[k].data(), "{k}");
    }
}

#[test]
fn transposing_a_missing_or_non_square_weight_is_an_engine_error() {
    for (name, msg) in [
        ("no.such.weight", "no weight `no.such.weight` to transpose"),
        ("layers.0.mlp.Wi.weight", "is not a square matrix"),
    ] {
        let r = run_mutant("modernbert/tiny-2l", Mutation::TransposedWeight(name.into()));
        assert_eq!(r.verdict, Verdict::Error);
        assert!(r.error.as_deref().unwrap().contains(msg), "{:?}", r.error);
    }
}

/// End to end: a port with one of these bugs gets a hint naming it (the diagnosis re-runs the
/// reference with each known bug and finds the one that reproduces the port's output).
#[test]
fn diagnosis_names_the_encoder_bugs() {
    for (case, m) in [
        ("modernbert/long", Mutation::NoSlidingWindow),
        ("modernbert/long", Mutation::GlobalRopeOnLocal),
        ("modernbert/sequence", Mutation::GegluSwapped),
        ("modernbert/long", Mutation::PoolLastToken),
        ("distilbert/sequence", Mutation::LayerNormEps(1e-5)),
        ("bert/sequence", Mutation::GeluTanh),
    ] {
        let r = run_mutant(case, m.clone());
        let first = &r.first_divergent_tap().unwrap().name;
        let named = r.hints.iter().any(|h| {
            h.kind == harness::diagnose::HintKind::KnownBug && h.tap == *first && h.message.contains(&m.describe())
        });
        assert!(named, "{m:?} on {case}: no hint names it: {:#?}", r.hints);
    }
}
