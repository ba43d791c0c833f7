//! Metamorphic properties: each catches a port bug of the mutant zoo on generated inputs (no
//! goldens), shrinks the failing input to a minimal one and persists its seed; the reference
//! engine passes them all (the `reference::metamorphic/*` trials of `tests/cases.rs`).

mod common;

use common::TempRepo;
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::metamorphic::{self, MetaCase, Outcome, Property};
use harness::shrink::input::Candidate;

fn meta(repo: &TempRepo, id: &str) -> MetaCase {
    metamorphic::load(repo.root(), &repo.path(&format!("cases/{id}.yaml")), &mut Default::default()).unwrap()
}

/// Check `property` of `id` on the reference engine with `m` injected; returns the minimal input.
fn fails(id: &str, property: Property, m: Mutation) -> Candidate {
    let repo = TempRepo::with_cases(&[id]);
    let meta = meta(&repo, id);
    let model = ReferenceEngine::mutant("mutant", m.clone()).load(&meta.base.model).unwrap();
    match metamorphic::check(&meta, property, model.as_ref()) {
        Outcome::Fails { minimal, violation, evaluations } => {
            eprintln!("{id} {}: {} ({evaluations} evaluations): {minimal:?}", property.name(), violation.what);
            assert!(evaluations <= 300, "{evaluations}");
            assert!(violation.first.is_some(), "{}", violation.what);
            let seeds = std::fs::read_to_string(repo.path(&format!("cases/{id}.proptest-regressions"))).unwrap();
            assert!(seeds.contains("cc "), "the failing seed is persisted: {seeds}");
            minimal
        }
        other => panic!("{id} {} does not catch {m:?}: {other:?}", property.name()),
    }
}

fn lens(c: &Candidate) -> Vec<usize> {
    let mut v: Vec<usize> = c.rows.iter().map(|r| r.ids.len()).collect();
    v.sort();
    v
}

#[test]
fn determinism_catches_dropout_left_on() {
    let min = fails("metamorphic/bert", Property::Determinism, Mutation::DropoutOn(0.1));
    assert_eq!(lens(&min), [1]);
}

#[test]
fn batch_invariance_catches_an_ignored_attention_mask() {
    // Rows of different lengths: the shorter one is padded in the batch, and attends to it.
    let min = fails("metamorphic/bert", Property::Batch, Mutation::IgnoreAttentionMask);
    assert_eq!(lens(&min), [1, 2]);
}

#[test]
fn padding_invariance_catches_an_ignored_attention_mask() {
    let min = fails("metamorphic/bert", Property::Padding, Mutation::IgnoreAttentionMask);
    assert_eq!((lens(&min), min.extra_pad), (vec![1], 1));
}

#[test]
fn prefix_invariance_catches_a_missing_causal_mask() {
    let min = fails("metamorphic/llama", Property::Prefix, Mutation::NoCausalMask);
    // BOS alone, then one appended token it must not see.
    assert_eq!((lens(&min), min.prompt), (vec![2], Some(1)));
}

#[test]
fn cache_decode_catches_a_cache_written_at_the_wrong_slot() {
    let min = fails("metamorphic/llama", Property::Cache, Mutation::KvCacheWrongPosition);
    assert_eq!((lens(&min), min.prompt), (vec![2], Some(1)));
}

#[test]
fn metamorphic_cases_refuse_properties_the_model_cannot_have() {
    let repo = TempRepo::with_cases(&["metamorphic/bert"]);
    repo.write("cases/metamorphic/bert.yaml", "model: bert-tiny\nmetamorphic: [batch, prefix]\ntaps: [pooler]\n");
    let e = metamorphic::load(repo.root(), &repo.path("cases/metamorphic/bert.yaml"), &mut Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bert.yaml:2:") && e.contains("`prefix` needs a causal model"), "{e}");
    repo.write("cases/metamorphic/bert.yaml", "model: bert-tiny\nmetamorphic: [determinsm]\ntaps: [pooler]\n");
    let e = metamorphic::load(repo.root(), &repo.path("cases/metamorphic/bert.yaml"), &mut Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `determinism`?"), "{e}");
}
