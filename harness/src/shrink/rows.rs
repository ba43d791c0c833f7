//! Shrinking a case whose inputs are named tensors (an image, a spectrogram, decoder ids given
//! by name): what shrinks is the batch. Each row is tried alone against the case's own goldens
//! cut to that row (a model computes the rows of a batch independently, so HF's output for row
//! b alone is its batched output's row b, to float32 noise); the first row that fails the way
//! the whole case does is the reproduction. The values inside a row (pixels, frames, tokens
//! given by name) are not shrunk: there is no smaller image that means the same thing. Decoder
//! ids are the exception: when the model's decoder is causal (measured, `decoder_causal` in
//! `structure.json`), the shortest prefix of `decoder_input_ids` that still fails the same way is
//! kept, judged against the decoder's goldens cut to that prefix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::signature::Signature;
use crate::case::{Case, IdMatrix, Inputs};
use crate::engine::{Engine, LoadedModel};
use crate::error::{Error, Result};
use crate::expected::Expected;
use crate::golden::Goldens;
use crate::report::TrialReport;
use crate::structure::TapKind;
use crate::tensor::Tensor;
use harness_api::inputs::InputData;

/// A batch row that fails alone as the whole case does.
pub struct RowShrunk {
    pub signature: Signature,
    /// The row of the case, and how many it has.
    pub row: usize,
    pub rows: usize,
    /// The case cut to that row, and its report against the goldens cut to that row.
    pub case: Case,
    pub report: TrialReport,
    /// `decoder_input_ids` cut to its first `.0` of `.1` tokens (a causal decoder only).
    pub decoder_prefix: Option<(usize, usize)>,
    pub evaluations: u32,
    pub elapsed: Duration,
}

/// The named inputs that follow the decoder's positions (`[batch, seq]`).
const DECODER_INPUTS: [&str; 2] = ["decoder_input_ids", "decoder_attention_mask"];

/// `inputs` with the decoder's ids (and mask) cut to their first `len` positions.
fn decoder_prefix_inputs(inputs: &Inputs, len: usize) -> Inputs {
    let mut out = inputs.clone();
    for n in out.named.iter_mut().filter(|n| DECODER_INPUTS.contains(&n.name.as_str()) && n.shape.len() == 2) {
        let seq = n.shape[1];
        fn keep<T: Copy>(v: &[T], seq: usize, len: usize) -> Vec<T> {
            v.chunks(seq).flat_map(|r| r[..len].iter().copied()).collect()
        }
        n.data = match &n.data {
            InputData::I64(v) => InputData::I64(keep(v, seq, len)),
            InputData::Bool(v) => InputData::Bool(keep(v, seq, len)),
            InputData::F32(v) => InputData::F32(keep(v, seq, len)),
        };
        n.shape[1] = len;
    }
    out
}

fn rows_of(m: &IdMatrix, b: usize) -> IdMatrix {
    IdMatrix { batch: 1, seq: m.seq, data: m.row(b).to_vec() }
}

/// `inputs` cut to batch row `b`.
pub fn row_inputs(inputs: &Inputs, b: usize) -> Inputs {
    Inputs {
        // Without ids, `input_ids` is empty rows that still carry the batch size.
        input_ids: if inputs.has_ids() {
            rows_of(&inputs.input_ids, b)
        } else {
            IdMatrix { batch: 1, seq: 0, data: vec![] }
        },
        attention_mask: inputs.attention_mask.as_ref().map(|m| rows_of(m, b)),
        token_type_ids: inputs.token_type_ids.as_ref().map(|m| rows_of(m, b)),
        named: inputs.named.iter().map(|n| n.select_rows(&[b])).collect(),
    }
}

/// The case's batch size, when every input agrees on it.
fn batch_of(case: &Case) -> Result<usize> {
    let i = &case.inputs;
    let mut sizes: Vec<(String, usize)> = i.named.iter().map(|n| (n.name.clone(), n.shape[0])).collect();
    if i.has_ids() {
        sizes.push(("input_ids".into(), i.input_ids.batch));
    }
    let b = sizes.first().map_or(1, |s| s.1);
    if let Some((name, n)) = sizes.iter().find(|s| s.1 != b) {
        return Err(Error::input(format!(
            "`{name}` has {n} rows where `{}` has {b}: the batch cannot be cut row by row",
            sizes[0].0
        ))
        .file(&case.file));
    }
    Ok(b)
}

/// Golden `t` of a tap of kind `kind` cut to batch row `b` (taps shared by the batch, such as
/// RoPE tables, stay whole).
fn row_golden(t: &Tensor, kind: TapKind, b: usize) -> Result<Tensor> {
    match kind {
        TapKind::Tokens | TapKind::Rows => {
            crate::metamorphic::properties::slice(t, kind, b, 0..t.shape().get(1).copied().unwrap_or(0))
        }
        TapKind::Positions | TapKind::Whole => Ok(t.clone()),
    }
}

/// The goldens of `case`'s taps cut to batch row `b`, in forward order, with their noise floors.
fn row_taps(case: &Case, expected: &dyn Expected, b: usize) -> Result<Vec<(String, Tensor, Option<f64>)>> {
    let mut ordered: Vec<&crate::case::Tap> = case.taps.iter().filter(|t| expected.has(&t.name)).collect();
    ordered.sort_by_key(|t| expected.position(&t.name).unwrap_or(usize::MAX));
    ordered
        .into_iter()
        .map(|t| {
            Ok((t.name.clone(), row_golden(&expected.load(&t.name)?, t.module.kind, b)?, expected.noise_floor(&t.name)))
        })
        .collect()
}

/// Cut `case` (failing on `engine`) to its first batch row that fails alone with the same
/// signature, judged against the case's goldens cut to that row.
pub fn shrink_rows(
    case: &Case,
    engine: &Arc<dyn Engine>,
    model: &dyn LoadedModel,
    expected: &dyn Expected,
    progress: bool,
) -> Result<RowShrunk> {
    let start = Instant::now();
    let batch = batch_of(case)?;
    let (full, _) = crate::trial::assess(case, engine.name(), model, expected, String::new(), None);
    let Some(signature) = Signature::of(&full) else {
        if let Some(e) = &full.error {
            return Err(
                Error::engine(format!("case `{}` cannot run on `{}`: {e}", case.id, engine.name())).file(&case.file)
            );
        }
        return Err(Error::input(format!(
            "case `{}` does not fail on `{}` (verdict {}): there is nothing to shrink",
            case.id,
            engine.name(),
            format!("{:?}", full.verdict).to_lowercase()
        ))
        .file(&case.file));
    };
    for b in 0..batch {
        let mut one = case.clone();
        one.inputs = row_inputs(&case.inputs, b);
        let goldens =
            Goldens::in_memory(&one, &format!("goldens of {}, row {b}", case.id), row_taps(case, expected, b)?);
        let (report, _) = crate::trial::assess(&one, engine.name(), model, &goldens, String::new(), None);
        let sig = Signature::of(&report);
        let same = sig.as_ref().is_some_and(|s| signature.matches(s));
        if progress {
            let how = match (&sig, same) {
                (_, true) => "fails the same way".to_string(),
                (Some(s), false) => format!("fails otherwise ({s})"),
                (None, _) => match &report.error {
                    Some(e) => format!("cannot run: {e}"),
                    None => format!("{:?}", report.verdict).to_lowercase(),
                },
            };
            eprintln!("shrink: row {b} of {batch} alone: {how}");
        }
        if same {
            let mut shrunk = RowShrunk {
                signature,
                row: b,
                rows: batch,
                case: one,
                report,
                decoder_prefix: None,
                // The whole case, then rows 0..=b.
                evaluations: b as u32 + 2,
                elapsed: start.elapsed(),
            };
            shrink_decoder(&mut shrunk, engine.name(), model, expected, b, progress)?;
            shrunk.elapsed = start.elapsed();
            return Ok(shrunk);
        }
    }
    Err(Error::input(format!(
        "no row of case `{}` fails alone the way the whole batch does ({signature}): the failure needs the batch",
        case.id
    ))
    .file(&case.file)
    .hint("keep the case as it is: it is the smallest reproduction the harness can make"))
}

/// Cut the row's `decoder_input_ids` to the shortest prefix that fails the same way, when the
/// decoder is causal: decoder taps (`follows: decoder_input_ids`) are judged against their
/// goldens cut to the prefix; the encoder's stay whole.
fn shrink_decoder(
    shrunk: &mut RowShrunk,
    engine: &str,
    model: &dyn LoadedModel,
    expected: &dyn Expected,
    row: usize,
    progress: bool,
) -> Result<()> {
    let case = &shrunk.case;
    if case.model.structure.decoder_causal != Some(true) {
        return Ok(());
    }
    let Some(seq) = case.inputs.named("decoder_input_ids").filter(|n| n.shape.len() == 2).map(|n| n.shape[1]) else {
        return Ok(());
    };
    let taps = row_taps(case, expected, row)?;
    for len in 1..seq {
        let mut cut = case.clone();
        cut.inputs = decoder_prefix_inputs(&case.inputs, len);
        let mut goldens = Vec::with_capacity(taps.len());
        for (name, g, noise) in &taps {
            let module = case.taps.iter().find(|t| &t.name == name).map(|t| &t.module);
            let g = match module {
                Some(m) if m.follows.as_deref() == Some("decoder_input_ids") => {
                    crate::metamorphic::properties::slice(g, m.kind, 0, 0..len)?
                }
                _ => g.clone(),
            };
            goldens.push((name.clone(), g, *noise));
        }
        let goldens = Goldens::in_memory(&cut, &format!("goldens of {}, {len} decoder tokens", case.id), goldens);
        let (report, _) = crate::trial::assess(&cut, engine, model, &goldens, String::new(), None);
        shrunk.evaluations += 1;
        let same = Signature::of(&report).is_some_and(|s| shrunk.signature.matches(&s));
        if progress {
            eprintln!(
                "shrink: the first {len} of {seq} decoder tokens: {}",
                if same { "fail the same way" } else { "do not" }
            );
        }
        if same {
            shrunk.case = cut;
            shrunk.report = report;
            shrunk.decoder_prefix = Some((len, seq));
            return Ok(());
        }
    }
    Ok(())
}
