//! Diagnosis: where a divergence starts and what it looks like.
//!
//! [`first_divergence`] localizes (first tap in forward order out of tolerance); hints say what
//! the error at that tap looks like (a shifted token, a transposed layout, a uniform scale, an
//! error that starts at some position, ...), ranked by score.

use std::collections::HashMap;
use std::sync::Arc;

use crate::case::Case;
use crate::engine::Outputs;
use crate::error::Result;
use crate::expected::Expected;
use crate::report::{TapReport, TapStatus};
use crate::structure::TapKind;
use crate::tensor::Tensor;

pub use harness_api::logits;
pub use harness_api::report::{Hint, HintKind};

pub mod patterns;
pub mod probes;
pub mod transforms;
pub mod view;
pub mod weights;

/// How many hints a report keeps (best first).
pub const MAX_HINTS: usize = 6;

/// The first tap in forward order that is not within tolerance.
pub fn first_divergence(taps: &[TapReport]) -> Option<usize> {
    taps.iter().position(|t| !t.status.is_pass())
}

/// What diagnosis can look at for one failing trial.
pub struct Ctx<'a> {
    pub case: &'a Case,
    /// The reference: goldens, or a reference engine's outputs.
    pub expected: &'a dyn Expected,
    /// The engine's outputs from the trial's run.
    pub outputs: &'a Outputs,
    /// The compared taps, in forward order.
    pub taps: &'a [TapReport],
    /// Index of the first divergent tap.
    pub first: usize,
    /// Whether the case's attention mask applies to the first divergent tap (not to a decoder's).
    first_masked: bool,
    cache: HashMap<String, Option<Arc<Tensor>>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        case: &'a Case,
        expected: &'a dyn Expected,
        outputs: &'a Outputs,
        taps: &'a [TapReport],
        first: usize,
    ) -> Self {
        let first_masked = taps.get(first).is_none_or(|t| masked(case, &t.name));
        Ctx { case, expected, outputs, taps, first, first_masked, cache: HashMap::new() }
    }
    /// True where position `s` of sequence `b` of the first divergent tap holds a real token:
    /// the attention mask says so for taps that follow `input_ids`; a decoder's are all real.
    pub fn is_real(&self, b: usize, s: usize) -> bool {
        !self.first_masked || self.case.inputs.is_real(b, s)
    }
    pub fn actual(&self, name: &str) -> Option<&'a Tensor> {
        self.outputs.get(name)
    }
    /// The expected tensor ("golden") by tap name (any tap the reference has, compared or not),
    /// loaded once.
    pub fn golden(&mut self, name: &str) -> Option<Arc<Tensor>> {
        if let Some(t) = self.cache.get(name) {
            return t.clone();
        }
        let t = self.expected.has(name).then(|| self.expected.load(name).ok()).flatten().map(Arc::new);
        self.cache.insert(name.to_string(), t.clone());
        t
    }
    pub fn kind_of(&self, name: &str) -> TapKind {
        let base = name.split('@').next().unwrap_or(name);
        let kind = self
            .case
            .taps
            .iter()
            .find(|t| t.name == name || t.name == base)
            .map(|t| t.module.kind)
            .unwrap_or(TapKind::Tokens);
        // A model without token ids (an image, a spectrogram) records its patch and frame
        // sequences as `rows`; their axis 1 is a position axis all the same (no mask: every
        // position is real), so the per-position detectors run on them.
        let rank = self.taps.iter().find(|t| t.name == name).map_or(0, |t| t.shape.len());
        if kind == TapKind::Rows && rank == 3 && !self.case.inputs.has_ids() {
            return TapKind::Tokens;
        }
        kind
    }
    /// Attention head size from the model config, when it has one.
    pub fn head_dim(&self) -> Option<usize> {
        let c = &self.case.model.config;
        if let Ok(Some(d)) = c.opt_usize("head_dim") {
            return Some(d);
        }
        let (h, n) = (c.opt_usize("hidden_size").ok()??, c.opt_usize("num_attention_heads").ok()??);
        (n > 0 && h % n == 0).then(|| h / n)
    }
}

/// Whether the case's attention mask describes tap `name`'s positions (see
/// [`crate::structure::Module::follows_ids`]).
pub fn masked(case: &Case, name: &str) -> bool {
    let base = name.split('@').next().unwrap_or(name);
    case.taps.iter().find(|t| t.name == name || t.name == base).is_none_or(|t| t.module.follows_ids())
}

/// Runs the engine under test on given inputs.
pub type RunOn<'a> = &'a dyn Fn(&crate::case::Inputs) -> Result<Outputs>;

/// Optional probes that run things again.
pub struct Reruns<'a> {
    /// Runs the engine under test again on the same inputs.
    pub engine: Option<&'a dyn Fn() -> Result<Outputs>>,
    /// The reference engine with known bugs injected.
    pub variants: Option<&'a dyn probes::Variants>,
    /// Runs the engine under test on other inputs (the case's, altered by a probe).
    pub engine_on: Option<RunOn<'a>>,
}

/// Hints for the first divergence of a failing trial, best first.
pub fn diagnose(ctx: &mut Ctx<'_>, reruns: &Reruns<'_>) -> Vec<Hint> {
    let mut out = Vec::new();
    nonfinite(ctx, &mut out);
    decode_step(ctx, &mut out);
    layer_type(ctx, &mut out);
    patterns::analyze(ctx, &mut out);
    patterns::rope_table(ctx, &mut out);
    reduced_precision(ctx, &mut out);
    transforms::blame(ctx, &mut out);
    transforms::activations(ctx, &mut out);
    weights::analyze(ctx, &mut out);
    weights::pooling(ctx, &mut out);
    weights::affine_row_scale(ctx, &mut out);
    weights::mlp_activation(ctx, &mut out);
    if let Some(rerun) = reruns.engine {
        probes::nondeterminism(ctx, rerun, &mut out);
    }
    if let Some(v) = reruns.variants {
        probes::known_bugs(ctx, v, &mut out);
    }
    if let Some(run) = reruns.engine_on {
        probes::input_layout(ctx, run, &mut out);
        probes::input_normalization(ctx, run, &mut out);
    }
    rank(out)
}

/// Best first; one hint per (kind, message); at most [`MAX_HINTS`].
pub fn rank(mut hints: Vec<Hint>) -> Vec<Hint> {
    hints.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut seen = Vec::new();
    hints.retain(|h| {
        let key = (h.kind, h.message.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    hints.truncate(MAX_HINTS);
    hints
}

/// Reduced precision (an fp16/bf16 step: KV cache, matmul accumulation, flash attention): the
/// error is small (SQNR 30-90 dB), touches nearly every element, and is uncorrelated with the
/// values (a scale or an eps bug gives an error proportional to them). Ranked below the
/// structured detectors: it is what remains when nothing more specific fits.
fn reduced_precision(ctx: &mut Ctx<'_>, out: &mut Vec<Hint>) {
    let tap = &ctx.taps[ctx.first];
    let name = tap.name.clone();
    let Some(m) = tap.metrics.clone() else { return };
    if !(30.0..=90.0).contains(&m.sqnr_db) || m.cosine < 0.9999 {
        return;
    }
    let (Some(a), Some(e)) = (ctx.actual(&name), ctx.golden(&name)) else { return };
    if a.shape() != e.shape() || a.numel() < 64 {
        return;
    }
    // Only the compared elements: an engine writes anything at padding positions.
    let kind = ctx.kind_of(&name);
    let rows = view::Rows::new(a.data(), a.shape(), kind).zip(view::Rows::new(e.data(), e.shape(), kind));
    let pairs: Vec<(&[f32], &[f32])> = match &rows {
        Some((ra, re)) if kind == TapKind::Tokens && ra.seq > 1 => (0..ra.batch)
            .flat_map(|b| (0..ra.seq).map(move |s| (b, s)))
            .filter(|&(b, s)| ctx.is_real(b, s))
            .map(|(b, s)| (ra.row(b, s), re.row(b, s)))
            .collect(),
        _ => vec![(a.data(), e.data())],
    };
    let (mut n, mut touched, mut dot, mut ee, mut gg) = (0usize, 0usize, 0f64, 0f64, 0f64);
    for (ra, re) in pairs {
        for (&x, &g) in ra.iter().zip(re) {
            let d = x as f64 - g as f64;
            n += 1;
            touched += usize::from(d != 0.0);
            dot += d * g as f64;
            ee += d * d;
            gg += (g as f64) * (g as f64);
        }
    }
    let spread = touched as f64 / n.max(1) as f64;
    let corr = if ee > 0.0 && gg > 0.0 { dot / (ee.sqrt() * gg.sqrt()) } else { 1.0 };
    if spread < 0.5 || corr.abs() > 0.2 {
        return;
    }
    out.push(Hint {
        kind: HintKind::ReducedPrecision,
        tap: name,
        score: 0.7,
        message: format!(
            "the error looks like reduced-precision rounding: SQNR {:.1} dB, cosine {:.6}, {:.0}% of the elements \
             differ, uncorrelated with the values (correlation {corr:.2}): an fp16/bf16 step at or before this tap \
             (KV cache, matmul accumulation, flash attention, weights); if that is intended, give the engine a \
             precision tolerance (e.g. `tolerance: {{cosine: 0.999, sqnr_db: 30}}` in its engine file)",
            m.sqnr_db,
            m.cosine,
            100.0 * spread
        ),
    });
}

fn nonfinite(ctx: &Ctx<'_>, out: &mut Vec<Hint>) {
    let Some(t) = ctx.taps.iter().find(|t| t.metrics.as_ref().is_some_and(|m| m.nan + m.inf > 0)) else { return };
    let m = t.metrics.as_ref().unwrap();
    let at = m.first_nonfinite_at.map(|i| crate::metrics::unravel(i, &t.shape));
    out.push(Hint {
        kind: HintKind::NonFinite,
        tap: t.name.clone(),
        score: 0.95,
        message: format!(
            "the engine first produces NaN/Inf at `{}` {} ({} NaN, {} Inf): look for an overflow (exp without max \
             subtraction, float16 range), a division by zero (norm epsilon, empty mask) or uninitialized memory",
            t.name,
            crate::report::terminal::index(&at),
            m.nan,
            m.inf
        ),
    });
}

/// The first divergent layer is the first of its kind (a local-attention layer after passing
/// global ones): what differs between the kinds is where to look.
fn layer_type(ctx: &Ctx<'_>, out: &mut Vec<Hint>) {
    let name = &ctx.taps[ctx.first].name;
    let Some(layer) = crate::structure::layer_of(name) else { return };
    let Some(kinds) = ctx.case.model.structure.layer_types() else { return };
    let Some(kind) = kinds.get(layer) else { return };
    // Earlier layers (of other kinds) were compared and passed.
    let earlier_layers =
        ctx.taps[..ctx.first].iter().any(|t| crate::structure::layer_of(&t.name).is_some_and(|l| l < layer));
    if !earlier_layers || kinds[..layer].contains(kind) {
        return;
    }
    let what = match kind.as_str() {
        "sliding_attention" => "the sliding window (each token sees only its local window) and the local RoPE base",
        _ => "what this layer kind does differently",
    };
    out.push(Hint {
        kind: HintKind::LayerType,
        tap: name.clone(),
        score: 0.7,
        message: format!(
            "the first divergent layer, {layer}, is the first `{kind}` layer and the layers before it (other kinds) \
             match: check {what}"
        ),
    });
}

/// Decode cases: the prompt (step 0) passes and step k is the first to diverge.
fn decode_step(ctx: &Ctx<'_>, out: &mut Vec<Hint>) {
    let name = &ctx.taps[ctx.first].name;
    let Some((_, step)) = name.rsplit_once('@') else { return };
    let Ok(step) = step.parse::<usize>() else { return };
    let prompt_ok = ctx.taps.iter().filter(|t| t.name.ends_with("@0")).all(|t| t.status == TapStatus::Pass);
    if step == 0 || !prompt_ok {
        return;
    }
    out.push(Hint {
        kind: HintKind::DecodeStep,
        tap: name.clone(),
        score: 0.85,
        message: format!(
            "the prompt (step 0) matches and decode step {step} is the first to diverge: look at the KV cache \
             (where the new key/value is written and which slots are read) and the new token's position"
        ),
    });
}
