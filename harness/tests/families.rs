//! The reference engine produces what HF recorded for every class it implements, and the encoder
//! families' cases fail at the right tap when the reference engine carries a real port bug.

mod common;

use std::sync::Arc;

use common::{TempRepo, repo_root};
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict, terminal};

/// The reference engine against HF's recorded structure: for every committed model whose class
/// and config it implements, it produces every module the structure records (each module that
/// ran once per forward, and the named outputs), with the recorded shape past the batch and
/// sequence axes. The module lists are HF's; this checks the engine, not a copy of them.
#[test]
fn reference_engine_produces_every_recorded_module() {
    let root = repo_root();
    let reference = ReferenceEngine::new();
    let mut checked = Vec::new();
    let mut load_errors = Vec::new();
    for id in harness::case::list_model_ids(&root) {
        // A model spec that does not load is reported with the others, never a panic mid-sweep.
        let spec = match harness::case::load_model_spec(&root, &id) {
            Ok(s) => s,
            Err(e) => {
                load_errors.push(e.to_string());
                continue;
            }
        };
        if spec.absent.is_some() || reference.supports(&spec).is_err() {
            continue;
        }
        let model = reference.load(&spec).unwrap_or_else(|e| panic!("model `{id}`: {e}"));
        let (b, s) = (2, 5);
        let vocab = spec.vocab().unwrap() as i64;
        let ids = harness::case::IdMatrix {
            batch: b,
            seq: s,
            data: (0..(b * s) as i64).map(|i| (7 * i + 3) % vocab).collect(),
        };
        let inputs = harness::case::Inputs { input_ids: ids, ..Default::default() };
        let out = model.run(&inputs, &[]).unwrap_or_else(|e| panic!("model `{id}`: {e}"));
        let mut missing = Vec::new();
        // `similarity` is the harness's, computed from the engine's `sentence_embedding`.
        for m in spec.structure.modules.iter().filter(|m| m.path != "similarity") {
            let Some(t) = out.get(&m.path) else {
                missing.push(m.path.clone());
                continue;
            };
            let want: Vec<Option<usize>> = m
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match (m.batch_axis == Some(i), m.seq_axis == Some(i)) {
                    (true, _) => Some(b),
                    (_, true) => Some(s),
                    _ => *d,
                })
                .collect();
            let fits =
                t.shape().len() == want.len() && t.shape().iter().zip(&want).all(|(a, w)| w.is_none_or(|w| w == *a));
            assert!(fits, "model `{id}`: `{}` has shape {:?}, HF recorded {:?}", m.path, t.shape(), m.shape);
        }
        assert!(missing.is_empty(), "model `{id}` ({}): the reference engine does not produce {missing:?}", spec.class);
        checked.push(spec.class.clone());
    }
    assert!(load_errors.is_empty(), "model specs that do not load:\n{}", load_errors.join("\n"));
    checked.sort();
    checked.dedup();
    for class in
        ["LlamaForCausalLM", "Qwen3ForCausalLM", "BertModel", "DistilBertForSequenceClassification", "ModernBertModel"]
    {
        assert!(checked.iter().any(|c| c == class), "no committed model of {class} was checked: {checked:?}");
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

/// `harness run ARGS` on the repository at `root`: (exit ok, stdout + stderr).
fn harness_run(root: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::harness_bin())
        .arg("run")
        .args(args)
        .env("HARNESS_ROOT", root)
        .env_remove("HARNESS_REPORT")
        .env_remove("CI")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// What an engine cannot run is a capability, not a load error: a case of a class an engine does
/// not implement gets no trial on it by default, an ignored trial with the reason when the case
/// lists it, and a case no engine runs at all says so as one ignored trial.
#[test]
fn engines_that_cannot_run_a_model_are_ignored_with_the_reason_never_a_load_error() {
    let repo = TempRepo::with_cases(&["qwen3/sliding", "gpt-neox/sequence"]);
    repo.write(
        "cases/engines/hf-bf16.yaml",
        &std::fs::read_to_string(repo_root().join("cases/engines/hf-bf16.yaml")).unwrap(),
    );
    let (ok, out) = harness_run(repo.root(), &[]);
    assert!(ok, "{out}");
    // By default: only the reference runs Qwen3 with sliding layers (candle-transformers cannot).
    assert!(
        out.contains("test reference::qwen3/sliding ") && !out.contains("candle-transformers::qwen3/sliding"),
        "{out}"
    );
    // GPT-NeoX lists hf-bf16 only, which is not installed in this temp repo: ignored, not passed.
    let neox =
        out.lines().find(|l| l.starts_with("test hf-bf16::gpt-neox/sequence ")).unwrap_or_else(|| panic!("{out}"));
    assert!(neox.contains("ignored (engine `hf-bf16` is not installed here"), "{neox}");

    let case = repo.path("cases/qwen3/sliding.yaml");
    let text = std::fs::read_to_string(&case).unwrap();
    std::fs::write(&case, format!("{text}engines: [reference, candle-transformers]\n")).unwrap();
    let (ok, out) = harness_run(repo.root(), &["qwen3/sliding"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("test candle-transformers::qwen3/sliding "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("ignored (engine `candle-transformers` cannot run model `qwen3-tiny-swa` (Qwen3ForCausalLM): candle-transformers' Qwen3 has no sliding-window layers"), "{line}");
    assert!(!out.contains("load::qwen3/sliding"), "{out}");

    // No engine here runs GPT-NeoX by default: one ignored trial says why, engine by engine.
    let neox = repo.path("cases/gpt-neox/sequence.yaml");
    let text = std::fs::read_to_string(&neox).unwrap().replace("engines: [hf-bf16]\n", "");
    std::fs::write(&neox, text).unwrap();
    let (ok, out) = harness_run(repo.root(), &["gpt-neox"]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with("test none::gpt-neox/sequence ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("ignored (no engine here runs model `gpt-neox-tiny` (GPTNeoXForCausalLM): reference: the reference engine does not implement `GPTNeoXForCausalLM`"), "{line}");
}
