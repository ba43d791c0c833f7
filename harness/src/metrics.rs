//! Metrics of an engine tensor `a` against its golden `e`, all in one pass.
//!
//! Exact semantics (also in README.md, "Metrics"):
//! - allclose, per element: `|a - e| <= atol + rtol * |e|`, e the golden. An element that fails
//!   is a *mismatch*; NaN or ±Inf in `a` where `e` is finite is always a mismatch.
//! - `max_abs = max |a - e|` (with its flat index), `mean_abs = mean |a - e|`.
//! - `max_rel = max |a - e| / max(|e|, rel_floor)`, `rel_floor = max(atol, 1e-6)`: relative
//!   error is never divided by ~0.
//! - `cosine = <a, e> / (|a| |e|)` over the flattened (selected) elements; 1 when both are zero.
//! - `nmse = sum (a - e)^2 / sum e^2`; `sqnr_db = -10 log10 nmse` (+inf when exact).
//! - `norm_ratio = |a| / |e|`.
//!
//! Non-finite elements are excluded from the sums (they are counted instead). Sums accumulate in
//! f64. Elements of padding rows are skipped unless the case compares padding.

use serde::Serialize;

/// Per-element tolerance parameters the pass needs (the rest is judged on the summary).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllClose {
    pub atol: f64,
    pub rtol: f64,
}

/// Which elements take part: the tensor seen as rows of `row_len` elements, row r included
/// iff `rows[r]`. `None` means every element.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub row_len: usize,
    pub rows: &'a [bool],
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Elements compared (selected, golden finite).
    pub n: usize,
    pub max_abs: f64,
    /// Flat index of `max_abs` in the full tensor.
    pub max_abs_at: Option<usize>,
    pub mean_abs: f64,
    pub max_rel: f64,
    pub cosine: f64,
    pub nmse: f64,
    pub sqnr_db: f64,
    pub norm_ratio: f64,
    pub mismatches: usize,
    /// Flat index of the first mismatch in memory order.
    pub first_mismatch_at: Option<usize>,
    pub nan: usize,
    pub inf: usize,
    /// Non-finite values in the golden (a corrupt golden; reported as an error by callers).
    pub golden_nonfinite: usize,
    pub first_golden_nonfinite_at: Option<usize>,
    /// Flat index of the first NaN/Inf of the engine.
    pub first_nonfinite_at: Option<usize>,
}

impl Metrics {
    pub fn mismatch_fraction(&self) -> f64 {
        let total = self.n + self.nan + self.inf;
        if total == 0 { 0.0 } else { self.mismatches as f64 / total as f64 }
    }
}

/// Running sums; mergeable so chunks can be reduced in any grouping.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    n: usize,
    max_abs: f64,
    max_abs_at: Option<usize>,
    sum_abs: f64,
    max_rel: f64,
    dot: f64,
    aa: f64,
    ee: f64,
    dd: f64,
    mismatches: usize,
    first_mismatch_at: Option<usize>,
    nan: usize,
    inf: usize,
    golden_nonfinite: usize,
    first_golden_nonfinite_at: Option<usize>,
    first_nonfinite_at: Option<usize>,
}

fn min_opt(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Acc {
    #[inline(always)]
    fn push(&mut self, i: usize, a: f32, e: f32, tol: AllClose, rel_floor: f64) {
        if !e.is_finite() {
            if a.to_bits() != e.to_bits() {
                self.golden_nonfinite += 1;
                self.first_golden_nonfinite_at = self.first_golden_nonfinite_at.or(Some(i));
            }
            return;
        }
        if !a.is_finite() {
            if a.is_nan() {
                self.nan += 1
            } else {
                self.inf += 1
            }
            self.first_nonfinite_at = self.first_nonfinite_at.or(Some(i));
            self.mismatches += 1;
            self.first_mismatch_at = self.first_mismatch_at.or(Some(i));
            return;
        }
        let (a, e) = (a as f64, e as f64);
        let d = a - e;
        let ad = d.abs();
        let ae = e.abs();
        self.n += 1;
        if ad > self.max_abs || self.max_abs_at.is_none() {
            self.max_abs = ad;
            self.max_abs_at = Some(i);
        }
        self.sum_abs += ad;
        let rel = ad / ae.max(rel_floor);
        if rel > self.max_rel {
            self.max_rel = rel;
        }
        self.dot += a * e;
        self.aa += a * a;
        self.ee += e * e;
        self.dd += d * d;
        if ad > tol.atol + tol.rtol * ae {
            self.mismatches += 1;
            self.first_mismatch_at = self.first_mismatch_at.or(Some(i));
        }
    }

    /// `other` covers later indices than `self`.
    fn merge(mut self, o: Acc) -> Acc {
        if o.max_abs_at.is_some() && (self.max_abs_at.is_none() || o.max_abs > self.max_abs) {
            self.max_abs = o.max_abs;
            self.max_abs_at = o.max_abs_at;
        }
        self.n += o.n;
        self.sum_abs += o.sum_abs;
        self.max_rel = self.max_rel.max(o.max_rel);
        self.dot += o.dot;
        self.aa += o.aa;
        self.ee += o.ee;
        self.dd += o.dd;
        self.mismatches += o.mismatches;
        self.first_mismatch_at = min_opt(self.first_mismatch_at, o.first_mismatch_at);
        self.nan += o.nan;
        self.inf += o.inf;
        self.golden_nonfinite += o.golden_nonfinite;
        self.first_golden_nonfinite_at = min_opt(self.first_golden_nonfinite_at, o.first_golden_nonfinite_at);
        self.first_nonfinite_at = min_opt(self.first_nonfinite_at, o.first_nonfinite_at);
        self
    }

    fn finish(self) -> Metrics {
        let na = self.aa.sqrt();
        let ne = self.ee.sqrt();
        let cosine = if na == 0.0 && ne == 0.0 {
            1.0
        } else if na == 0.0 || ne == 0.0 {
            0.0
        } else {
            (self.dot / (na * ne)).clamp(-1.0, 1.0)
        };
        let nmse = if self.ee > 0.0 {
            self.dd / self.ee
        } else if self.dd == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        Metrics {
            n: self.n,
            max_abs: self.max_abs,
            max_abs_at: self.max_abs_at,
            mean_abs: if self.n > 0 { self.sum_abs / self.n as f64 } else { 0.0 },
            max_rel: self.max_rel,
            cosine,
            nmse,
            sqnr_db: -10.0 * nmse.log10(),
            norm_ratio: if ne > 0.0 {
                na / ne
            } else if na == 0.0 {
                1.0
            } else {
                f64::INFINITY
            },
            mismatches: self.mismatches,
            first_mismatch_at: self.first_mismatch_at,
            nan: self.nan,
            inf: self.inf,
            golden_nonfinite: self.golden_nonfinite,
            first_golden_nonfinite_at: self.first_golden_nonfinite_at,
            first_nonfinite_at: self.first_nonfinite_at,
        }
    }
}

/// Elements per work unit; large taps are split into chunks reduced in parallel (rayon).
const CHUNK: usize = 1 << 16;

/// Compare `actual` with `expected` (same length) in one pass.
pub fn compare(actual: &[f32], expected: &[f32], tol: AllClose, sel: Option<Selection<'_>>) -> Metrics {
    use rayon::prelude::*;
    assert_eq!(actual.len(), expected.len(), "compare needs equal lengths");
    let rel_floor = tol.atol.max(1e-6);
    let n = actual.len();
    let included = |i: usize| sel.is_none_or(|s| s.rows.get(i / s.row_len.max(1)).copied().unwrap_or(false));
    let chunk = |start: usize| {
        let end = (start + CHUNK).min(n);
        let mut acc = Acc::default();
        match sel {
            None => {
                for i in start..end {
                    acc.push(i, actual[i], expected[i], tol, rel_floor);
                }
            }
            Some(_) => {
                for i in (start..end).filter(|&i| included(i)) {
                    acc.push(i, actual[i], expected[i], tol, rel_floor);
                }
            }
        }
        acc
    };
    let starts = (0..n).step_by(CHUNK);
    let acc = if n > 4 * CHUNK {
        // `reduce` keeps chunk order, so first-index fields stay the first in memory order.
        starts.collect::<Vec<_>>().into_par_iter().map(chunk).reduce(Acc::default, Acc::merge)
    } else {
        starts.map(chunk).fold(Acc::default(), Acc::merge)
    };
    acc.finish()
}

/// Flat index -> multi-index for a row-major shape.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    const T: AllClose = AllClose { atol: 1e-5, rtol: 0.0 };

    #[test]
    fn exact_match() {
        let m = compare(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0], T, None);
        assert_eq!((m.max_abs, m.mismatches, m.nmse), (0.0, 0, 0.0));
        assert_eq!(m.sqnr_db, f64::INFINITY);
        assert_relative_eq!(m.cosine, 1.0);
    }

    #[test]
    fn metrics_match_their_definitions() {
        let a = [1.0f32, 2.0, 3.5, -1.0];
        let e = [1.0f32, 2.5, 3.0, 1.0];
        let m = compare(&a, &e, AllClose { atol: 0.1, rtol: 0.1 }, None);
        assert_eq!(m.max_abs, 2.0);
        assert_eq!(m.max_abs_at, Some(3));
        assert_relative_eq!(m.mean_abs, (0.0 + 0.5 + 0.5 + 2.0) / 4.0);
        let dot = 1.0 + 5.0 + 10.5 - 1.0;
        let na = (1.0f64 + 4.0 + 12.25 + 1.0).sqrt();
        let ne = (1.0f64 + 6.25 + 9.0 + 1.0).sqrt();
        assert_relative_eq!(m.cosine, dot / (na * ne), epsilon = 1e-12);
        assert_relative_eq!(m.nmse, (0.25 + 0.25 + 4.0) / (1.0 + 6.25 + 9.0 + 1.0), epsilon = 1e-12);
        assert_relative_eq!(m.norm_ratio, na / ne, epsilon = 1e-12);
        // |d| <= 0.1 + 0.1|e|: 0 ok; 0.5 > 0.35; 0.5 > 0.4; 2 > 0.2
        assert_eq!(m.mismatches, 3);
        assert_eq!(m.first_mismatch_at, Some(1));
        assert_relative_eq!(m.max_rel, 2.0);
    }

    #[test]
    fn relative_error_is_not_divided_by_zero() {
        let m = compare(&[1e-7], &[0.0], T, None);
        assert_relative_eq!(m.max_rel, 1e-7 / 1e-5, max_relative = 1e-6);
    }

    #[test]
    fn nan_in_engine_fails_and_is_counted() {
        let m = compare(&[f32::NAN, 1.0, f32::INFINITY], &[0.0, 1.0, 2.0], T, None);
        assert_eq!((m.nan, m.inf, m.mismatches, m.n), (1, 1, 2, 1));
        assert_eq!(m.first_nonfinite_at, Some(0));
    }

    #[test]
    fn golden_nan_is_flagged_not_compared() {
        let m = compare(&[1.0, 1.0], &[f32::NAN, 1.0], T, None);
        assert_eq!((m.golden_nonfinite, m.first_golden_nonfinite_at, m.n), (1, Some(0), 1));
    }

    #[test]
    fn selection_skips_rows() {
        let a = [0.0f32, 0.0, 9.0, 9.0];
        let e = [0.0f32; 4];
        let m = compare(&a, &e, T, Some(Selection { row_len: 2, rows: &[true, false] }));
        assert_eq!((m.n, m.mismatches, m.max_abs), (2, 0, 0.0));
    }

    #[test]
    fn merge_is_order_consistent() {
        let a: Vec<f32> = (0..100).map(|i| (i as f32).sin()).collect();
        let e: Vec<f32> = (0..100).map(|i| (i as f32).sin() + if i % 7 == 3 { 0.01 } else { 0.0 }).collect();
        let whole = compare(&a, &e, T, None);
        let rel_floor = 1e-5;
        let mut left = Acc::default();
        let mut right = Acc::default();
        for i in 0..100 {
            if i < 37 { left.push(i, a[i], e[i], T, rel_floor) } else { right.push(i, a[i], e[i], T, rel_floor) }
        }
        let merged = left.merge(right).finish();
        assert_eq!(merged.first_mismatch_at, whole.first_mismatch_at);
        assert_eq!(merged.max_abs_at, whole.max_abs_at);
        assert_eq!(merged.mismatches, whole.mismatches);
    }

    #[test]
    fn parallel_chunks_agree_with_a_serial_pass() {
        let n = 5 * CHUNK + 123;
        let a: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        let e: Vec<f32> =
            (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 + if i % 100_003 == 5 { 0.5 } else { 0.0 }).collect();
        let m = compare(&a, &e, T, None);
        let mut acc = Acc::default();
        for i in 0..n {
            acc.push(i, a[i], e[i], T, 1e-5);
        }
        let s = acc.finish();
        assert_eq!(
            (m.mismatches, m.first_mismatch_at, m.max_abs_at),
            (s.mismatches, s.first_mismatch_at, s.max_abs_at)
        );
        approx::assert_relative_eq!(m.nmse, s.nmse, max_relative = 1e-9);
    }

    #[test]
    fn unravel_row_major() {
        assert_eq!(unravel(7, &[2, 3, 2]), vec![1, 0, 1]);
    }
}
