//! Named inputs (images, any tensor the forward takes): bugs planted in how an engine reads them
//! are caught at the right tap, and a malformed input is a located error.

mod common;

use std::sync::Arc;

use common::TempRepo;
use harness::case::Inputs;
use harness::diagnose::HintKind;
use harness::engine::{Engine, LoadedModel, Outputs};
use harness::engines::candle_tx::CandleTxEngine;
use harness::report::Verdict;
use harness_api::inputs::InputData;

/// candle-transformers' ViT behind an input-handling bug, written here independently of the
/// detectors: `bug` rewrites `pixel_values` (C order, [B, C, H, W]) before the model sees it.
type Bug = fn(&[usize], &[f32]) -> Vec<f32>;

struct Buggy {
    name: &'static str,
    bug: Bug,
}

struct BuggyModel(Box<dyn LoadedModel>, Bug);

impl Engine for Buggy {
    fn name(&self) -> &str {
        self.name
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, m: &harness::case::ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        Ok(Box::new(BuggyModel(CandleTxEngine.load(m)?, self.bug)))
    }
}

impl LoadedModel for BuggyModel {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        let mut inputs = inputs.clone();
        for n in inputs.named.iter_mut().filter(|n| n.name == "pixel_values") {
            if let InputData::F32(v) = &n.data {
                n.data = InputData::F32((self.1)(&n.shape, v));
            }
        }
        self.0.run(&inputs, taps)
    }
    fn taps(&self) -> Option<Vec<String>> {
        self.0.taps()
    }
}

/// The port takes the buffer it is given as [B, H, W, C] (an image library's layout) and
/// transposes it to the model's [B, C, H, W].
fn reads_nhwc(shape: &[usize], v: &[f32]) -> Vec<f32> {
    let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0.0; v.len()];
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[((bi * c + ci) * h + y) * w + x] = v[((bi * h + y) * w + x) * c + ci];
                }
            }
        }
    }
    out
}

/// The port normalizes again an image that is already normalized: (x - 0.5) / 0.5.
fn normalizes_twice(_: &[usize], v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| (x - 0.5) / 0.5).collect()
}

fn run(bug: Bug, name: &'static str) -> harness::report::TrialReport {
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    repo.run("vit/pixels", name, vec![Arc::new(Buggy { name, bug })])
}

#[test]
fn candle_vit_passes_unmodified() {
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    let r = repo.run("vit/pixels", "candle-transformers", vec![]);
    assert_eq!(r.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&r));
}

#[test]
fn nhwc_pixels_are_caught_at_the_embeddings_and_named_as_a_layout() {
    let r = run(reads_nhwc, "reads-nhwc");
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    let first = &r.taps[r.first_divergence.expect("a divergence")];
    assert_eq!(first.name, "vit.embeddings", "{text}");
    assert_eq!(r.hints[0].kind, HintKind::InputLayout, "{text}");
    assert!(r.hints[0].message.contains("as [B, H, W, C]"), "{text}");
}

#[test]
fn a_normalization_bug_is_caught_and_not_called_a_layout() {
    let r = run(normalizes_twice, "normalizes-twice");
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, "vit.embeddings", "{text}");
    assert!(!r.hints.iter().any(|h| h.kind == HintKind::InputLayout), "{text}");
}

/// One malformed `pixel_values` per entry: the error names the file and the line of the input.
#[test]
fn malformed_named_inputs_are_located_errors() {
    let bad = [
        (
            "random: {shape: [1, 3, 16, 16], dtype: int64, seed: 1, low: 0, high: 9}",
            "is int64, the forward takes float32",
        ),
        ("random: {shape: [3, 16, 16], dtype: float32, seed: 1}", "has rank 3"),
        ("npy: nowhere.npy", "cannot read `pixel_values`"),
        ("random: {shape: [1, 3, 16, 16], dtype: float16, seed: 1}", "unknown dtype `float16`"),
        ("[[[[1.0, .nan]]]]", "non-finite value"),
        ("[[[[1.0, 2.0], [3.0]]]]", "ragged nested list"),
    ];
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    for (value, want) in bad {
        let text = format!("model: vit-tiny\ninputs:\n  pixel_values:\n    {value}\ntaps: [logits]\n");
        repo.write("cases/vit/bad.yaml", &text);
        let e = repo.load("vit/bad").expect_err(value);
        let shown = e.to_string();
        assert!(shown.contains(want), "{value}: {shown}");
        assert!(shown.contains("bad.yaml:"), "{value}: not located: {shown}");
        assert!(e.pos.is_some_and(|p| p.line >= 3), "{value}: {shown}");
    }
    // A name the forward does not take.
    repo.write("cases/vit/bad.yaml", "model: vit-tiny\ninputs:\n  pixel_value: [[[[1.0]]]]\ntaps: [logits]\n");
    let shown = repo.load("vit/bad").expect_err("unknown input").to_string();
    assert!(
        shown.contains("not an input of ViTForImageClassification") && shown.contains("did you mean `pixel_values`"),
        "{shown}"
    );
}

/// The goldens were made on the tensor the goldens tool built; a harness that builds another
/// (the generator or a `.npy` reader disagreeing between Rust and Python) is an error, not a
/// comparison against the wrong input.
#[test]
fn an_input_other_than_the_goldens_one_is_an_error() {
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    let mpath = repo.path("goldens/vit/pixels/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let case = repo.load("vit/pixels").unwrap();
    let ours = harness::golden::input_sha256(case.inputs.named("pixel_values").unwrap());
    assert_eq!(m["inputs"][0]["sha256"], ours.as_str(), "Rust and Python build the same pixels");
    m["inputs"][0]["sha256"] = "0".repeat(64).into();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = repo.run("vit/pixels", "candle-transformers", vec![]);
    assert_eq!(r.verdict, Verdict::Error);
    assert!(r.error.as_deref().unwrap_or("").contains("builds another `pixel_values`"), "{:?}", r.error);
}
