//! Metrics of an engine tensor `a` against its golden `e`, all in one pass.
//!
//! Exact semantics (also in docs/diagnosis.md, "Metrics and tolerances"):
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

use crate::tensor::Tensor;

use harness_kernels as kernel;
pub use kernel::isa;

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

/// Elements per work unit (256 KiB of each input: both fit in L2 for the index rescans); large
/// taps are split into chunks reduced in parallel (rayon).
const CHUNK: usize = 1 << 16;

/// The included elements of `[start, end)` as contiguous runs, relative to `start`.
fn spans(start: usize, end: usize, sel: Option<Selection<'_>>, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let Some(s) = sel else {
        out.push((0, end - start));
        return;
    };
    let len = s.row_len.max(1);
    let mut i = start;
    while i < end {
        let row = i / len;
        let row_end = ((row + 1) * len).min(end);
        if s.rows.get(row).copied().unwrap_or(false) {
            match out.last_mut() {
                Some(last) if last.1 == i - start => last.1 = row_end - start,
                _ => out.push((i - start, row_end - start)),
            }
        }
        i = row_end;
    }
}

/// Fold one chunk (`a`, `e`: its elements, `spans`: the included ones, `base`: the flat index
/// of its first) into `acc`, which holds the chunks before it. The vector kernel gives the
/// sums; the first-mismatch and max-abs indices are looked up only when this chunk can hold
/// the answer (no mismatch before it; a larger maximum than before it). A chunk with a NaN or
/// Inf is redone element by element with [`Acc::push`].
fn fold_chunk(acc: Acc, a: &[f32], e: &[f32], spans: &[(usize, usize)], base: usize, tol: AllClose) -> Acc {
    let rel_floor = tol.atol.max(1e-6);
    let ktol = kernel::Tol { atol: tol.atol, rtol: tol.rtol, rel_floor };
    let s = kernel::chunk_sums(a, e, spans, ktol);
    if !s.finite() {
        let mut c = Acc::default();
        for &(start, end) in spans {
            for i in start..end {
                c.push(base + i, a[i], e[i], tol, rel_floor);
            }
        }
        return acc.merge(c);
    }
    let mut c = Acc {
        n: s.n,
        max_abs: s.max_abs.max(0.0),
        sum_abs: s.sum_abs,
        max_rel: s.max_rel,
        dot: s.dot,
        aa: s.aa,
        ee: s.ee,
        dd: s.dd,
        mismatches: s.mismatches,
        ..Acc::default()
    };
    if c.mismatches > 0 && acc.first_mismatch_at.is_none() {
        c.first_mismatch_at = kernel::first_mismatch(a, e, spans, ktol).map(|i| base + i);
    }
    if c.n > 0 && (acc.max_abs_at.is_none() || c.max_abs > acc.max_abs) {
        c.max_abs_at = kernel::first_equal(a, e, spans, s.max_abs).map(|i| base + i);
    }
    acc.merge(c)
}

/// Where the golden's values come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Memory(&'a [f32]),
    /// A float32 file not mapped: each chunk is read (`pread`) into a buffer that stays in
    /// cache, which costs what reading the file once costs; mapping it would add the kernel's
    /// page-table work for every 4 KiB page, more than the comparison itself.
    #[cfg(unix)]
    File(&'a std::fs::File, u64),
}

/// What one worker carries from chunk to chunk.
#[derive(Default)]
struct Work {
    acc: Acc,
    spans: Vec<(usize, usize)>,
    buf: Vec<f32>,
    failed: bool,
}

/// Compare `actual` with `expected` (same length) in one pass.
pub fn compare(actual: &[f32], expected: &[f32], tol: AllClose, sel: Option<Selection<'_>>) -> Metrics {
    assert_eq!(actual.len(), expected.len(), "compare needs equal lengths");
    compare_in_chunks(actual, Source::Memory(expected), tol, sel, CHUNK).expect("memory reads do not fail")
}

/// [`compare`] of two tensors of the same length. A golden that is still a file (see
/// [`Tensor::unmapped_file`]) is streamed from it instead of being mapped.
pub fn compare_golden(actual: &Tensor, golden: &Tensor, tol: AllClose, sel: Option<Selection<'_>>) -> Metrics {
    #[cfg(unix)]
    if let Some((file, offset)) = golden.unmapped_file()
        && actual.numel() == golden.numel()
        && let Some(m) = compare_in_chunks(actual.data(), Source::File(file, offset), tol, sel, CHUNK)
    {
        return m;
    } else if golden.unmapped_file().is_some() && actual.numel() == golden.numel() {
        // Mapping a file that shrank would crash the process (SIGBUS); fail this trial instead.
        panic!("a golden file became unreadable or changed size while it was compared");
    }
    compare(actual.data(), golden.data(), tol, sel)
}

/// The comparison in chunks of `chunk` elements (tests use small ones to cover many chunks
/// cheaply); None when reading the golden's file failed.
fn compare_in_chunks(
    actual: &[f32],
    expected: Source<'_>,
    tol: AllClose,
    sel: Option<Selection<'_>>,
    chunk: usize,
) -> Option<Metrics> {
    use rayon::prelude::*;
    let n = actual.len();
    let fold = |mut w: Work, start: usize| {
        let end = (start + chunk).min(n);
        if w.failed {
            return w;
        }
        spans(start, end, sel, &mut w.spans);
        let e = match expected {
            Source::Memory(e) => &e[start..end],
            #[cfg(unix)]
            Source::File(file, offset) => {
                use std::os::unix::fs::FileExt;
                w.buf.resize(end - start, 0.0);
                let at = offset + 4 * start as u64;
                if w.spans.is_empty() || file.read_exact_at(bytemuck::cast_slice_mut(&mut w.buf), at).is_err() {
                    w.failed |= !w.spans.is_empty();
                    return w;
                }
                if cfg!(target_endian = "big") {
                    w.buf.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                }
                &w.buf[..]
            }
        };
        w.acc = fold_chunk(w.acc, &actual[start..end], e, &w.spans, start, tol);
        w
    };
    let starts = (0..n).step_by(chunk);
    let w = if n > 4 * chunk {
        // `fold` visits the chunks of each split in order and `reduce` merges neighbouring
        // splits left to right, as `fold_chunk` and `Acc::merge` require.
        starts.collect::<Vec<_>>().into_par_iter().fold(Work::default, fold).reduce(Work::default, |l, r| Work {
            acc: l.acc.merge(r.acc),
            failed: l.failed || r.failed,
            ..Work::default()
        })
    } else {
        starts.fold(Work::default(), fold)
    };
    (!w.failed).then(|| w.acc.finish())
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
pub(crate) mod tests {
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

    /// Deterministic pseudo-random numbers (splitmix64), so failures reproduce.
    pub(crate) fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        }
    }

    /// The definition, element by element in memory order, with no chunks or vectors.
    fn reference(a: &[f32], e: &[f32], tol: AllClose, sel: Option<Selection<'_>>) -> Metrics {
        let mut acc = Acc::default();
        for i in 0..a.len() {
            if sel.is_none_or(|s| s.rows.get(i / s.row_len).copied().unwrap_or(false)) {
                acc.push(i, a[i], e[i], tol, tol.atol.max(1e-6));
            }
        }
        acc.finish()
    }

    fn assert_same(got: &Metrics, want: &Metrics, what: &str) {
        let exact = |m: &Metrics| {
            (
                m.n,
                m.max_abs,
                m.max_abs_at,
                m.max_rel,
                m.mismatches,
                m.first_mismatch_at,
                m.nan,
                m.inf,
                m.golden_nonfinite,
                m.first_golden_nonfinite_at,
                m.first_nonfinite_at,
            )
        };
        assert_eq!(exact(got), exact(want), "{what}");
        for (g, w, name) in [
            (got.mean_abs, want.mean_abs, "mean_abs"),
            (got.cosine, want.cosine, "cosine"),
            (got.nmse, want.nmse, "nmse"),
            (got.norm_ratio, want.norm_ratio, "norm_ratio"),
        ] {
            assert!(g == w || ((g - w) / w).abs() < 1e-12, "{what}: {name} {g} vs {w}");
        }
    }

    /// An engine output `a` near the golden `e`; every 2^k-th element (k from `seed`) is off.
    fn pair(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut r = rng(seed);
        let e: Vec<f32> = (0..n).map(|_| (r() * 4.0 - 2.0) as f32).collect();
        let every = 1 << (seed % 12);
        let a = e
            .iter()
            .enumerate()
            .map(|(i, &x)| x + (r() * 2e-5 - 1e-5) as f32 + if i % every == every - 1 { 1e-2 } else { 0.0 })
            .collect();
        (a, e)
    }

    #[test]
    fn fast_path_matches_the_definition() {
        let tols = [T, AllClose { atol: 1e-4, rtol: 1e-3 }, AllClose { atol: 0.0, rtol: 0.0 }];
        let c = 64;
        for (k, &n) in [0, 1, 7, 8, 9, 63, 1000, c - 1, c + 5, 3 * c + 1, 5 * c + 3, 40 * c + 7].iter().enumerate() {
            let (a, e) = pair(n, k as u64);
            for tol in tols {
                let what = format!("n={n} {tol:?}");
                assert_same(
                    &compare_in_chunks(&a, Source::Memory(&e), tol, None, c).unwrap(),
                    &reference(&a, &e, tol, None),
                    &what,
                );
                for row_len in [1, 3, 64, 1000] {
                    let mut r = rng(n as u64 + row_len as u64);
                    let rows: Vec<bool> = (0..n.div_ceil(row_len)).map(|_| r() < 0.7).collect();
                    let sel = Some(Selection { row_len, rows: &rows });
                    let what = format!("n={n} row_len={row_len} {tol:?}");
                    assert_same(
                        &compare_in_chunks(&a, Source::Memory(&e), tol, sel, c).unwrap(),
                        &reference(&a, &e, tol, sel),
                        &what,
                    );
                }
            }
        }
    }

    #[test]
    fn non_finite_values_anywhere_match_the_definition() {
        let n = 5 * 64 + 77;
        let (mut a, mut e) = pair(n, 3);
        let mut r = rng(9);
        for _ in 0..20 {
            let i = (r() * n as f64) as usize;
            match (r() * 5.0) as u32 {
                0 => a[i] = f32::NAN,
                1 => a[i] = f32::NEG_INFINITY,
                2 => e[i] = f32::INFINITY,
                3 => (a[i], e[i]) = (f32::INFINITY, f32::INFINITY),
                _ => (a[i], e[i]) = (f32::NAN, f32::NAN),
            }
        }
        for c in [16, 64, 1024] {
            assert_same(
                &compare_in_chunks(&a, Source::Memory(&e), T, None, c).unwrap(),
                &reference(&a, &e, T, None),
                "non-finite",
            );
        }
    }

    #[test]
    fn ties_keep_the_first_index_across_chunks() {
        let c = 64;
        for n in [3 * c, 6 * c] {
            let e = vec![1.0f32; n];
            let mut a = vec![1.5f32; n];
            a[..c + 3].fill(1.0);
            let m = compare_in_chunks(&a, Source::Memory(&e), T, None, c).unwrap();
            assert_eq!((m.max_abs_at, m.first_mismatch_at), (Some(c + 3), Some(c + 3)));
            assert_same(&m, &reference(&a, &e, T, None), "ties");
        }
    }

    #[test]
    fn growing_errors_find_the_last_maximum() {
        // Errors grow along the tensor (as they do along a causal sequence): every chunk raises
        // the maximum, so every chunk looks up its index.
        let c = 64;
        for n in [3 * c + 11, 50 * c + 11] {
            let e: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
            let a: Vec<f32> = e.iter().enumerate().map(|(i, &x)| x + i as f32 * 1e-7).collect();
            let m = compare_in_chunks(&a, Source::Memory(&e), T, None, c).unwrap();
            assert_same(&m, &reference(&a, &e, T, None), "growing");
            assert!(m.max_abs_at.unwrap() > n - 100, "{:?}", m.max_abs_at);
        }
    }

    #[cfg(unix)]
    #[test]
    fn streamed_golden_matches_the_in_memory_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.npy");
        let n = 5000;
        let (mut a, e) = pair(n, 4);
        a[1234] = f32::NAN;
        crate::tensor::write_npy(&path, &Tensor::new(vec![n], e.clone()).unwrap()).unwrap();
        let golden = crate::tensor::read_npy_deferred(&path, Some("float32")).unwrap();
        let (file, offset) = golden.unmapped_file().unwrap();
        let rows: Vec<bool> = (0..n / 10).map(|r| r % 3 != 1).collect();
        for sel in [None, Some(Selection { row_len: 10, rows: &rows })] {
            for c in [64, 1000, CHUNK] {
                let streamed = compare_in_chunks(&a, Source::File(file, offset), T, sel, c).unwrap();
                assert_same(&streamed, &reference(&a, &e, T, sel), &format!("chunk {c}"));
            }
        }
        let actual = Tensor::new(vec![n], a.clone()).unwrap();
        assert_same(&compare_golden(&actual, &golden, T, None), &reference(&a, &e, T, None), "tensors");
        assert!(golden.unmapped_file().is_some(), "comparing did not map the golden");
        assert_eq!(golden.data(), &e[..]);
        assert!(golden.unmapped_file().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_golden_that_shrinks_fails_instead_of_crashing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.npy");
        let (a, e) = pair(3000, 5);
        crate::tensor::write_npy(&path, &Tensor::new(vec![3000], e).unwrap()).unwrap();
        let golden = crate::tensor::read_npy_deferred(&path, None).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_len(1000).unwrap();
        let (file, offset) = golden.unmapped_file().unwrap();
        assert!(compare_in_chunks(&a, Source::File(file, offset), T, None, 64).is_none());
        let actual = Tensor::new(vec![3000], a).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compare_golden(&actual, &golden, T, None)));
        assert!(r.is_err());
    }

    #[test]
    fn unravel_row_major() {
        assert_eq!(unravel(7, &[2, 3, 2]), vec![1, 0, 1]);
    }
}
