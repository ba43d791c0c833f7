//! The mutant zoo: the reference engine with one real port bug injected per entry (see
//! `Mutation`). Each entry must fail, first diverge at the tap where the bug acts, and have the
//! right hint among its top 3. The scorecard in docs/diagnosis.md is generated from this run.

mod common;

use std::sync::Arc;

use common::TempRepo;
use harness::diagnose::HintKind;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict};

struct Entry {
    bug: &'static str,
    mutation: Mutation,
    case: &'static str,
    first_tap: &'static str,
    /// Any of these among the top 3 hints counts as the right hint.
    hints: &'static [HintKind],
}

fn zoo() -> Vec<Entry> {
    use HintKind::*;
    vec![
        Entry {
            bug: "pooling takes the last token instead of CLS",
            mutation: Mutation::PoolLastToken,
            case: "modernbert/sequence",
            first_tap: "pooled.cls",
            hints: &[TokenMisalignment],
        },
        Entry {
            bug: "sliding window not applied",
            mutation: Mutation::NoSlidingWindow,
            case: "modernbert/sequence",
            first_tap: "layers.1.attn.Wo",
            hints: &[LayerType, KnownBug],
        },
        Entry {
            bug: "global RoPE theta on local layers",
            mutation: Mutation::GlobalRopeOnLocal,
            case: "modernbert/sequence",
            first_tap: "layers.1.attn.Wo",
            hints: &[LayerType, KnownBug],
        },
        Entry {
            bug: "GeGLU halves swapped",
            mutation: Mutation::GegluSwapped,
            case: "modernbert/sequence",
            first_tap: "layers.0.mlp.act",
            hints: &[ActivationVariant],
        },
        Entry {
            bug: "final norm missing",
            mutation: Mutation::NoFinalNorm,
            case: "modernbert/sequence",
            first_tap: "final_norm",
            hints: &[ModuleSkipped],
        },
        Entry {
            bug: "LayerNorm eps 1e-5 instead of 1e-12",
            mutation: Mutation::LayerNormEps(1e-5),
            case: "distilbert/sequence",
            first_tap: "distilbert.embeddings.LayerNorm",
            hints: &[RowScale],
        },
        Entry {
            bug: "GELU tanh instead of erf",
            mutation: Mutation::GeluTanh,
            case: "bert/sequence",
            first_tap: "encoder.layer.0.intermediate.intermediate_act_fn",
            hints: &[ActivationVariant],
        },
        Entry {
            bug: "dropout left on",
            mutation: Mutation::DropoutOn(0.1),
            case: "bert/sequence",
            first_tap: "embeddings.dropout",
            hints: &[NonDeterministic],
        },
        Entry {
            bug: "attention mask ignored",
            mutation: Mutation::IgnoreAttentionMask,
            case: "bert/padded-batch",
            first_tap: "encoder.layer.0.attention.self",
            hints: &[PaddedRowsOnly],
        },
        Entry {
            bug: "RoPE interleaved instead of half-split",
            mutation: Mutation::RopeInterleaved,
            case: "llama/long-prompt",
            first_tap: "model.layers.0.self_attn.o_proj",
            hints: &[RopePairing],
        },
        Entry {
            bug: "GQA key/value heads repeated wrongly",
            mutation: Mutation::GqaWrongRepeat,
            case: "llama/gqa",
            first_tap: "model.layers.0.self_attn",
            hints: &[SomeHeads],
        },
        Entry {
            bug: "KV cache written at the wrong position",
            mutation: Mutation::KvCacheWrongPosition,
            case: "llama/decode",
            first_tap: "model.layers.0.self_attn@1",
            hints: &[DecodeStep],
        },
        Entry {
            bug: "one projection weight transposed",
            mutation: Mutation::TransposedWeight("model.layers.0.self_attn.o_proj.weight".into()),
            case: "llama/mha",
            first_tap: "model.layers.0.self_attn.o_proj",
            hints: &[TransposedWeight],
        },
        Entry {
            bug: "attention scale 1/sqrt(d) missing",
            mutation: Mutation::NoAttentionScale,
            case: "llama/mha",
            first_tap: "model.layers.0.self_attn.o_proj",
            hints: &[KnownBug],
        },
        Entry {
            bug: "residual connection missing",
            mutation: Mutation::NoResidual("mlp"),
            case: "llama/mha",
            first_tap: "model.layers.0",
            hints: &[ResidualMissing],
        },
    ]
}

fn kind_name(k: HintKind) -> String {
    serde_json::to_value(k).unwrap().as_str().unwrap().to_string()
}

fn run(e: &Entry) -> TrialReport {
    let repo = TempRepo::with_cases(&[e.case]);
    let engine: Arc<dyn harness::engine::Engine> = Arc::new(ReferenceEngine::mutant("zoo", e.mutation.clone()));
    repo.run(e.case, "zoo", vec![engine])
}

#[test]
#[ignore = "exploration: prints every zoo report"]
fn print_zoo() {
    for e in zoo() {
        println!("=== {}\n{}", e.bug, harness::report::terminal::render(&run(&e)));
    }
}

/// One scorecard row per zoo entry; panics (after printing the table) if an entry is not
/// caught, localized and hinted.
#[test]
fn every_bug_is_caught_localized_and_hinted() {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for e in zoo() {
        let r = run(&e);
        let caught = r.verdict == Verdict::Fail;
        let first = r.first_divergent_tap().map(|t| t.name.clone()).unwrap_or_else(|| "-".into());
        let localized = first == e.first_tap;
        let rank = r.hints.iter().take(3).position(|h| e.hints.contains(&h.kind));
        let hinted = match rank {
            Some(i) => {
                let h = &r.hints[i];
                format!("yes (#{}: `{}`, {})", i + 1, kind_name(h.kind), h.kind.evidence())
            }
            None => "NO".into(),
        };
        if !caught || !localized || rank.is_none() {
            problems.push(format!(
                "{}: caught {caught}, first tap {first} (want {}), hints {:?}",
                e.bug,
                e.first_tap,
                r.hints.iter().map(|h| h.kind).collect::<Vec<_>>()
            ));
        }
        rows.push(format!(
            "| {} | `{}` | `{}` | {} | {} | {} |",
            e.bug,
            e.case,
            first,
            if caught { "yes" } else { "NO" },
            if localized { "yes" } else { "NO" },
            hinted
        ));
    }
    let table = format!(
        "| bug | case | first divergent tap | caught | localized | hinted (rank: kind, evidence) |\n| --- | --- | --- | --- | --- | --- |\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    common::check_generated_section("docs/diagnosis.md", "zoo-scorecard", &table);
}

/// What a person reads first in a failing report: verdict, first divergence, what is wrong there
/// and the hints (the per-tap table is covered by other tests; its small numbers vary with the
/// CPU's float rounding, so it is not snapshotted).
#[test]
fn zoo_reports_read_well() {
    let mut out = String::new();
    for e in zoo().into_iter().filter(|e| {
        matches!(
            e.mutation,
            Mutation::PoolLastToken
                | Mutation::IgnoreAttentionMask
                | Mutation::KvCacheWrongPosition
                | Mutation::GqaWrongRepeat
        )
    }) {
        let text = harness::report::terminal::render(&run(&e));
        let head: Vec<&str> = text.lines().take_while(|l| !l.trim_start().starts_with("tap ")).collect();
        let head = head.join("\n");
        let head = match head.find(" (/") {
            Some(i) => format!("{}{}", &head[..i], &head[head.find(".yaml)").unwrap() + 6..]),
            None => head,
        };
        // The float digits of the first-divergence line depend on the CPU's rounding: drop them.
        let head: Vec<String> = head
            .lines()
            .map(|l| match (l.starts_with("first divergence:"), l.find(" (max_abs")) {
                (true, Some(i)) => l[..i].to_string(),
                _ => l.to_string(),
            })
            .collect();
        out += &format!("=== {}\n{}\n\n", e.bug, head.join("\n"));
    }
    insta::assert_snapshot!(out);
}
