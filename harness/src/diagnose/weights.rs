//! Evidence that needs the model's weights: when the first divergent tap is the output of a
//! square projection `y = x Wᵀ + b` (an attention output projection, usually), the golden and
//! the engine outputs can be pulled back through it to the projection's input `x`. There the
//! heads are still separate (so "only some heads are wrong" becomes visible), and the golden `x`
//! pushed through the weight the other way round says whether the port transposed it (either
//! convention: nn.Linear's `[out, in]` or GPT-2 Conv1D's `[in, out]`).

use std::path::Path;

use super::view::within_tolerance;
use super::{Ctx, Hint, HintKind};

/// A 2-D weight `[rows, cols]` as f32, read from the checkpoint's safetensors.
fn load(dir: &Path, name: &str) -> Option<(Vec<f32>, usize, usize)> {
    let file = std::fs::File::open(dir.join("model.safetensors")).ok()?;
    // SAFETY: read-only mapping of a checkpoint that is not written during a run.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let st = safetensors::SafeTensors::deserialize(&map).ok()?;
    let t = st.tensor(name).ok()?;
    let shape = t.shape().to_vec();
    let b = t.data();
    let v: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        safetensors::Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        safetensors::Dtype::BF16 => {
            b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        _ => return None,
    };
    match shape.as_slice() {
        [r, c] => Some((v, *r, *c)),
        [n] => Some((v, 1, *n)),
        _ => None,
    }
}

/// LU factorization with partial pivoting of an `n x n` matrix (row-major, f64); None when
/// singular.
struct Lu {
    n: usize,
    a: Vec<f64>,
    piv: Vec<usize>,
}

impl Lu {
    fn new(mut a: Vec<f64>, n: usize) -> Option<Lu> {
        let mut piv: Vec<usize> = (0..n).collect();
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
        for k in 0..n {
            let p = (k..n).max_by(|&i, &j| a[i * n + k].abs().total_cmp(&a[j * n + k].abs()))?;
            if a[p * n + k].abs() <= 1e-12 * scale {
                return None;
            }
            if p != k {
                for c in 0..n {
                    a.swap(k * n + c, p * n + c);
                }
                piv.swap(k, p);
            }
            for i in k + 1..n {
                let f = a[i * n + k] / a[k * n + k];
                a[i * n + k] = f;
                for c in k + 1..n {
                    a[i * n + c] -= f * a[k * n + c];
                }
            }
        }
        Some(Lu { n, a, piv })
    }

    /// Solve `A z = rhs`.
    fn solve(&self, rhs: &[f64]) -> Vec<f64> {
        let n = self.n;
        let mut z: Vec<f64> = self.piv.iter().map(|&p| rhs[p]).collect();
        for i in 0..n {
            for c in 0..i {
                z[i] -= self.a[i * n + c] * z[c];
            }
        }
        for i in (0..n).rev() {
            for c in i + 1..n {
                z[i] -= self.a[i * n + c] * z[c];
            }
            z[i] /= self.a[i * n + i];
        }
        z
    }
}

/// The square projection whose output the tap is, by the naming conventions of HF models.
fn projection(ctx: &Ctx<'_>, tap: &str, width: usize) -> Option<(String, Vec<f32>, Option<Vec<f32>>)> {
    let module = tap.split('@').next().unwrap_or(tap);
    let candidates = ["", ".o_proj", ".Wo", ".out_lin", ".dense", ".output.dense", ".out_proj"];
    for suffix in candidates {
        let name = format!("{module}{suffix}");
        if let Some((w, r, c)) = load(&ctx.case.model.dir, &format!("{name}.weight"))
            && r == width
            && c == width
        {
            let b = load(&ctx.case.model.dir, &format!("{name}.bias")).map(|(b, _, _)| b);
            return Some((name, w, b));
        }
    }
    None
}

/// Rows of `y` pulled back through `y = x Wᵀ + b`: solve `W x = y - b` per row.
fn pull_back(lu: &Lu, y: &[f32], b: Option<&[f32]>, width: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(y.len());
    for row in y.chunks(width) {
        let rhs: Vec<f64> = row.iter().enumerate().map(|(i, &v)| v as f64 - b.map_or(0.0, |b| b[i] as f64)).collect();
        out.extend(lu.solve(&rhs));
    }
    out
}

pub fn analyze(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let shape = golden.shape().to_vec();
    if actual.shape() != shape.as_slice() || shape.is_empty() {
        return;
    }
    let width = *shape.last().unwrap();
    // An LU of the projection is O(width^3): cap it so diagnosis stays under a second.
    if !(2..=1024).contains(&width) {
        return;
    }
    let Some((proj, w, b)) = projection(ctx, &name, width) else { return };
    // The weight as applied, `y = x Mᵀ + b`: M = W for nn.Linear ([out, in]); M = Wᵀ for GPT-2's
    // Conv1D ([in, out], y = x W + b). A square weight does not say which, so both are tried:
    // the golden pulled back through M, then pushed through M untransposed, is what a port that
    // transposed the weight computes.
    let wt: Vec<f32> = (0..width * width).map(|k| w[(k % width) * width + k / width]).collect();
    let mut pulled = None;
    for (m, conv1d) in [(&w, false), (&wt, true)] {
        let Some(lu) = Lu::new(m.iter().map(|&x| x as f64).collect(), width) else { continue };
        let xg = pull_back(&lu, golden.data(), b.as_deref(), width);
        let mut y_t = Vec::with_capacity(xg.len());
        for row in xg.chunks(width) {
            for j in 0..width {
                let s: f64 = (0..width).map(|i| row[i] * m[i * width + j] as f64).sum();
                y_t.push((s + b.as_ref().map_or(0.0, |b| b[j] as f64)) as f32);
            }
        }
        // Pulling back solves with the weight, so the golden's float32 rounding comes back
        // amplified by its condition number (69 dB, not the tolerance, on gpt-neox-tiny's
        // `attention.dense`): a reading 40 dB close where the engine is 20 dB or more off the
        // golden also counts.
        let (m, pass) = within_tolerance(ctx.case, &ctx.taps[first], kind, &y_t, actual.data());
        let off = ctx.taps[first].metrics.as_ref().map_or(f64::INFINITY, |m| m.sqnr_db);
        if pass || (m.sqnr_db >= 40.0 && off < 20.0) {
            let how = if conv1d {
                "x·Wᵀ instead of x·W: a Conv1D weight ([in, out], GPT-2 style) read as an nn.Linear one"
            } else {
                "x·W instead of x·Wᵀ"
            };
            out.push(Hint {
                kind: HintKind::TransposedWeight,
                tap: name.clone(),
                score: 0.92,
                message: format!(
                    "the engine's `{name}` equals the golden input of `{proj}` times its weight the other way \
                     round ({how}{}): `{proj}.weight` is used transposed",
                    if pass {
                        String::new()
                    } else {
                        format!("; to {:.0} dB, the rounding of inverting it", m.sqnr_db)
                    }
                ),
            });
            return;
        }
        if !conv1d {
            let xe = pull_back(&lu, actual.data(), b.as_deref(), width);
            pulled = Some((xg, xe));
        }
    }
    let Some((xg, xe)) = pulled else { return };

    // Per-head error at the projection's input.
    let Some(hd) = ctx.head_dim() else { return };
    if hd == 0 || width % hd != 0 || width / hd < 2 {
        return;
    }
    let heads = width / hd;
    let rows = super::view::selection_rows(ctx.case, kind, super::masked(ctx.case, &name), &shape);
    let rel: Vec<f64> = (0..heads)
        .map(|h| {
            let (mut dd, mut gg) = (0f64, 0f64);
            for (r, (xe_row, xg_row)) in xe.chunks(width).zip(xg.chunks(width)).enumerate() {
                if rows.as_ref().is_some_and(|sel| !sel.get(r).copied().unwrap_or(true)) {
                    continue;
                }
                for c in h * hd..(h + 1) * hd {
                    dd += (xe_row[c] - xg_row[c]).powi(2);
                    gg += xg_row[c].powi(2);
                }
            }
            (dd / gg.max(1e-300)).sqrt()
        })
        .collect();
    let worst = rel.iter().cloned().fold(0f64, f64::max);
    // A head is wrong when its relative error is within 100x of the worst and clearly above
    // float32 noise; the others must be at noise level for the finding to hold.
    let bad: Vec<usize> = (0..heads).filter(|&h| rel[h] > 1e-3 && rel[h] > worst / 100.0).collect();
    let quiet = (0..heads).filter(|h| !bad.contains(h)).all(|h| rel[h] < 1e-4);
    if bad.is_empty() || bad.len() == heads || !quiet {
        return;
    }
    let list: Vec<String> = bad.iter().map(|h| h.to_string()).collect();
    out.push(Hint {
        kind: HintKind::SomeHeads,
        tap: name.clone(),
        score: 0.85,
        message: format!(
            "pulled back through `{proj}` (the heads' concatenation before it), only heads {} of {heads} differ; \
             the others match to float32 noise: check which key/value head each query head reads (GQA \
             repeat) and the head order",
            list.join(", ")
        ),
    });
}

/// One row through a linear layer: `y = W x + b`, `w` as `[out, in]` with `in = x.len()`.
fn linear_row(x: &[f64], w: &[f32], b: Option<&[f32]>) -> impl Iterator<Item = f32> {
    let n_in = x.len();
    (0..w.len() / n_in.max(1)).map(move |o| {
        let s: f64 = w[o * n_in..(o + 1) * n_in].iter().zip(x).map(|(&a, &v)| a as f64 * v).sum();
        (s + b.map_or(0.0, |b| b[o] as f64)) as f32
    })
}

/// The 2-D weights directly under `module` (`module.<child>.weight`), by child name.
fn child_weights(dir: &Path, module: &str) -> Vec<String> {
    let Ok(file) = std::fs::File::open(dir.join("model.safetensors")) else { return vec![] };
    // SAFETY: read-only mapping of a checkpoint that is not written during a run.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else { return vec![] };
    let Ok(st) = safetensors::SafeTensors::deserialize(&map) else { return vec![] };
    let prefix = format!("{module}.");
    let mut v: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(&prefix)?.strip_suffix(".weight").map(String::from))
        .filter(|c| !c.contains('.'))
        .filter(|c| st.tensor(&format!("{prefix}{c}.weight")).is_ok_and(|t| t.shape().len() == 2))
        .collect();
    v.sort();
    v
}

/// An MLP tap whose activation is not tapped (`gpt_neox.layers.0.mlp`): recompute the MLP from
/// its two linear weights on the golden of its input under each activation; one that gives the
/// golden and another that gives the engine name the variant the engine uses.
pub fn mlp_activation(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    if out.iter().any(|h| h.kind == HintKind::ActivationVariant) {
        return;
    }
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let shape = golden.shape().to_vec();
    if actual.shape() != shape.as_slice() || shape.len() < 2 {
        return;
    }
    let module = name.split('@').next().unwrap_or(&name).to_string();
    let dir = ctx.case.model.dir.clone();
    let children = child_weights(&dir, &module);
    if children.len() != 2 {
        return;
    }
    let h = *shape.last().unwrap();
    // (weight as applied [out, in], its input width, bias) of the projection up (h -> i) and
    // down (i -> h); GPT-2's Conv1D stores [in, out], nn.Linear [out, in].
    let mut up = None;
    let mut down = None;
    for c in &children {
        let path = format!("{module}.{c}");
        let Some((w, r, k)) = load(&dir, &format!("{path}.weight")) else { return };
        let b = load(&dir, &format!("{path}.bias")).map(|(b, _, _)| b);
        let conv1d =
            ctx.case.model.structure.modules.iter().any(|m| m.path == path && m.class.as_deref() == Some("Conv1D"));
        let (w, n_in, n_out) =
            if conv1d { ((0..r * k).map(|i| w[(i % r) * k + i / r]).collect(), r, k) } else { (w, k, r) };
        match (n_in == h, n_out == h) {
            (true, false) => up = Some((w, n_out, b)),
            (false, true) => down = Some((w, n_in, b)),
            _ => return,
        }
    }
    let (Some((wu, i, bu)), Some((wd, i2, bd))) = (up, down) else { return };
    if i != i2 {
        return;
    }
    // The MLP's input: a recent earlier tap of width h outside the module.
    let inputs: Vec<String> = ctx.taps[..first]
        .iter()
        .rev()
        .filter(|t| t.shape == shape && !t.name.starts_with(&format!("{module}.")))
        .take(3)
        .map(|t| t.name.clone())
        .collect();
    let lin = |x: &[f32], w: &[f32], b: &Option<Vec<f32>>, n_in: usize| -> Vec<f32> {
        x.chunks(n_in)
            .flat_map(|row| {
                linear_row(&row.iter().map(|&v| v as f64).collect::<Vec<_>>(), w, b.as_deref()).collect::<Vec<_>>()
            })
            .collect()
    };
    for input in inputs {
        let Some(x) = ctx.golden(&input) else { continue };
        let pre = lin(x.data(), &wu, &bu, h);
        let ys: Vec<(&str, Vec<f32>)> = super::transforms::ACTIVATIONS
            .iter()
            .map(|(fname, f)| {
                let a: Vec<f32> = pre.iter().map(|&v| f(v as f64) as f32).collect();
                (*fname, lin(&a, &wd, &bd, i))
            })
            .collect();
        let fits = |y: &[f32], t: &[f32]| within_tolerance(ctx.case, &ctx.taps[first], kind, y, t).1;
        let Some(g) = ys.iter().find(|(_, y)| fits(y, golden.data())) else { continue };
        let Some(e) = ys.iter().find(|(_, y)| fits(y, actual.data())) else { return };
        if g.0 == e.0 {
            return;
        }
        out.push(Hint {
            kind: HintKind::ActivationVariant,
            tap: name.clone(),
            score: 0.92,
            message: format!(
                "recomputed from its weights on the golden `{input}`, `{module}` gives the engine's output with {} \
                 and the golden with {}: the MLP's activation variant is wrong",
                e.0, g.0
            ),
        });
        return;
    }
}

/// A norm's epsilon or variance formula shows as one factor per token, but only on the
/// normalized values: LayerNorm's bias (`y = w * x_hat + b`) is added after the factor. With
/// the tap's own bias taken out, `engine - b = k[token] * (golden - b)`.
pub fn affine_row_scale(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    if out.iter().any(|h| h.kind == HintKind::RowScale) {
        return;
    }
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let width = *golden.shape().last().unwrap_or(&0);
    if actual.shape() != golden.shape() || width < 2 || golden.numel() <= width {
        return;
    }
    let module = name.split('@').next().unwrap_or(&name);
    let Some((b, _, n)) = load(&ctx.case.model.dir, &format!("{module}.bias")) else { return };
    if n != width || b.iter().all(|&x| x == 0.0) {
        return;
    }
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    let mut cand = Vec::with_capacity(actual.numel());
    for (r, (x, y)) in actual.data().chunks(width).zip(golden.data().chunks(width)).enumerate() {
        let (mut xy, mut xx) = (0f64, 0f64);
        for ((&xv, &yv), &bv) in x.iter().zip(y).zip(&b) {
            let (xc, yc) = (xv as f64 - bv as f64, yv as f64 - bv as f64);
            xy += xc * yc;
            xx += xc * xc;
        }
        let k = if xx > 0.0 { xy / xx } else { 1.0 };
        let shape = golden.shape();
        if shape.len() != 3 || ctx.is_real(r / shape[1], r % shape[1]) {
            lo = lo.min(1.0 / k);
            hi = hi.max(1.0 / k);
        }
        cand.extend(x.iter().zip(&b).map(|(&xv, &bv)| ((xv as f64 - bv as f64) * k + bv as f64) as f32));
    }
    if !within_tolerance(ctx.case, &ctx.taps[first], kind, &cand, golden.data()).1 {
        return;
    }
    let range = if lo <= hi { format!(" ({lo:.4} to {hi:.4})") } else { String::new() };
    out.push(Hint {
        kind: HintKind::RowScale,
        tap: name.clone(),
        score: 0.9,
        message: format!(
            "with `{module}.bias` taken out, each token is the golden times its own factor{range}: the \
             normalization before the bias differs (LayerNorm epsilon, variance formula, a missing or extra norm)"
        ),
    });
}

/// Pooling that reads another token (the last instead of [CLS], a mean instead of the first):
/// a pooled tap (`[batch, width]`, no token axis) is compared with each pooling of the last
/// token-level golden before it, pushed through the tap's own linear layer when it has one
/// (`pooler.dense`). A hint only when one pooling reproduces the golden and another the engine.
pub fn pooling(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let &[batch, width] = golden.shape() else { return };
    // Pooled vectors without a layer after them are compared row by row already (patterns).
    if actual.shape() != golden.shape() || out.iter().any(|h| h.kind == HintKind::TokenMisalignment) {
        return;
    }
    let source = ctx.taps[..first].iter().rev().find(|t| t.shape.len() == 3 && t.shape[0] == batch && t.shape[1] > 1);
    let Some(source) = source.map(|t| t.name.clone()) else { return };
    let Some(h) = ctx.golden(&source) else { return };
    let (seq, w_in) = (h.shape()[1], h.shape()[2]);
    let module = name.split('@').next().unwrap_or(&name);
    let linear = match load(&ctx.case.model.dir, &format!("{module}.weight")) {
        Some((w, r, c)) if r == width && c == w_in => {
            Some((w, load(&ctx.case.model.dir, &format!("{module}.bias")).map(|(b, _, _)| b)))
        }
        _ if w_in == width => None,
        _ => return,
    };
    let apply = |x: &[f64]| -> Vec<f32> {
        match &linear {
            None => x.iter().map(|&v| v as f32).collect(),
            Some((w, b)) => linear_row(x, w, b.as_deref()).collect(),
        }
    };
    let hd = h.data();
    let real: Vec<Vec<usize>> = (0..batch).map(|b| (0..seq).filter(|&s| ctx.is_real(b, s)).collect()).collect();
    if real.iter().any(|r| r.is_empty()) {
        return;
    }
    let token = |b: usize, s: usize| -> Vec<f64> {
        hd[(b * seq + s) * w_in..(b * seq + s + 1) * w_in].iter().map(|&v| v as f64).collect()
    };
    let mean = |b: usize| -> Vec<f64> {
        let mut m = vec![0f64; w_in];
        for &s in &real[b] {
            for (acc, v) in m.iter_mut().zip(token(b, s)) {
                *acc += v / real[b].len() as f64;
            }
        }
        m
    };
    // Each pooling, as the tap would be under it.
    let mut poolings: Vec<(String, Vec<f32>)> = vec![
        ("the first token ([CLS])".into(), (0..batch).flat_map(|b| apply(&token(b, real[b][0]))).collect()),
        ("the last token".into(), (0..batch).flat_map(|b| apply(&token(b, *real[b].last().unwrap()))).collect()),
        ("the mean of the tokens".into(), (0..batch).flat_map(|b| apply(&mean(b))).collect()),
    ];
    if batch == 1 {
        let inner = &real[0][1..real[0].len().saturating_sub(1).max(1)];
        for &s in inner {
            poolings.push((format!("token {s}"), apply(&token(0, s))));
        }
    }
    let fits = |x: &[f32], y: &[f32]| within_tolerance(ctx.case, &ctx.taps[first], kind, x, y).1;
    let Some(wanted) = poolings.iter().position(|(_, p)| fits(p, golden.data())) else { return };
    let Some(got) = poolings.iter().position(|(_, p)| fits(p, actual.data())) else { return };
    if got == wanted {
        return;
    }
    let (got, wanted) = (&poolings[got].0, &poolings[wanted].0);
    let what = if linear.is_some() {
        format!("`{module}` applied to {got} of `{source}`, the golden to {wanted}")
    } else {
        format!("{got} of `{source}`, the golden {wanted}")
    };
    out.push(Hint {
        kind: HintKind::TokenMisalignment,
        tap: name.clone(),
        score: 0.9,
        message: format!(
            "the engine's `{name}` is {what}: the pooling reads the wrong token(s); check which position the \
             pooler takes (CLS at 0, the last real token, a mean over the mask)"
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lu_solves() {
        let a = vec![2.0, 1.0, 1.0, 3.0];
        let lu = Lu::new(a, 2).unwrap();
        let z = lu.solve(&[3.0, 5.0]);
        assert!((z[0] - 0.8).abs() < 1e-12 && (z[1] - 1.4).abs() < 1e-12);
        assert!(Lu::new(vec![1.0, 2.0, 2.0, 4.0], 2).is_none());
    }
}
