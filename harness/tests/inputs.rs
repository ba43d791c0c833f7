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

/// One tap's tensor as an [`Edit`] changes it (its shape may change too).
struct Out {
    shape: Vec<usize>,
    v: Vec<f32>,
}

/// Edits one tap's tensor (by name) of an engine that reads its outputs from goldens.
type Edit = fn(&str, &mut Out);

/// An engine written here that "computes" a case by reading its goldens, with `edit` applied:
/// the planted bug.
struct FromGoldens {
    name: &'static str,
    dir: std::path::PathBuf,
    edit: Edit,
}
struct FromGoldensModel(std::path::PathBuf, Edit);

impl Engine for FromGoldens {
    fn name(&self) -> &str {
        self.name
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, _: &harness::case::ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        Ok(Box::new(FromGoldensModel(self.dir.clone(), self.edit)))
    }
}

impl LoadedModel for FromGoldensModel {
    fn run(&self, _: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        let mut out = Outputs::new();
        for t in taps {
            let g = harness::tensor::read_npy(&self.0.join(format!("{t}.npy")), None)?;
            let mut o = Out { shape: g.shape().to_vec(), v: g.data().to_vec() };
            (self.1)(t, &mut o);
            out.insert(t.to_string(), harness::tensor::Tensor::new(o.shape, o.v)?);
        }
        Ok(out)
    }
}

/// Asserts the first divergence is `tap` and the top hint is of `kind`; returns the report's
/// text and that hint's message.
fn caught_at(r: &harness::report::TrialReport, tap: &str, kind: HintKind) -> (String, String) {
    let text = harness::report::terminal::render(r);
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, tap, "{text}");
    assert_eq!(r.hints.first().map(|h| h.kind), Some(kind), "{text}");
    let message = r.hints[0].message.clone();
    (text, message)
}

fn run_from_goldens(case: &str, name: &'static str, edit: Edit) -> harness::report::TrialReport {
    let repo = TempRepo::with_cases(&[case]);
    let engine = Arc::new(FromGoldens { name, dir: repo.path(&format!("goldens/{case}")), edit });
    repo.run(case, name, vec![engine])
}

/// The patch sequence of `vit.embeddings.patch_embeddings` ([batch, 16 patches of a 4x4 grid,
/// hidden]) taken one patch to the right in each grid row (wrapping): a port whose patch grid is
/// offset.
fn patches_shifted(t: &str, o: &mut Out) {
    let Out { shape, v } = o;
    if t == "vit.embeddings.patch_embeddings" {
        let d = shape[2];
        for image in v.chunks_mut(16 * d) {
            for grid_row in image.chunks_mut(4 * d) {
                grid_row.rotate_left(d);
            }
        }
    }
}

/// Whisper's second convolution (`[batch, channels, frames]`) run with stride 1 where HF's is
/// 2: frame 2j is HF's frame j, the odd frames fall between HF's (here: the mean of the two
/// neighbours). `keep` cuts the result to HF's frame count, as a port with a fixed position
/// table would; else the port gives twice the frames.
fn conv_stride_one(t: &str, o: &mut Out, keep: bool) {
    let Out { shape, v } = o;
    if t != "model.encoder.conv2" {
        return;
    }
    let (b, c, n) = (shape[0], shape[1], shape[2]);
    let mut out = Vec::with_capacity(b * c * 2 * n);
    for row in v.chunks(n) {
        for i in 0..2 * n {
            let (j, k) = (i / 2, (i / 2 + 1).min(n - 1));
            out.push(if i % 2 == 0 { row[j] } else { 0.5 * (row[j] + row[k]) + 0.25 });
        }
    }
    *shape = vec![b, c, 2 * n];
    *v = out;
    if keep {
        let cut: Vec<f32> = v.chunks(2 * n).flat_map(|r| r[..n].to_vec()).collect();
        *shape = vec![b, c, n];
        *v = cut;
    }
}

#[test]
fn a_convolution_stride_is_named_on_the_frames_of_a_channel_first_tap() {
    // Cut to HF's length: the shapes agree, frame 2j is HF's frame j.
    let r = run_from_goldens("whisper/features", "conv-stride-cut", |t, o| conv_stride_one(t, o, true));
    let (text, message) = caught_at(&r, "model.encoder.conv2", HintKind::PositionStride);
    assert!(message.contains("engine position 2·j equals golden position j"), "{text}");
    // Not cut: twice HF's frames; the shapes say the factor, the data confirms the stride.
    let r = run_from_goldens("whisper/features", "conv-stride-long", |t, o| conv_stride_one(t, o, false));
    let (text, message) = caught_at(&r, "model.encoder.conv2", HintKind::PositionStride);
    assert!(message.contains("the engine has 16 positions where HF has 8"), "{text}");
    // The same data with every frame off (no stride explains it): no stride is named.
    let r = run_from_goldens("whisper/features", "conv-off", |t, o| {
        conv_stride_one(t, o, true);
        if t == "model.encoder.conv2" {
            o.v.iter_mut().for_each(|x| *x += 0.1);
        }
    });
    let text = harness::report::terminal::render(&r);
    assert!(!r.hints.iter().any(|h| h.kind == HintKind::PositionStride), "{text}");
}

/// The decoder of `bart/same-length` wrong at row 1's last two positions, where the source
/// (`input_ids`) is padding and the decoder's tokens are real.
fn decoder_wrong_where_the_source_pads(t: &str, o: &mut Out) {
    let Out { shape, v } = o;
    if t.starts_with("model.decoder.") || t == "last_hidden_state" || t == "logits" {
        let (seq, d) = (shape[1], shape[2]);
        for s in 5..7 {
            v[(seq + s) * d..(seq + s + 1) * d].iter_mut().for_each(|x| *x += 0.5);
        }
    }
}

#[test]
fn the_source_mask_does_not_hide_decoder_positions() {
    let r = run_from_goldens("bart/same-length", "decoder-tail", decoder_wrong_where_the_source_pads);
    let text = harness::report::terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    assert_eq!(r.taps[r.first_divergence.expect("a divergence")].name, "model.decoder.layers.0", "{text}");
    // The same error on the encoder's padded positions is not compared: padding is padding there.
    let r = run_from_goldens("bart/same-length", "encoder-pads", |t, o| {
        if t.starts_with("model.encoder.") {
            let (seq, d) = (o.shape[1], o.shape[2]);
            o.v[(seq + 5) * d..(seq + 7) * d].iter_mut().for_each(|x| *x += 0.5);
        }
    });
    assert_eq!(r.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&r));
}

/// Whisper's first convolution (kernel 3) without its padding: 14 frames where HF has 16, frame
/// i of the port being HF's frame i + 1.
fn conv_unpadded(t: &str, o: &mut Out) {
    let Out { shape, v } = o;
    if t == "model.encoder.conv1" {
        let n = shape[2];
        *v = v.chunks(n).flat_map(|r| r[1..n - 1].to_vec()).collect();
        shape[2] = n - 2;
    }
}

#[test]
fn a_convolution_without_its_padding_is_named_from_the_positions_it_keeps() {
    let r = run_from_goldens("whisper/features", "conv-unpadded", conv_unpadded);
    let (text, message) = caught_at(&r, "model.encoder.conv1", HintKind::TokenMisalignment);
    let want = "the engine has 14 positions where HF has 16, and engine position i equals golden position i+1";
    assert!(message.starts_with(want), "{text}");
}

/// A ViT port that leaves out the [CLS] token: 16 positions where HF has 17, the patches the
/// same (later taps unchanged: the first divergence is where the CLS should be added).
fn cls_dropped(t: &str, o: &mut Out) {
    let Out { shape, v } = o;
    if t == "vit.embeddings" {
        let (n, d) = (shape[1], shape[2]);
        *v = v.chunks(n * d).flat_map(|r| r[d..].to_vec()).collect();
        shape[1] = n - 1;
    }
}

#[test]
fn a_dropped_cls_token_is_named_from_the_shapes_and_the_positions() {
    let r = run_from_goldens("vit/pixels", "cls-dropped", cls_dropped);
    let (text, message) = caught_at(&r, "vit.embeddings", HintKind::TokenMisalignment);
    let want = "the engine has 16 positions where HF has 17, and engine position i equals golden position i+1";
    assert!(message.contains(want), "{text}");
}

fn embeddings_times_sqrt_hidden(t: &str, o: &mut Out) {
    let v = &mut o.v;
    if t == "vit.embeddings" {
        v.iter_mut().for_each(|x| *x *= 32f32.sqrt());
    }
}

fn layernorm_doubled(t: &str, o: &mut Out) {
    let v = &mut o.v;
    if t == "vit.layernorm" {
        v.iter_mut().for_each(|x| *x *= 2.0);
    }
}

#[test]
fn a_uniform_factor_that_is_a_config_constant_is_named() {
    let r = run_from_goldens("vit/pixels", "emb-scaled", embeddings_times_sqrt_hidden);
    let text = harness::report::terminal::render(&r);
    let h = r.hints.iter().find(|h| h.kind == HintKind::UniformScale).unwrap_or_else(|| panic!("{text}"));
    assert!(h.message.contains("the factor is sqrt(hidden_size = 32): an embedding multiplier"), "{text}");
    let r = run_from_goldens("vit/pixels", "norm-doubled", layernorm_doubled);
    let text = harness::report::terminal::render(&r);
    let h = r.hints.iter().find(|h| h.kind == HintKind::UniformScale).unwrap_or_else(|| panic!("{text}"));
    assert!(h.message.contains("the factor is 2: a norm computing (1 + w)"), "{text}");
}

#[test]
fn a_shifted_patch_grid_is_named_on_the_patch_sequence() {
    let r = run_from_goldens("vit/pixels", "patch-shifted", patches_shifted);
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

/// A port that reads the third decoder token wrong (an off-by-one in its token buffer past the
/// start-of-transcript prefix): with fewer than three decoder tokens it is right.
fn decoder_token_2_wrong(n: &mut NamedInput) {
    if let (InputData::I64(v), "decoder_input_ids") = (&mut n.data, n.name.as_str()) {
        let seq = n.shape[1];
        if seq > 2 {
            for row in v.chunks_mut(seq) {
                row[2] = (row[2] + 1) % 64;
            }
        }
    }
}

#[test]
fn a_decoder_case_shrinks_to_one_row_and_the_shortest_failing_decoder_prefix() {
    let repo = TempRepo::with_cases(&["whisper/features-tanh"]);
    let case = repo.load("whisper/features-tanh").unwrap();
    assert_eq!(case.model.structure.decoder_causal, Some(true), "measured by the goldens tool");
    let name = "decoder-token-2";
    let suite = repo.suite(vec![Arc::new(Buggy { name, bug: decoder_token_2_wrong })]);
    let e = suite.registry.get(name).unwrap().clone();
    let model = suite.model(&e, &case.model).unwrap();
    let expected = suite.expected(&case).unwrap();
    let s = harness::shrink::rows::shrink_rows(&case, &e, model.as_ref(), expected.as_ref(), false).unwrap();
    let text = harness::report::terminal::render(&s.report);
    assert_eq!((s.row, s.decoder_prefix), (0, Some((3, 4))), "{text}");
    assert_eq!(s.case.inputs.named("decoder_input_ids").unwrap().shape, [1, 3]);
    assert_eq!(s.case.inputs.named("input_features").unwrap().shape, [1, 8, 16], "frames are kept");
    // Written as a case that loads back with the cut decoder ids.
    let written = harness::shrink::regression::write_row(repo.root(), &case, &s, name).unwrap();
    let id = harness::shrink::regression::row_case_id(&case, &s);
    assert!(id.starts_with("regressions/whisper-features-tanh-row0-dec3-"), "{id}");
    let back = repo.load(&id).unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&written[0]).unwrap()));
    assert_eq!(back.inputs.named, s.case.inputs.named);
    // The decoder ids inline (readable), the spectrogram in a .npy beside the case.
    let yaml = std::fs::read_to_string(&written[0]).unwrap();
    assert!(yaml.contains("  decoder_input_ids: [[1, 5, 9]]"), "{yaml}");
    assert_eq!(written.len(), 2, "{written:?}");
    // The same bug on a model whose decoder is not recorded causal: the decoder ids are kept.
    let mut not_causal = case.clone();
    std::sync::Arc::make_mut(&mut not_causal.model.structure).decoder_causal = None;
    let s = harness::shrink::rows::shrink_rows(&not_causal, &e, model.as_ref(), expected.as_ref(), false).unwrap();
    assert_eq!((s.row, s.decoder_prefix), (0, None));
    assert_eq!(s.case.inputs.named("decoder_input_ids").unwrap().shape, [1, 4]);
}

/// A metamorphic case on images (`cases/metamorphic/vit.yaml`): candle-transformers' ViT keeps
/// both properties on every generated batch, and the token property listed is skipped with a
/// note; a port whose batching is broken (it reads every image after the first backwards)
/// breaks batch invariance, found on the first generated input.
#[test]
fn metamorphic_properties_run_on_named_inputs() {
    use harness::metamorphic::{self, Outcome, Property};
    let repo = TempRepo::with_cases(&["metamorphic/vit"]);
    let meta =
        metamorphic::load(repo.root(), &repo.path("cases/metamorphic/vit.yaml"), &mut Default::default()).unwrap();
    assert_eq!(meta.properties, [Property::Determinism, Property::Batch]);
    assert_eq!(meta.skipped.len(), 1, "{:?}", meta.skipped);
    assert!(meta.skipped[0].1.contains("`padding` varies generated token ids"), "{:?}", meta.skipped);
    assert_eq!(meta.named.len(), 3);
    assert_ne!(meta.named[0], meta.named[1], "each generated input draws its own images");
    let suite = repo.suite(vec![]);
    let e = suite.registry.get("candle-transformers").unwrap().clone();
    let model = suite.model(&e, &meta.base.model).unwrap();
    let (report, message) = metamorphic::run_trial(&meta, e.as_ref(), Ok(model.as_ref()), String::new());
    assert_eq!(report.verdict, Verdict::Pass, "{message}");
    assert!(message.contains("ok   batch (3 generated inputs)"), "{message}");
    assert!(message.contains("note: padding skipped"), "{message}");

    let bug = Buggy { name: "batch-only", bug: batch_only_bug };
    let model = bug.load(&meta.base.model).unwrap();
    // As a trial does: the taps the engine produces.
    let mut meta = meta;
    let produced = model.taps().unwrap_or_default();
    meta.base.taps.retain(|t| produced.contains(&t.name));
    assert!(meta.base.taps.len() >= 2, "{produced:?}");
    match metamorphic::check(&meta, Property::Batch, model.as_ref()) {
        Outcome::FailsOn { input, violation } => {
            assert_eq!(input, 0);
            assert!(violation.what.starts_with("row 1 inside the batch of 3 differs"), "{}", violation.what);
        }
        other => panic!("batch invariance does not catch the batching bug: {other:?}"),
    }
    assert!(matches!(metamorphic::check(&meta, Property::Determinism, model.as_ref()), Outcome::Holds { inputs: 3 }));
}

#[test]
fn a_metamorphic_case_needs_inputs_for_a_model_without_ids_and_generates_ids_for_one_with() {
    use harness::metamorphic;
    let repo = TempRepo::with_cases(&["metamorphic/vit", "metamorphic/bert"]);
    let load = |id: &str| {
        metamorphic::load(repo.root(), &repo.path(&format!("cases/{id}.yaml")), &mut Default::default())
            .unwrap_err()
            .to_string()
    };
    repo.write("cases/metamorphic/vit.yaml", "model: vit-tiny\nmetamorphic: [batch]\ntaps: [logits]\n");
    let e = load("metamorphic/vit");
    assert!(e.contains("vit.yaml:1:") && e.contains("its main input is `pixel_values`"), "{e}");
    assert!(e.contains("give its inputs under `inputs:`"), "{e}");
    repo.write(
        "cases/metamorphic/vit.yaml",
        "model: vit-tiny\nmetamorphic: [batch]\ninputs:\n  pixel_values: {random: {shape: [1, 3, 16, 16], dtype: float32, seed: 1}}\ntaps: [logits]\n",
    );
    assert!(load("metamorphic/vit").contains("`batch` needs inputs of at least 2 rows"));
    repo.write(
        "cases/metamorphic/vit.yaml",
        "model: vit-tiny\nmetamorphic: [batch]\ninputs:\n  pixel_values: {random: {shape: [2, 3, 16, 16], dtype: float32, seed: 1}}\n  attention_mask: [[1]]\ntaps: [logits]\n",
    );
    let e = load("metamorphic/vit");
    assert!(e.contains("vit.yaml:5:") && e.contains("`attention_mask` is a token input"), "{e}");
    repo.write(
        "cases/metamorphic/bert.yaml",
        "model: bert-tiny\nmetamorphic: [batch]\ninputs:\n  input_ids: [[1, 2]]\ntaps: [pooler]\n",
    );
    let e = load("metamorphic/bert");
    assert!(e.contains("bert.yaml:4:") && e.contains("takes token ids, which a metamorphic case generates"), "{e}");
}
