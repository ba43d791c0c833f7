//! A tap seen as rows: `[batch, seq, ...]` as `batch x seq` rows of `width` values (or
//! `[batch, ...]` as batch rows of one position), plus which rows hold real tokens.

use crate::case::Case;
use crate::metrics::{AllClose, Metrics, Selection, compare};
use crate::report::TapReport;
use crate::structure::TapKind;
use crate::tolerance::{Observed, Tolerance};
pub use crate::trial::selection_rows;

pub struct Rows<'a> {
    pub data: &'a [f32],
    pub batch: usize,
    pub seq: usize,
    pub width: usize,
}

impl<'a> Rows<'a> {
    pub fn new(data: &'a [f32], shape: &[usize], kind: TapKind) -> Option<Rows<'a>> {
        let (batch, seq) = match (kind, shape.len()) {
            (TapKind::Tokens, n) if n >= 2 => (shape[0], shape[1]),
            // Per-position taps (RoPE tables, position embeddings): `[1, seq, ...]`, where a
            // position bug shows first.
            (TapKind::Positions, n) if n >= 2 => (shape[0], shape[1]),
            (TapKind::Rows, n) if n >= 1 => (shape[0], 1),
            _ => return None,
        };
        let rows = batch.checked_mul(seq)?;
        if rows == 0 || !data.len().is_multiple_of(rows) {
            return None;
        }
        Some(Rows { data, batch, seq, width: data.len() / rows })
    }
    pub fn row(&self, b: usize, s: usize) -> &'a [f32] {
        let i = (b * self.seq + s) * self.width;
        &self.data[i..i + self.width]
    }
}

/// Per-row failure ratio: max over the row of `|a - e| / (atol + rtol |e|)`; > 1 means the row
/// has an element out of allclose.
pub fn row_ratio(a: &[f32], e: &[f32], tol: AllClose) -> f64 {
    let mut worst = 0.0f64;
    for (&x, &y) in a.iter().zip(e) {
        let d = (x as f64 - y as f64).abs();
        let allowed = (tol.atol + tol.rtol * (y as f64).abs()).max(1e-30);
        let r = if x.is_finite() { d / allowed } else { f64::INFINITY };
        worst = worst.max(r);
    }
    worst
}

/// The allclose parameters used to judge rows: the tap's, or a float32-scale default when its
/// tolerance has no allclose criterion (cosine/SQNR-only taps).
pub fn row_tolerance(tol: &Tolerance) -> AllClose {
    if tol.has_allclose() { tol.allclose() } else { AllClose { atol: 1e-5, rtol: 1e-4 } }
}

/// Judge `candidate` against `golden` with the tap's tolerance and the trial's selection of
/// rows; argmax criteria do not apply to a transformed tensor (an argmax-only tolerance falls
/// back to the default allclose). Returns the metrics and whether the criteria hold.
pub fn within_tolerance(
    case: &Case,
    tap: &TapReport,
    kind: TapKind,
    candidate: &[f32],
    golden: &[f32],
) -> (Metrics, bool) {
    let rows = selection_rows(case, kind, super::masked(case, &tap.name), &tap.shape);
    let sel = rows.as_deref().map(|r| Selection { row_len: golden.len() / r.len().max(1), rows: r });
    let mut tol = Tolerance { argmax: None, ..tap.tolerance.clone() };
    if tol.validate().is_err() {
        tol = Tolerance::default();
    }
    let m = compare(candidate, golden, tol.allclose(), sel);
    let ok = tol.check(Observed { metrics: &m, logits: None, noise_floor: tap.noise_floor }).is_empty();
    (m, ok)
}
