//! What the error of the first divergent tap looks like, read off (engine, golden) alone:
//! which rows, positions, sequences, channels or heads are wrong, and whether rows are shifted.

use std::borrow::Cow;

use super::view::{Rows, row_ratio, row_tolerance};
use super::{Ctx, Hint, HintKind};
use crate::metrics::AllClose;
use crate::structure::TapKind;

fn hint(kind: HintKind, tap: &str, score: f64, message: String) -> Hint {
    Hint { kind, tap: tap.to_string(), score, message }
}

fn list(v: &[usize]) -> String {
    const MAX: usize = 8;
    let mut s: Vec<String> = v.iter().take(MAX).map(|x| x.to_string()).collect();
    if v.len() > MAX {
        s.push(format!("... ({} in all)", v.len()));
    }
    s.join(", ")
}

/// Per (sequence, position) failure ratios over the real rows of a token tap.
struct RowErrors {
    batch: usize,
    seq: usize,
    /// ratio[b][s]; None for padding.
    ratio: Vec<Vec<Option<f64>>>,
}

impl RowErrors {
    fn new(ctx: &Ctx<'_>, a: &Rows<'_>, e: &Rows<'_>, tol: AllClose) -> RowErrors {
        let ratio = (0..a.batch)
            .map(|b| {
                (0..a.seq)
                    .map(|s| (a.seq == 1 || ctx.is_real(b, s)).then(|| row_ratio(a.row(b, s), e.row(b, s), tol)))
                    .collect()
            })
            .collect();
        RowErrors { batch: a.batch, seq: a.seq, ratio }
    }
    fn failing(&self, b: usize) -> Vec<usize> {
        (0..self.seq).filter(|&s| self.ratio[b][s].is_some_and(|r| r > 1.0)).collect()
    }
}

/// All the row-based analyses of a token-level (or pooled) tap.
pub fn analyze(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let tap = &ctx.taps[ctx.first];
    let name = tap.name.clone();
    let kind = ctx.kind_of(&name);
    let tol = row_tolerance(&tap.tolerance);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    // A convolution's output is channel-first (`[batch, channels, frames]`, `[batch, channels,
    // h, w]`): seen as `[batch, positions, channels]`, the per-position detectors apply to it.
    let conv = is_conv(ctx, &name) && actual.shape().len() >= 3 && golden.shape().len() >= 3;
    // Borrowed as they are; copied only when a convolution's are transposed.
    let ((adata, ashape), (edata, shape)) = (seen_as(actual, conv), seen_as(&golden, conv));
    let kind = if conv { TapKind::Tokens } else { kind };
    if ashape != shape {
        out.extend(stride_mismatch(ctx, &name, (&adata, &ashape), (&edata, &shape), kind, tol));
        return;
    }
    let (Some(a), Some(e)) = (Rows::new(&adata, &shape, kind), Rows::new(&edata, &shape, kind)) else {
        return;
    };
    if kind == TapKind::Rows {
        if let Some(h) = pooled_misalignment(ctx, &name, &a) {
            out.push(h);
        }
        return;
    }
    let errs = RowErrors::new(ctx, &a, &e, tol);
    out.extend(padded_rows_only(ctx, &name, &errs));
    out.extend(onset(&name, &errs, ctx.case.model.structure.causal));
    out.extend(grows_with_position(&name, &a, &e, ctx));
    out.extend(token_misalignment(&name, &a, &e, &errs, tol, ctx));
    out.extend(position_stride(ctx, &name, &a, &e, &errs, tol));
    out.extend(channels_and_heads(ctx, &name, &a, &e, &errs, tol));
    out.extend(per_channel(&name, &a, &e, &errs));
}

/// How much of the error's energy a per-channel model explains, and its constants.
type Fit = (f64, Vec<f64>);

/// Least-squares fit of the error `a - e` over the real rows by one constant per channel
/// (offset: `a = e + d[c]`) and by one factor per channel (scale: `a = k[c] * e`); returns the
/// fraction of the error's energy each explains, with the fitted constants.
fn channel_fits(a: &Rows<'_>, e: &Rows<'_>, errs: &RowErrors) -> Option<(Fit, Fit)> {
    let w = a.width;
    let (mut n, mut sum_d, mut sum_ae, mut sum_ee) = (0usize, vec![0f64; w], vec![0f64; w], vec![0f64; w]);
    let rows =
        || (0..a.batch).flat_map(|b| (0..a.seq).map(move |s| (b, s))).filter(|&(b, s)| errs.ratio[b][s].is_some());
    for (b, s) in rows() {
        n += 1;
        for (c, (&x, &y)) in a.row(b, s).iter().zip(e.row(b, s)).enumerate() {
            let (x, y) = (x as f64, y as f64);
            sum_d[c] += x - y;
            sum_ae[c] += x * y;
            sum_ee[c] += y * y;
        }
    }
    if n < 4 {
        return None;
    }
    let offset: Vec<f64> = sum_d.iter().map(|d| d / n as f64).collect();
    let scale: Vec<f64> = sum_ae.iter().zip(&sum_ee).map(|(ae, ee)| if *ee > 0.0 { ae / ee } else { 1.0 }).collect();
    let (mut total, mut res_off, mut res_scale) = (0f64, 0f64, 0f64);
    for (b, s) in rows() {
        for (c, (&x, &y)) in a.row(b, s).iter().zip(e.row(b, s)).enumerate() {
            let (x, y) = (x as f64, y as f64);
            total += (x - y).powi(2);
            res_off += (x - y - offset[c]).powi(2);
            res_scale += (x - scale[c] * y).powi(2);
        }
    }
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    Some(((1.0 - res_off / total, offset), (1.0 - res_scale / total, scale)))
}

/// The error is one constant per channel at every token (a bias dropped or added twice), or one
/// factor per channel (a norm weight applied as `w` instead of `1 + w`, a missing scale vector).
fn per_channel(tap: &str, a: &Rows<'_>, e: &Rows<'_>, errs: &RowErrors) -> Option<Hint> {
    const EXPLAINED: f64 = 0.95;
    if a.width < 4 {
        return None;
    }
    let ((off_fit, offset), (scale_fit, scale)) = channel_fits(a, e, errs)?;
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    if off_fit >= EXPLAINED && off_fit >= scale_fit {
        let (lo, hi) = spread(&offset);
        return Some(hint(
            HintKind::ChannelOffset,
            tap,
            0.75,
            format!(
                "the error is a constant per channel, the same at every token ({:.0}% of it; offsets {lo:.3e} to \
                 {hi:.3e}): a bias vector dropped, added twice or taken from another layer at or before this tap",
                100.0 * off_fit
            ),
        ));
    }
    let (lo, hi) = spread(&scale);
    // One factor for every channel is a uniform scale, named by its own detector.
    if scale_fit >= EXPLAINED && (hi - lo) > 0.05 * hi.abs().max(lo.abs()) {
        return Some(hint(
            HintKind::ChannelScale,
            tap,
            0.75,
            format!(
                "each channel is the golden times its own factor, the same at every token ({:.0}% of the error; \
                 factors {lo:.3} to {hi:.3}): a per-channel weight applied wrong (a norm's `w` for `1 + w`, a \
                 scale vector missing or doubled) at or before this tap",
                100.0 * scale_fit
            ),
        ));
    }
    None
}

fn padded_rows_only(ctx: &Ctx<'_>, tap: &str, errs: &RowErrors) -> Option<Hint> {
    let mask = ctx.case.inputs.attention_mask.as_ref()?;
    let padded: Vec<usize> = (0..mask.batch).filter(|&b| mask.row(b).contains(&0)).collect();
    let full: Vec<usize> = (0..mask.batch).filter(|b| !padded.contains(b)).collect();
    let bad: Vec<usize> = (0..errs.batch).filter(|&b| !errs.failing(b).is_empty()).collect();
    if bad.is_empty() || padded.is_empty() || full.is_empty() || !bad.iter().all(|b| padded.contains(b)) {
        return None;
    }
    Some(hint(
        HintKind::PaddedRowsOnly,
        tap,
        0.9,
        format!(
            "only sequences that contain padding are wrong (batch rows {}); the full-length rows ({}) match: \
             the attention mask is ignored or applied wrongly (0/1 vs additive, inverted, wrong axis)",
            list(&bad),
            list(&full)
        ),
    ))
}

fn onset(tap: &str, errs: &RowErrors, causal: bool) -> Option<Hint> {
    if errs.seq < 3 {
        return None;
    }
    // Positions count from each row's first real token: a left-padded row whose error starts at
    // its second real token has the same onset as a full row wrong from position 1.
    let mut firsts = Vec::new();
    let mut shifted = false;
    for b in 0..errs.batch {
        let fail = errs.failing(b);
        let Some(&first) = fail.first() else { continue };
        let start = (0..errs.seq).find(|&s| errs.ratio[b][s].is_some()).unwrap_or(0);
        let real_after = (first..errs.seq).filter(|&s| errs.ratio[b][s].is_some()).count();
        if first == start || (fail.len() as f64) < 0.6 * real_after as f64 {
            return None;
        }
        shifted |= start > 0;
        firsts.push((b, first - start));
    }
    let (_, k) = *firsts.first()?;
    let same = firsts.iter().all(|&(_, f)| f == k);
    let counted = if shifted { " (positions counted from each row's first real token)" } else { "" };
    let msg = if same {
        format!(
            "exact up to position {} and wrong from position {k} on{}{counted}: something changes at that \
             position (a sliding window or attention mask boundary, a cache slot, a position-embedding offset)",
            k - 1,
            if errs.batch > 1 { " in every wrong sequence" } else { "" }
        )
    } else {
        let v: Vec<String> = firsts.iter().map(|(b, f)| format!("row {b}: {f}")).collect();
        format!(
            "each sequence is exact up to some position and wrong after it ({}){counted}: check position-dependent \
             masking",
            v.join(", ")
        )
    };
    // In a causal model position 0 attends only to itself, so any query/key-side error (RoPE,
    // a key projection, a reduced-precision KV cache) is exact there: an onset at 1 says little.
    if causal && same && k == 1 {
        let msg = format!(
            "{msg}; but in a causal model position 0 attends only to itself, so any error on the query/key side \
             (RoPE, the key or query projection, KV-cache precision) also starts at position 1"
        );
        return Some(hint(HintKind::ErrorOnsetAtPosition, tap, 0.4, msg));
    }
    Some(hint(HintKind::ErrorOnsetAtPosition, tap, if same { 0.8 } else { 0.6 }, msg))
}

/// Angular frequency of each column of a RoPE cos table (`[.., seq, d]`, row p = cos(p * f)),
/// read at the largest position where p * f stays below pi (acos is exact there).
fn frequencies(rows: &[&[f32]]) -> Vec<f64> {
    let d = rows[0].len();
    (0..d)
        .map(|j| {
            let f1 = (rows[1][j] as f64).clamp(-1.0, 1.0).acos();
            let p = if f1 > 0.0 { ((3.0 / f1) as usize).clamp(1, rows.len() - 1) } else { rows.len() - 1 };
            (rows[p][j] as f64).clamp(-1.0, 1.0).acos() / p as f64
        })
        .collect()
}

/// The base `theta` of `f_j = theta^(-2j/d)`, from the median over the columns that resolve.
fn rope_base(f: &[f64], d: usize) -> Option<f64> {
    let mut logs: Vec<f64> =
        (1..d / 2).filter(|&j| f[j] > 1e-4 && f[j] < 3.0).map(|j| -f[j].ln() * d as f64 / (2.0 * j as f64)).collect();
    if logs.is_empty() {
        return None;
    }
    logs.sort_by(f64::total_cmp);
    Some(logs[logs.len() / 2].exp())
}

/// A rotary table (`*rotary_emb`, HF's cos table: `[1, seq, d]`, the two halves equal) with
/// other frequencies than the golden's: the base `theta` read from each, or one factor for all
/// (linear RoPE scaling, scaled position ids), or pairs laid out interleaved.
pub fn rope_table(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let name = ctx.taps[ctx.first].name.clone();
    if ctx.kind_of(&name) != TapKind::Positions || !name.split('@').next().unwrap_or("").ends_with("rotary_emb") {
        return;
    }
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let shape = golden.shape().to_vec();
    if actual.shape() != shape.as_slice() || shape.len() != 3 || shape[1] < 3 || shape[2] < 4 || shape[2] % 2 != 0 {
        return;
    }
    let (s, d) = (shape[1], shape[2]);
    let rows = |t: &[f32]| -> Vec<Vec<f32>> { (0..s).map(|p| t[p * d..(p + 1) * d].to_vec()).collect() };
    let (ge, ee) = (rows(golden.data()), rows(actual.data()));
    let h = d / 2;
    // HF's table at position 0 is all ones, and its halves repeat: a cos table.
    let is_table = |r: &Vec<Vec<f32>>| r[0].iter().all(|&v| (v - 1.0).abs() < 1e-6);
    if !is_table(&ge) || ge.iter().any(|r| (0..h).any(|j| (r[j] - r[j + h]).abs() > 1e-6)) || !is_table(&ee) {
        return;
    }
    let gr: Vec<&[f32]> = ge.iter().map(|r| r.as_slice()).collect();
    let er: Vec<&[f32]> = ee.iter().map(|r| r.as_slice()).collect();
    let (fg, fe) = (frequencies(&gr), frequencies(&er));
    let interleaved = ee.iter().all(|r| (0..h).all(|i| (r[2 * i] - r[2 * i + 1]).abs() < 1e-6))
        && ee.iter().any(|r| (0..h).any(|j| (r[j] - r[j + h]).abs() > 1e-4));
    let msg = if interleaved {
        "the engine's rotary table repeats each frequency in adjacent columns (2i, 2i+1) where HF repeats the \
         halves (i, i+d/2): the RoPE pairs are interleaved; rotate half-split pairs (or permute q/k weights)"
            .to_string()
    } else {
        let ratios: Vec<f64> = (0..h).filter(|&j| fg[j] > 1e-3 && fg[j] < 3.0).map(|j| fe[j] / fg[j]).collect();
        if ratios.len() < 2 {
            return;
        }
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0f64), |(l, u), &r| (l.min(r), u.max(r)));
        if hi / lo < 1.02 && ((lo + hi) / 2.0 - 1.0).abs() > 0.01 {
            format!(
                "every RoPE frequency of the engine is the golden's times {:.4}: a linear RoPE scaling factor \
                 (`rope_scaling`/`rope_parameters`: factor {:.4}) or position ids scaled",
                (lo + hi) / 2.0,
                2.0 / (lo + hi)
            )
        } else {
            let (Some(tg), Some(te)) = (rope_base(&fg, d), rope_base(&fe, d)) else { return };
            if (te / tg - 1.0).abs() < 0.05 {
                return;
            }
            format!(
                "the engine's rotary table has base theta ~ {} where the golden's is ~ {}: check `rope_theta` \
                 (`rope_parameters`: the default 10000 where the config sets another, or a local/global base mix-up)",
                round_sig(te),
                round_sig(tg)
            )
        }
    };
    out.push(hint(HintKind::ErrorGrowsWithPosition, &name, 0.9, msg));
}

/// Two significant digits, for a base read from float32 tables.
fn round_sig(x: f64) -> String {
    let p = 10f64.powi(x.abs().log10().floor() as i32 - 1);
    format!("{}", (x / p).round() * p)
}

/// Spearman rank correlation.
fn spearman(x: &[f64], y: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        for (rank, &i) in idx.iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mean) * (b - mean)).sum();
    let var: f64 = rx.iter().map(|a| (a - mean).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn grows_with_position(tap: &str, a: &Rows<'_>, e: &Rows<'_>, ctx: &Ctx<'_>) -> Option<Hint> {
    if a.seq < 6 {
        return None;
    }
    let mut pos = Vec::new();
    let mut err = Vec::new();
    for s in 0..a.seq {
        let (mut sum, mut n) = (0.0f64, 0usize);
        for b in 0..a.batch {
            if !ctx.is_real(b, s) {
                continue;
            }
            let (x, y) = (a.row(b, s), e.row(b, s));
            sum += x.iter().zip(y).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum::<f64>() / x.len() as f64;
            n += 1;
        }
        if n > 0 {
            pos.push(s as f64);
            err.push((sum / n as f64).sqrt());
        }
    }
    if pos.len() < 6 {
        return None;
    }
    let rho = spearman(&pos, &err);
    let k = err.len() / 4;
    let early = err[..k.max(1)].iter().sum::<f64>() / k.max(1) as f64;
    let late = err[err.len() - k.max(1)..].iter().sum::<f64>() / k.max(1) as f64;
    if rho < 0.8 || late < 3.0 * early {
        return None;
    }
    Some(hint(
        HintKind::ErrorGrowsWithPosition,
        tap,
        0.55 + 0.3 * ((rho - 0.8) / 0.2).clamp(0.0, 1.0),
        format!(
            "the error grows with position (rms {:.2e} over the first quarter, {:.2e} over the last; rank correlation \
             {rho:.2}): typical of RoPE (theta, pair layout, position ids) or a position-embedding mix-up",
            early, late
        ),
    ))
}

/// Whether a tap is the output of a PyTorch convolution (channel-first by PyTorch's convention).
fn is_conv(ctx: &Ctx<'_>, name: &str) -> bool {
    let class = ctx.case.taps.iter().find(|t| t.name == name).and_then(|t| t.module.class.as_deref());
    class.is_some_and(|c| c.starts_with("Conv") && ["1d", "2d", "3d"].iter().any(|d| c.ends_with(d)))
}

/// A tap's data and shape as the row detectors see it: a convolution's transposed to
/// channels-last (a copy), anything else borrowed as it is.
fn seen_as(t: &crate::tensor::Tensor, conv: bool) -> (Cow<'_, [f32]>, Vec<usize>) {
    if conv {
        let (d, s) = channels_last(t.data(), t.shape());
        (Cow::Owned(d), s)
    } else {
        (Cow::Borrowed(t.data()), t.shape().to_vec())
    }
}

/// `[batch, channels, *positions]` as `[batch, prod(positions), channels]`.
fn channels_last(data: &[f32], shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (b, c) = (shape[0], shape[1]);
    let p: usize = shape[2..].iter().product();
    let mut out = vec![0f32; data.len()];
    for bi in 0..b {
        for ci in 0..c {
            for pi in 0..p {
                out[(bi * p + pi) * c + ci] = data[(bi * c + ci) * p + pi];
            }
        }
    }
    (out, vec![b, p, c])
}

/// Over the real rows, how many pairs (engine position i, golden position `map(i)`) there are
/// and how many match. Pairs whose golden rows are the same (a repeated token, a constant
/// table) say nothing about where the engine's rows come from and are not counted.
fn mapped_pairs(
    ctx: &Ctx<'_>,
    a: &Rows<'_>,
    e: &Rows<'_>,
    map: impl Fn(usize) -> Option<usize>,
    tol: AllClose,
) -> (usize, usize) {
    let (mut pairs, mut matched) = (0, 0);
    for b in 0..a.batch.min(e.batch) {
        for i in 0..a.seq {
            let Some(j) = map(i).filter(|&j| j < e.seq) else { continue };
            if !ctx.is_real(b, j) || !ctx.is_real(b, i) || (i != j && same_golden_rows(e, b, i, j, tol)) {
                continue;
            }
            pairs += 1;
            if row_ratio(a.row(b, i), e.row(b, j), tol) <= 1.0 {
                matched += 1;
            }
        }
    }
    (pairs, matched)
}

/// The pairs of stride `s`: slow (engine `s·j` is golden `j`) or fast (engine `i` is golden
/// `s·i`); position 0, which every stride keeps, is not counted.
fn stride_pairs(ctx: &Ctx<'_>, a: &Rows<'_>, e: &Rows<'_>, s: usize, slow: bool, tol: AllClose) -> (usize, usize) {
    let map = |i: usize| match (i, slow) {
        (0, _) => None,
        (_, true) => i.is_multiple_of(s).then_some(i / s),
        (_, false) => Some(i * s),
    };
    mapped_pairs(ctx, a, e, map, tol)
}

/// Golden rows i and j are the same (a repeated token in an embedding, a constant table): a
/// pair that says nothing about where the engine's rows come from.
fn same_golden_rows(e: &Rows<'_>, b: usize, i: usize, j: usize, tol: AllClose) -> bool {
    i < e.seq && row_ratio(e.row(b, i), e.row(b, j), tol) <= 1.0
}

fn stride_message(s: usize, slow: bool, matched: usize, pairs: usize, shapes: &str) -> String {
    let (rel, how) = if slow {
        (
            format!("engine position {s}·j equals golden position j"),
            format!("the engine steps 1/{s} as far per position as HF"),
        )
    } else {
        (
            format!("engine position i equals golden position {s}·i"),
            format!("the engine steps {s}x as far per position as HF"),
        )
    };
    format!(
        "{rel} ({matched} of {pairs} such pairs{shapes}): {how} — a convolution stride, a frame hop or a patch \
         size that differs by a factor {s} at or before this tap"
    )
}

/// Same shape: the engine's positions are HF's sampled with another stride (a conv stride of 1
/// where HF's is 2, trimmed to HF's length; a mel hop twice HF's).
fn position_stride(
    ctx: &Ctx<'_>,
    tap: &str,
    a: &Rows<'_>,
    e: &Rows<'_>,
    errs: &RowErrors,
    tol: AllClose,
) -> Option<Hint> {
    // A rotary table at scaled positions is a RoPE scaling factor, which the RoPE detectors name.
    let rotary = tap.split('@').next().unwrap_or(tap).ends_with("rotary_emb");
    if rotary || a.seq < 4 || (0..errs.batch).all(|b| errs.failing(b).is_empty()) {
        return None;
    }
    best_stride(ctx, a, e, tol)
        .map(|(s, slow, m, p)| hint(HintKind::PositionStride, tap, 0.9, stride_message(s, slow, m, p, "")))
}

/// The stride (2 to 8), direction and counts of the best hypothesis whose pairs (at least 2)
/// match at 80% or more.
fn best_stride(ctx: &Ctx<'_>, a: &Rows<'_>, e: &Rows<'_>, tol: AllClose) -> Option<(usize, bool, usize, usize)> {
    let mut best: Option<(usize, bool, usize, usize)> = None;
    for s in 2..=8 {
        for slow in [true, false] {
            let (p, m) = stride_pairs(ctx, a, e, s, slow, tol);
            if p >= 2 && m as f64 >= 0.8 * p as f64 && best.is_none_or(|(_, _, bm, _)| m > bm) {
                best = Some((s, slow, m, p));
            }
        }
    }
    best
}

/// Shapes that differ only in the number of positions, by an integer factor, where the
/// engine's positions are HF's sampled with that stride.
fn stride_mismatch(
    ctx: &Ctx<'_>,
    tap: &str,
    (adata, ashape): (&[f32], &[usize]),
    (edata, eshape): (&[f32], &[usize]),
    kind: TapKind,
    tol: AllClose,
) -> Option<Hint> {
    if kind != TapKind::Tokens || ashape.len() != eshape.len() || ashape.len() < 3 {
        return None;
    }
    if ashape[0] != eshape[0] || ashape[2..] != eshape[2..] || ashape[1] == eshape[1] {
        return None;
    }
    let (la, le) = (ashape[1], eshape[1]);
    let (hi, lo) = (la.max(le), la.min(le));
    if lo < 2 || hi.div_ceil(lo) > 8 {
        return None;
    }
    let a = Rows::new(adata, ashape, kind)?;
    let e = Rows::new(edata, eshape, kind)?;
    let shapes = format!("the engine has {la} positions where HF has {le}");
    // The stride must fit the lengths: the engine has about s times the positions when it is slow.
    if let Some((s, slow, m, p)) = best_stride(ctx, &a, &e, tol)
        && (if slow { la >= le } else { le >= la })
    {
        return Some(hint(HintKind::PositionStride, tap, 0.95, stride_message(s, slow, m, p, &format!("; {shapes}"))));
    }
    // A few positions more or fewer, the rest the same positions moved: a padding or a crop.
    let mut best: Option<(i64, usize, usize)> = None;
    for d in -4i64..=4 {
        let (pairs, matched) = mapped_pairs(ctx, &a, &e, |i| usize::try_from(i as i64 + d).ok(), tol);
        if pairs >= 2 && matched as f64 >= 0.8 * pairs as f64 && best.is_none_or(|(_, bm, _)| matched > bm) {
            best = Some((d, matched, pairs));
        }
    }
    let (d, m, p) = best?;
    let rel = if d == 0 {
        "engine position i equals golden position i".to_string()
    } else {
        format!("engine position i equals golden position i{d:+}")
    };
    Some(hint(
        HintKind::TokenMisalignment,
        tap,
        0.9,
        format!(
            "{shapes}, and {rel} ({m} of {p} such pairs): positions added or cut at the edges — a convolution's \
             padding, a crop, a dropped or extra CLS/BOS that differs at or before this tap"
        ),
    ))
}

fn token_misalignment(
    tap: &str,
    a: &Rows<'_>,
    e: &Rows<'_>,
    errs: &RowErrors,
    tol: AllClose,
    ctx: &Ctx<'_>,
) -> Option<Hint> {
    if a.seq < 2 || a.seq > 4096 {
        return None;
    }
    let mut matched = Vec::new();
    let mut failing = 0usize;
    for b in 0..a.batch {
        for i in errs.failing(b) {
            failing += 1;
            let best = (0..a.seq)
                .filter(|&j| j != i && ctx.is_real(b, j))
                .map(|j| (j, row_ratio(a.row(b, i), e.row(b, j), tol)))
                .min_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((j, r)) = best
                && r <= 1.0
            {
                matched.push((b, i, j));
            }
        }
    }
    if failing == 0 || (matched.len() as f64) < 0.8 * failing as f64 {
        return None;
    }
    let d0 = matched[0].2 as i64 - matched[0].1 as i64;
    let constant = matched.iter().all(|&(_, i, j)| j as i64 - i as i64 == d0);
    let msg = if constant {
        format!(
            "engine token i equals golden token i{:+} ({} of {} wrong positions): the tokens are shifted by {} \
             (position ids, a dropped or extra BOS/CLS, an off-by-one in slicing)",
            d0,
            matched.len(),
            failing,
            d0.abs()
        )
    } else {
        let (b, i, j) = matched[0];
        format!(
            "{} of {} wrong positions equal another golden position (e.g. row {b}: engine token {i} = golden token {j}): \
             tokens are permuted or gathered with the wrong index",
            matched.len(),
            failing
        )
    };
    Some(hint(HintKind::TokenMisalignment, tap, 0.9, msg))
}

/// A pooled tap (one vector per sequence) that equals some token of `last_hidden_state`.
fn pooled_misalignment(ctx: &mut Ctx<'_>, tap: &str, a: &Rows<'_>) -> Option<Hint> {
    let source = ctx.golden("last_hidden_state")?;
    let shape = source.shape().to_vec();
    let src = Rows::new(source.data(), &shape, TapKind::Tokens)?;
    if src.width != a.width || src.batch != a.batch {
        return None;
    }
    let normalized = tap.ends_with(".normalized");
    let tol = row_tolerance(&ctx.taps[ctx.first].tolerance);
    let masked = super::masked(ctx.case, "last_hidden_state");
    let real = |b: usize, s: usize| !masked || ctx.case.inputs.is_real(b, s);
    let mut found = Vec::new();
    for b in 0..a.batch {
        let best = (0..src.seq)
            .filter(|&j| real(b, j))
            .map(|j| {
                let mut cand = src.row(b, j).to_vec();
                if normalized {
                    let n = cand.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                    cand.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
                }
                (j, row_ratio(a.row(b, 0), &cand, tol))
            })
            .min_by(|x, y| x.1.total_cmp(&y.1));
        match best {
            Some((j, r)) if r <= 1.0 => found.push((b, j)),
            _ => return None,
        }
    }
    let last_real = |b: usize| (0..src.seq).rev().find(|&s| real(b, s));
    let all_last = found.iter().all(|&(b, j)| Some(j) == last_real(b));
    let all_first = found.iter().all(|&(_, j)| j == 0);
    let which = if all_last {
        "the last real token".to_string()
    } else if all_first {
        "token 0 (CLS)".to_string()
    } else {
        format!("tokens {}", list(&found.iter().map(|&(_, j)| j).collect::<Vec<_>>()))
    };
    let expect = if tap.contains("cls") { ", where CLS pooling takes token 0" } else { "" };
    Some(hint(
        HintKind::TokenMisalignment,
        tap,
        0.95,
        format!(
            "the engine's pooled vector of every sequence equals last_hidden_state at {which}{expect}: \
             pooling picks the wrong token (or the wrong pooling mode)"
        ),
    ))
}

fn channels_and_heads(
    ctx: &Ctx<'_>,
    tap: &str,
    a: &Rows<'_>,
    e: &Rows<'_>,
    errs: &RowErrors,
    tol: AllClose,
) -> Option<Hint> {
    let width = a.width;
    if width < 4 {
        return None;
    }
    // Per channel, the worst |error| / allowed over the real rows.
    let mut worst = vec![0f64; width];
    for b in 0..a.batch {
        for s in 0..a.seq {
            if errs.ratio[b][s].is_none() {
                continue;
            }
            for (c, (&x, &y)) in a.row(b, s).iter().zip(e.row(b, s)).enumerate() {
                let d = (x as f64 - y as f64).abs();
                let r =
                    if d.is_nan() { f64::INFINITY } else { d / (tol.atol + tol.rtol * (y as f64).abs()).max(1e-30) };
                worst[c] = worst[c].max(r);
            }
        }
    }
    let bad: Vec<bool> = worst.iter().map(|&r| r > 1.0).collect();
    let n_bad = bad.iter().filter(|&&x| x).count();
    if n_bad == 0 || n_bad * 2 > width {
        return None;
    }
    // "The others match" must be true: the good channels well inside the tolerance, not a
    // small error spread everywhere that crosses it only where the values are largest.
    let good_worst = worst.iter().zip(&bad).filter(|(_, b)| !**b).map(|(r, _)| *r).fold(0f64, f64::max);
    if good_worst > 0.25 {
        return None;
    }
    // Head structure is visible only on per-head projections (before the output projection
    // mixes heads).
    let per_head = ["q_proj", "k_proj", "v_proj", "query", "key", "value", "q_lin", "k_lin", "v_lin"];
    if let Some(hd) = ctx.head_dim()
        && per_head.iter().any(|p| tap.rsplit('.').next().is_some_and(|last| last.starts_with(p)))
        && hd > 0
        && width.is_multiple_of(hd)
        && width / hd > 1
    {
        let heads = width / hd;
        let bad_heads: Vec<usize> = (0..heads).filter(|h| bad[h * hd..(h + 1) * hd].iter().any(|&x| x)).collect();
        if bad_heads.len() < heads {
            return Some(hint(
                HintKind::SomeHeads,
                tap,
                0.75,
                format!(
                    "only heads {} of {heads} (head_dim {hd}) are wrong, the others match: check the head mapping \
                     (grouped-query repeat, head order, the reshape to heads)",
                    list(&bad_heads)
                ),
            ));
        }
    }
    let chans: Vec<usize> = (0..width).filter(|&c| bad[c]).collect();
    Some(hint(
        HintKind::SomeChannels,
        tap,
        0.6,
        format!(
            "only {} of {width} channels are wrong (channels {}), the others match: look at the weight rows or bias \
             entries that produce them",
            n_bad,
            list(&chans)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_of_monotone_is_one() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[0.1, 0.5, 0.7, 9.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }
}
