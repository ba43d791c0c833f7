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
