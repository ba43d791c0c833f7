//! The harness finds planted bugs, and names the module they are in: each case is run on the
//! engine with and without a bug, programmatically, and the trial reports are checked.

use std::path::Path;
use std::sync::Arc;

use harness::engine::{Engine, Registry};
use harness::report::{HintKind, TrialReport, Verdict};
use harness::runner::Suite;
use rust_engine_example::{Bug, Gpt2Engine};

/// Run the case `id` (e.g. `gpt2/sequence`) of this project on `engine`.
fn run(id: &str, engine: Gpt2Engine) -> TrialReport {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let mut registry = Registry::default();
    registry.add(engine.clone());
    let suite = Suite::new(root.to_path_buf(), registry);
    let file = root.join(format!("cases/{id}.yaml"));
    let case = harness::case::load_case(root, &file, &mut Default::default()).expect("the case loads");
    suite.run_trial(&case, &engine)
}

fn first_divergence(r: &TrialReport) -> Option<&str> {
    r.first_divergent_tap().map(|t| t.name.as_str())
}

#[test]
fn the_correct_engine_passes() {
    for id in ["gpt2/sequence", "gpt2/padded-batch"] {
        let r = run(id, Gpt2Engine::new());
        assert_eq!(r.verdict, Verdict::Pass, "{id}: {r:#?}");
    }
}

#[test]
fn an_erf_gelu_is_found_in_the_first_mlp() {
    for id in ["gpt2/sequence", "gpt2/padded-batch"] {
        let r = run(id, Gpt2Engine::with_bug(Bug::GeluErf));
        assert_eq!(r.trial, format!("my-gpt2+gelu-erf::{id}"));
        assert_eq!(r.verdict, Verdict::Fail, "{id}: {r:#?}");
        // Everything before it (embeddings, ln_1, attention, ln_2) still matches HF. The error
        // is small (cosine 1.000000, max_abs ~1.4e-4 on the sequence) but beyond the default
        // tolerance (atol 1e-4 + rtol 1e-3), and it grows through every later tap.
        assert_eq!(first_divergence(&r), Some("transformer.h.0.mlp"), "{id}: {r:#?}");
    }
}

#[test]
fn an_ignored_attention_mask_is_found_in_the_first_attention_of_the_padded_batch_only() {
    // No padding, no difference: the case without a mask cannot see this bug.
    assert_eq!(run("gpt2/sequence", Gpt2Engine::with_bug(Bug::IgnoreAttentionMask)).verdict, Verdict::Pass);
    let r = run("gpt2/padded-batch", Gpt2Engine::with_bug(Bug::IgnoreAttentionMask));
    assert_eq!(r.verdict, Verdict::Fail, "{r:#?}");
    assert_eq!(first_divergence(&r), Some("transformer.h.0.attn"), "{r:#?}");
    // Diagnosis: only the left-padded row is wrong (the right-padded row's real tokens never see
    // its padding, which comes after them).
    assert!(r.hints.iter().any(|h| h.kind == HintKind::PaddedRowsOnly), "{:#?}", r.hints);
}
