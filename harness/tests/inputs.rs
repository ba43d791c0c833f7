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
use harness_api::inputs::{InputData, NamedInput};

/// The float values of input `name`, when `n` is it.
fn floats<'a>(n: &'a mut NamedInput, name: &str) -> Option<(Vec<usize>, &'a mut Vec<f32>)> {
    match &mut n.data {
        InputData::F32(v) if n.name == name => Some((n.shape.clone(), v)),
        _ => None,
    }
}

/// A candle-transformers model behind an input-handling bug, written here independently of the
/// detectors: `bug` rewrites named inputs (C order) before the model sees them.
type Bug = fn(&mut NamedInput);

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
        inputs.named.iter_mut().for_each(self.1);
        self.0.run(&inputs, taps)
    }
    fn taps(&self) -> Option<Vec<String>> {
        self.0.taps()
    }
}

/// The port takes the buffer it is given as [B, H, W, C] (an image library's layout) and
/// transposes it to the model's [B, C, H, W].
fn reads_nhwc(n: &mut NamedInput) {
    let Some((shape, v)) = floats(n, "pixel_values") else { return };
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
    *v = out;
}

/// The port normalizes again an image that is already normalized: (x - 0.5) / 0.5.
fn normalizes_twice(n: &mut NamedInput) {
    if let Some((_, v)) = floats(n, "pixel_values") {
        v.iter_mut().for_each(|x| *x = (*x - 0.5) / 0.5);
    }
}

/// The port applies Whisper's log-mel scaling, (x + 4) / 4, to features that already have it.
fn log_mel_scaled_again(n: &mut NamedInput) {
    if let Some((_, v)) = floats(n, "input_features") {
        v.iter_mut().for_each(|x| *x = (*x + 4.0) / 4.0);
    }
}

/// The port's feature extractor writes the spectrogram frame-major, [B, frames, mel], and the
/// model reads it as [B, mel, frames].
fn frames_major(n: &mut NamedInput) {
    let Some((shape, v)) = floats(n, "input_features") else { return };
    let (b, mel, frames) = (shape[0], shape[1], shape[2]);
    let mut out = vec![0.0; v.len()];
    for bi in 0..b {
        for m in 0..mel {
            for f in 0..frames {
                out[(bi * mel + m) * frames + f] = v[(bi * frames + f) * mel + m];
            }
        }
    }
    *v = out;
}

/// The port drops the decoder's start token and appends an end token (its own "shift"): every
/// decoder position sees the next token.
fn decoder_shifted(n: &mut NamedInput) {
    if let (InputData::I64(v), "decoder_input_ids") = (&mut n.data, n.name.as_str()) {
        let seq = n.shape[1];
        for row in v.chunks_mut(seq) {
            row.rotate_left(1);
            row[seq - 1] = 2;
        }
    }
}

fn run_on(case: &str, bug: Bug, name: &'static str) -> harness::report::TrialReport {
    let repo = TempRepo::with_cases(&[case]);
    repo.run(case, name, vec![Arc::new(Buggy { name, bug })])
}

fn run(bug: Bug, name: &'static str) -> harness::report::TrialReport {
    run_on("vit/pixels", bug, name)
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
    assert_eq!(r.hints[0].kind, HintKind::InputNormalization, "{text}");
    assert!(r.hints[0].message.contains("normalizes it again with mean 0.5, std 0.5"), "{text}");
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

/// An engine written here that "computes" vit/pixels by reading its goldens, with the patch
/// sequence of `vit.embeddings.patch_embeddings` ([batch, 16 patches of a 4x4 grid, hidden])
/// taken one patch to the right in each grid row (wrapping): a port whose patch grid is offset.
struct ShiftedPatches(std::path::PathBuf);
struct ShiftedPatchesModel(std::path::PathBuf);

impl Engine for ShiftedPatches {
    fn name(&self) -> &str {
        "patch-shifted"
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, _: &harness::case::ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        Ok(Box::new(ShiftedPatchesModel(self.0.clone())))
    }
}

impl LoadedModel for ShiftedPatchesModel {
    fn run(&self, _: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        let mut out = Outputs::new();
        for t in taps {
            let g = harness::tensor::read_npy(&self.0.join(format!("{t}.npy")), None)?;
            let (shape, mut v) = (g.shape().to_vec(), g.data().to_vec());
            if *t == "vit.embeddings.patch_embeddings" {
                let d = shape[2];
                for image in v.chunks_mut(16 * d) {
                    for grid_row in image.chunks_mut(4 * d) {
                        grid_row.rotate_left(d);
                    }
                }
            }
            out.insert(t.to_string(), harness::tensor::Tensor::new(shape, v)?);
        }
        Ok(out)
    }
}

#[test]
fn a_shifted_patch_grid_is_named_on_the_patch_sequence() {
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    let engine = Arc::new(ShiftedPatches(repo.path("goldens/vit/pixels")));
    let r = repo.run("vit/pixels", "patch-shifted", vec![engine]);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, "vit.embeddings.patch_embeddings", "{text}");
    assert_eq!(r.hints[0].kind, HintKind::TokenMisalignment, "{text}");
}

#[test]
fn a_frame_major_spectrogram_is_caught_in_the_encoder_and_named_as_a_layout() {
    let r = run_on("whisper/features-tanh", frames_major, "frames-major");
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, "model.encoder.layer_norm", "{text}");
    assert_eq!(r.hints[0].kind, HintKind::InputLayout, "{text}");
    assert!(r.hints[0].message.contains("`input_features` as [B, frames, mel]"), "{text}");
}

#[test]
fn spectrogram_scaling_applied_twice_is_named() {
    let r = run_on("whisper/features-tanh", log_mel_scaled_again, "log-mel-twice");
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.hints[0].kind, HintKind::InputNormalization, "{text}");
    assert!(r.hints[0].message.contains("Whisper's log-mel scaling"), "{text}");
}

#[test]
fn shifted_decoder_tokens_leave_the_encoder_exact_and_fail_the_decoder() {
    let r = run_on("whisper/features-tanh", decoder_shifted, "decoder-shifted");
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    let enc = r.taps.iter().find(|t| t.name == "model.encoder.layer_norm").unwrap();
    assert!(enc.status.is_pass(), "{text}");
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, "model.decoder.layer_norm", "{text}");
    assert!(!r.hints.iter().any(|h| h.kind == HintKind::InputLayout), "{text}");
}

/// A port whose batching is broken: with more than one image it reads every image after the
/// first backwards. Alone, every image is right.
fn batch_only_bug(n: &mut NamedInput) {
    let Some((shape, v)) = floats(n, "pixel_values") else { return };
    if shape[0] < 2 {
        return;
    }
    let per = shape[1..].iter().product::<usize>();
    v[per..].reverse();
}

#[test]
fn a_named_input_case_shrinks_to_one_batch_row_and_writes_it_as_a_case() {
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    let case = repo.load("vit/pixels").unwrap();
    assert_eq!(case.inputs.named[0].shape[0], 2);
    let shrink = |bug: Bug, name: &'static str| {
        let suite = repo.suite(vec![Arc::new(Buggy { name, bug })]);
        let e = suite.registry.get(name).unwrap().clone();
        let model = suite.model(&e, &case.model).unwrap();
        let expected = suite.expected(&case).unwrap();
        harness::shrink::rows::shrink_rows(&case, &e, model.as_ref(), expected.as_ref(), false)
    };
    let s = shrink(normalizes_twice, "normalizes-twice").unwrap();
    assert_eq!((s.row, s.rows), (0, 2));
    assert_eq!(s.case.inputs.named[0].shape, [1, 3, 16, 16]);
    assert_eq!(s.case.inputs.named[0], case.inputs.named[0].select_rows(&[0]));
    assert_eq!(s.case.inputs.batch(), 1, "the batch size the engines are told");
    assert_eq!(s.report.taps[s.report.first_divergence.unwrap()].name, "vit.embeddings");
    // Written as a case with its image in a .npy beside it, which loads back as that row.
    let written = harness::shrink::regression::write_row(repo.root(), &case, &s, "normalizes-twice").unwrap();
    let id = harness::shrink::regression::row_case_id(&case, &s);
    assert!(id.starts_with("regressions/vit-pixels-row0-vit.embeddings"), "{id}");
    assert_eq!(written.len(), 2, "{written:?}");
    let back = repo.load(&id).unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&written[0]).unwrap()));
    assert_eq!(back.inputs.named, s.case.inputs.named);
    assert_eq!(back.taps.len(), case.taps.len());
    // A bug that needs the batch: no row fails alone, and the error says so.
    let e = shrink(batch_only_bug, "batch-only").err().expect("no single row fails");
    assert!(e.to_string().contains("the failure needs the batch"), "{e}");
}
