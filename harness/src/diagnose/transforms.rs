//! Blame by transform: apply candidate transforms to the engine's tensor and report those that
//! bring it within the tap's tolerance (or, failing that, remove almost all of the error).

use super::view::{Rows, within_tolerance};
use super::{Ctx, Hint, HintKind};
use crate::structure::TapKind;
use crate::tensor::permute;

struct Candidate {
    kind: HintKind,
    data: Vec<f32>,
    message: String,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Every candidate, judged; pushes a hint for each that passes the tolerance (score 0.9) or
/// removes >= 99% of the squared error (score 0.5).
pub fn blame(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    if actual.shape() != golden.shape() {
        layout_from_shape(ctx, &name, kind, out);
        return;
    }
    let (a, e) = (actual.data().to_vec(), golden.data().to_vec());
    let shape = golden.shape().to_vec();
    let base = within_tolerance(ctx.case, &ctx.taps[first], kind, &a, &e).0;
    let mut cands = Vec::new();

    cands.push(Candidate {
        kind: HintKind::SignFlip,
        data: a.iter().map(|x| -x).collect(),
        message: "the engine is the golden negated (cosine ~ -1): a sign error".into(),
    });
    let aa = dot(&a, &a);
    if aa > 0.0 {
        let k = dot(&a, &e) / aa;
        if k.is_finite() && (k - 1.0).abs() > 1e-6 {
            cands.push(Candidate {
                kind: HintKind::UniformScale,
                data: a.iter().map(|&x| (x as f64 * k) as f32).collect(),
                message: format!(
                    "the engine is the golden times {:.6} everywhere (a uniform scale): {}",
                    1.0 / k,
                    known_factor(ctx, 1.0 / k).unwrap_or_else(|| {
                        "a scaling constant (attention scale, embedding multiplier, norm weight) is off".into()
                    })
                ),
            });
        }
    }
    if let Some(rows) = Rows::new(&a, &shape, kind).filter(|r| r.batch * r.seq > 1) {
        let er = Rows::new(&e, &shape, kind).unwrap();
        let mut data = Vec::with_capacity(a.len());
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for b in 0..rows.batch {
            for s in 0..rows.seq {
                let (x, y) = (rows.row(b, s), er.row(b, s));
                let xx = dot(x, x);
                let k = if xx > 0.0 { dot(x, y) / xx } else { 1.0 };
                if ctx.is_real(b, s) || rows.seq == 1 {
                    lo = lo.min(1.0 / k);
                    hi = hi.max(1.0 / k);
                }
                data.extend(x.iter().map(|&v| (v as f64 * k) as f32));
            }
        }
        cands.push(Candidate {
            kind: HintKind::RowScale,
            data,
            message: format!(
                "each token is the golden times its own factor ({lo:.4} to {hi:.4}): a per-token normalization \
                 differs (LayerNorm/RMSNorm epsilon, variance formula, a missing or extra norm)"
            ),
        });
    }
    if shape.len() >= 2 && shape[shape.len() - 1] == shape[shape.len() - 2] {
        cands.push(Candidate {
            kind: HintKind::Transposed,
            data: transpose_last_two(&a, &shape),
            message: "the engine is the golden with its last two dimensions transposed: a layout mix-up".into(),
        });
    }
    let w = *shape.last().unwrap_or(&0);
    if w >= 2 && w % 2 == 0 {
        cands.push(Candidate {
            kind: HintKind::BlameTransform,
            data: swap_halves(&a, w),
            message: "the engine is the golden with the two halves of the last dimension swapped: a fused \
                      projection (gate/up, GeGLU `Wi`) is split in the wrong order"
                .into(),
        });
    }
    for c in cands {
        let (m, ok) = within_tolerance(ctx.case, &ctx.taps[first], kind, &c.data, &e);
        let reduction = if base.nmse > 0.0 { 1.0 - m.nmse / base.nmse } else { 0.0 };
        if ok {
            out.push(Hint { kind: c.kind, tap: name.clone(), score: 0.9, message: c.message });
        } else if reduction >= 0.99 {
            out.push(Hint {
                kind: c.kind,
                tap: name.clone(),
                score: 0.5,
                message: format!("{} (removes {:.1}% of the squared error)", c.message, reduction * 100.0),
            });
        }
    }
    earlier_taps(ctx, &name, kind, &a, &e, out);
}

/// An earlier tap's golden laid out as `shape`: as it is when the shapes agree; else when it
/// holds the same values split into heads (`[b, s, h*d]` as `[b, s, h, d]`, or as `[b, h, s, d]`
/// as attention transposes them before a per-head norm). Every reading that fits.
fn as_shape(g: &[f32], from: &[usize], shape: &[usize]) -> Vec<Vec<f32>> {
    if from == shape {
        return vec![g.to_vec()];
    }
    let (&[b, s, hd], &[b2, x, y, d]) = (from, shape) else { return vec![] };
    let mut out = Vec::new();
    if b2 != b || d == 0 || hd % d != 0 {
        return out;
    }
    if x == s && y * d == hd {
        out.push(g.to_vec());
    }
    if y == s && x * d == hd {
        let mut t = Vec::with_capacity(g.len());
        for bi in 0..b {
            for hi in 0..x {
                for si in 0..s {
                    let at = (bi * s + si) * hd + hi * d;
                    t.extend_from_slice(&g[at..at + d]);
                }
            }
        }
        out.push(t);
    }
    out
}

/// Equal to named earlier goldens: no fitted parameter, so above the fitted transforms (a
/// skipped RMSNorm with unit weights is also "a factor per token", the less specific reading).
const EXACT_INPUT: f64 = 0.93;

/// The engine equals an earlier tap's golden (module skipped / residual missing), or adding one
/// earlier golden fixes it (residual missing).
fn earlier_taps(ctx: &mut Ctx<'_>, name: &str, kind: TapKind, a: &[f32], e: &[f32], out: &mut Vec<Hint>) {
    let first = ctx.first;
    let shape = ctx.taps[first].shape.clone();
    let earlier: Vec<(String, Vec<usize>)> = ctx.taps[..first]
        .iter()
        .rev()
        .filter(|t| t.shape.iter().product::<usize>() == shape.iter().product::<usize>())
        .take(8)
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let readings: Vec<(String, Vec<usize>, Vec<f32>)> = earlier
        .into_iter()
        .flat_map(|(prev, from)| {
            let gs = ctx.golden(&prev).map(|g| as_shape(g.data(), &from, &shape)).unwrap_or_default();
            gs.into_iter().map(move |g| (prev.clone(), from.clone(), g))
        })
        .collect();
    for (prev, from, g) in &readings {
        let split = if *from == shape { "" } else { " split into heads" };
        let child = prev.starts_with(&format!("{name}."));
        if within_tolerance(ctx.case, &ctx.taps[first], kind, a, g).1 {
            let (k, msg) = if child {
                (
                    HintKind::ResidualMissing,
                    format!(
                        "the engine's `{name}` equals the golden `{prev}` (its sublayer's output alone): the residual \
                         add around it is missing"
                    ),
                )
            } else {
                (
                    HintKind::ModuleSkipped,
                    format!(
                        "the engine's `{name}` equals the golden `{prev}`{split}, its input: the module looks skipped"
                    ),
                )
            };
            out.push(Hint { kind: k, tap: name.to_string(), score: EXACT_INPUT, message: msg });
            return;
        }
        let sum: Vec<f32> = a.iter().zip(g).map(|(x, y)| x + y).collect();
        if !child && *from == shape && within_tolerance(ctx.case, &ctx.taps[first], kind, &sum, e).1 {
            out.push(Hint {
                kind: HintKind::ResidualMissing,
                tap: name.to_string(),
                score: EXACT_INPUT,
                message: format!(
                    "the engine's `{name}` plus the golden `{prev}` equals the golden: a residual connection \
                     (adding `{prev}`) is missing"
                ),
            });
            return;
        }
    }
    // A pre-norm's input is the residual stream, the sum of two earlier outputs (the layer's
    // input and its attention output): a skipped norm passes that sum on.
    let streams: Vec<&(String, Vec<usize>, Vec<f32>)> =
        readings.iter().filter(|(p, f, _)| f == &shape && !p.starts_with(&format!("{name}."))).collect();
    for (i, (p, _, x)) in streams.iter().enumerate() {
        for (q, _, y) in &streams[i + 1..] {
            let sum: Vec<f32> = x.iter().zip(y).map(|(u, v)| u + v).collect();
            if within_tolerance(ctx.case, &ctx.taps[first], kind, a, &sum).1 {
                out.push(Hint {
                    kind: HintKind::ModuleSkipped,
                    tap: name.to_string(),
                    score: EXACT_INPUT,
                    message: format!(
                        "the engine's `{name}` equals the golden `{q}` + `{p}` (the residual stream, its input): \
                         the module looks skipped"
                    ),
                });
                return;
            }
        }
    }
}

fn transpose_last_two(a: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = shape[shape.len() - 1];
    let mut out = a.to_vec();
    for (o, blk) in out.chunks_mut(n * n).zip(a.chunks(n * n)) {
        for i in 0..n {
            for j in 0..n {
                o[i * n + j] = blk[j * n + i];
            }
        }
    }
    out
}

fn swap_halves(a: &[f32], w: usize) -> Vec<f32> {
    let h = w / 2;
    a.chunks(w).flat_map(|r| r[h..].iter().chain(&r[..h]).copied()).collect()
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, n - 1);
            out.push(q);
        }
    }
    out
}

/// Shape mismatch: does some permutation of the engine's dims give the golden (within
/// tolerance)? Reversed dims is ggml's order.
fn layout_from_shape(ctx: &mut Ctx<'_>, name: &str, kind: TapKind, out: &mut Vec<Hint>) {
    let (Some(actual), Some(golden)) = (ctx.actual(name), ctx.golden(name)) else { return };
    let (ashape, gshape) = (actual.shape().to_vec(), golden.shape().to_vec());
    let a = actual.data().to_vec();
    let e = golden.data().to_vec();
    if a.len() != e.len() || ashape.len() > 5 {
        return;
    }
    let n = ashape.len();
    for perm in permutations(n) {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            continue;
        }
        let (data, s) = permute(&a, &ashape, &perm);
        if s != gshape {
            continue;
        }
        if within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, &data, &e).1 {
            let reversed = perm.iter().enumerate().all(|(i, &p)| p == n - 1 - i);
            let (k, msg) = if reversed {
                (
                    HintKind::ReversedDims,
                    format!(
                        "the engine's {ashape:?} is the golden {gshape:?} with its dimensions reversed (ggml order): \
                         map it with a `reverse` layout rule"
                    ),
                )
            } else {
                (
                    HintKind::Transposed,
                    format!(
                        "the engine's {ashape:?} is the golden {gshape:?} with dimensions permuted as {perm:?}: \
                         a layout/transpose mix-up"
                    ),
                )
            };
            out.push(Hint { kind: k, tap: name.to_string(), score: 0.95, message: msg });
            return;
        }
    }
    // Same element count, different shape, no permutation fits: maybe a bare reshape.
    if within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, &a, &e).1 {
        out.push(Hint {
            kind: HintKind::BlameTransform,
            tap: name.to_string(),
            score: 0.9,
            message: format!(
                "the engine's {ashape:?} holds the golden's values in the golden's memory order; only the shape \
                 differs ({gshape:?}): reshape it"
            ),
        });
    }
}

/// A uniform factor that is a constant of the model's config, named with what usually puts it
/// there: sqrt(hidden_size) (an embedding multiplier), sqrt(head_dim) (the attention scale),
/// 2 (a norm's `1 + w` for `w` with weights of 1, a residual added twice), or their inverses.
fn known_factor(ctx: &Ctx<'_>, f: f64) -> Option<String> {
    let c = &ctx.case.model.config;
    let mut consts: Vec<(f64, String, &str)> = Vec::new();
    if let Ok(Some(h)) = c.opt_usize("hidden_size") {
        let why =
            "an embedding multiplier (Gemma scales its embeddings by sqrt(hidden_size)) applied twice or left out";
        consts.push(((h as f64).sqrt(), format!("sqrt(hidden_size = {h})"), why));
    }
    if let Some(d) = ctx.head_dim() {
        let why = "the attention scale 1/sqrt(head_dim) applied twice or left out (or on values, not scores)";
        consts.push(((d as f64).sqrt(), format!("sqrt(head_dim = {d})"), why));
    }
    let why =
        "a norm computing (1 + w) where the model uses w (or w for 1 + w) on weights of 1, or a residual added twice";
    consts.push((2.0, "2".into(), why));
    let near = |x: f64, v: f64| (x / v - 1.0).abs() < 5e-3;
    // Every constant it could be (2 is also sqrt(head_dim = 4)): each is said.
    let found: Vec<String> = consts
        .iter()
        .filter_map(|(v, name, why)| {
            if near(f, *v) {
                Some(format!("the factor is {name}: {why}"))
            } else if near(f, 1.0 / v) {
                Some(format!("the factor is 1/{name}: {why}"))
            } else {
                None
            }
        })
        .collect();
    (!found.is_empty()).then(|| found.join("; or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_reads_as_its_heads_for_a_per_head_module() {
        // [1, 2 tokens, 2 heads * 2]: token t, head h, dim i = 100 t + 10 h + i.
        let g = [0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0];
        assert_eq!(as_shape(&g, &[1, 2, 4], &[1, 2, 4]), vec![g.to_vec()]);
        // [b, h, s, d]: head 0 of both tokens first.
        let t = as_shape(&g, &[1, 2, 4], &[1, 2, 2, 2]);
        assert_eq!(t.len(), 2, "2 heads of 2 tokens fits both readings");
        assert_eq!(t[1], [0.0, 1.0, 100.0, 101.0, 10.0, 11.0, 110.0, 111.0]);
        assert_eq!(as_shape(&g, &[1, 2, 4], &[1, 4, 2, 1]).len(), 1);
        assert!(as_shape(&g, &[1, 2, 4], &[1, 8]).is_empty());
        assert!(as_shape(&g, &[1, 2, 4], &[1, 3, 2, 2]).is_empty());
    }

    #[test]
    fn permute_reverses_dims() {
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let (p, s) = permute(&a, &[2, 3], &[1, 0]);
        assert_eq!(s, vec![3, 2]);
        assert_eq!(p, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(permutations(3).len(), 6);
    }

    #[test]
    fn swap_and_transpose() {
        assert_eq!(swap_halves(&[1.0, 2.0, 3.0, 4.0], 4), vec![3.0, 4.0, 1.0, 2.0]);
        assert_eq!(transpose_last_two(&[1.0, 2.0, 3.0, 4.0], &[2, 2]), vec![1.0, 3.0, 2.0, 4.0]);
    }
}

type Act = (&'static str, fn(f64) -> f64);

/// erf to ~1e-13 (Taylor series below 3, asymptotic erfc above): plenty at float32 tolerance.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // Taylor series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Asymptotic erfc for large |x|.
        let t = 1.0 / (a * a);
        let series = 1.0 - 0.5 * t + 0.75 * t * t - 1.875 * t * t * t + 6.5625 * t.powi(4);
        1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * series
    };
    if x < 0.0 { -r } else { r }
}

pub(super) const ACTIVATIONS: &[Act] = &[
    ("gelu (erf)", |x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))),
    ("gelu (tanh approximation)", |x| {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    }),
    ("silu", |x| x / (1.0 + (-x).exp())),
    ("relu", |x| x.max(0.0)),
    ("quick_gelu", |x| x / (1.0 + (-1.702 * x).exp())),
];

/// An activation module: which function of which input (an earlier tap, or one half of a fused
/// earlier tap) gives the golden, and which gives the engine's output. A different function is
/// a wrong activation variant; the same function on the other half is a swapped split.
pub fn activations(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let first = ctx.first;
    let name = ctx.taps[first].name.clone();
    let kind = ctx.kind_of(&name);
    let (Some(actual), Some(golden)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    let shape = golden.shape().to_vec();
    if actual.shape() != shape.as_slice() || shape.is_empty() {
        return;
    }
    let w = *shape.last().unwrap();
    let mut inputs: Vec<(String, Vec<f32>)> = Vec::new();
    let earlier: Vec<(String, Vec<usize>)> =
        ctx.taps[..first].iter().rev().take(6).map(|t| (t.name.clone(), t.shape.clone())).collect();
    for (prev, pshape) in earlier {
        let same_lead = pshape.len() == shape.len() && pshape[..pshape.len() - 1] == shape[..shape.len() - 1];
        if !same_lead {
            continue;
        }
        let Some(g) = ctx.golden(&prev) else { continue };
        let pw = *pshape.last().unwrap();
        if pw == w {
            inputs.push((format!("golden `{prev}`"), g.data().to_vec()));
        } else if pw == 2 * w {
            for (half, off) in [("first half", 0), ("second half", w)] {
                let v = g.data().chunks(pw).flat_map(|r| r[off..off + w].iter().copied()).collect();
                inputs.push((format!("the {half} of golden `{prev}`"), v));
            }
        }
    }
    let apply = |f: fn(f64) -> f64, x: &[f32]| -> Vec<f32> { x.iter().map(|&v| f(v as f64) as f32).collect() };
    let find = |target: &[f32]| {
        for (iname, x) in &inputs {
            for (fname, f) in ACTIVATIONS {
                if within_tolerance(ctx.case, &ctx.taps[first], kind, &apply(*f, x), target).1 {
                    return Some((iname.clone(), *fname));
                }
            }
        }
        None
    };
    let (Some((gi, gf)), Some((ei, ef))) = (find(golden.data()), find(actual.data())) else { return };
    if (gi.as_str(), gf) == (ei.as_str(), ef) {
        return;
    }
    let message = if gi == ei {
        format!("the engine's `{name}` is {ef} of {ei}, where HF computes {gf}: the activation variant is wrong")
    } else {
        format!(
            "the engine's `{name}` is {ef} of {ei}, where HF takes {gi}: the fused projection is split in the \
             wrong order"
        )
    };
    out.push(Hint { kind: HintKind::ActivationVariant, tap: name, score: 0.92, message });
}

#[cfg(test)]
mod act_tests {
    use super::erf;

    #[test]
    fn erf_is_accurate() {
        for (x, want) in [
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.5, 0.999_593_047_982_555),
            (4.0, 0.9999999845827421),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "{x}");
            assert!((erf(-x) + want).abs() < 1e-12);
        }
    }
}
