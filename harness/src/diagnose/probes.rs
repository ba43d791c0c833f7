//! Probes that run something again: the engine itself (is it deterministic?) and the reference
//! engine with known port bugs injected (does one of them reproduce the engine's output?).

use super::view::within_tolerance;
use super::{Ctx, Hint, HintKind};
use crate::engine::Outputs;
use crate::error::Result;

/// A known port bug that a catalogue can inject into a reference run (the reference engine's
/// mutant zoo: [`crate::catalogue`]). Diagnosis knows nothing of how it is injected.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Stable within its catalogue, e.g. `NoSlidingWindow`.
    pub id: String,
    /// What a port with this bug does, as the hint says it.
    pub describe: String,
    /// Re-pairing RoPE: reported as the `rope_pairing` finding rather than a known bug.
    pub rope_pairing: bool,
}

/// A catalogue of known port bugs, re-run on a trial's inputs.
pub trait Variants {
    /// The probes worth trying when the first divergence is at `tap`.
    fn probes(&self, tap: &str) -> Vec<Probe>;
    /// The reference with `probe` injected, on the trial's inputs; `None` when it cannot run
    /// this case (class not implemented).
    fn run(&self, probe: &Probe, taps: &[&str]) -> Option<Result<Outputs>>;
}

/// Run the engine a second time; any bitwise difference means non-determinism.
pub fn nondeterminism(ctx: &mut Ctx<'_>, rerun: &dyn Fn() -> Result<Outputs>, out: &mut Vec<Hint>) {
    let Ok(second) = rerun() else { return };
    for t in ctx.taps.iter() {
        let (Some(x), Some(y)) = (ctx.outputs.get(&t.name), second.get(&t.name)) else { continue };
        if x.shape() != y.shape() || x.data().iter().zip(y.data()).any(|(p, q)| p.to_bits() != q.to_bits()) {
            let diff = x.data().iter().zip(y.data()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            out.push(Hint {
                kind: HintKind::NonDeterministic,
                tap: t.name.clone(),
                score: 0.99,
                message: format!(
                    "two runs of the engine on the same input differ, first at `{}` (by up to {diff:.2e}): the engine \
                     is non-deterministic (dropout left on, uninitialized memory, a race) — fix that before comparing",
                    t.name
                ),
            });
            return;
        }
    }
}

/// Re-run the reference with each known port bug; report those that reproduce the engine's
/// output at the first divergent tap (within its tolerance).
pub fn known_bugs(ctx: &mut Ctx<'_>, variants: &dyn Variants, out: &mut Vec<Hint>) {
    let name = ctx.taps[ctx.first].name.clone();
    let kind = ctx.kind_of(&name);
    let Some(actual) = ctx.actual(&name) else { return };
    let Some(golden) = ctx.golden(&name) else { return };
    for m in variants.probes(&name) {
        let Some(Ok(outs)) = variants.run(&m, &[name.as_str()]) else { continue };
        let Some(v) = outs.get(&name) else { continue };
        if v.shape() != actual.shape() {
            continue;
        }
        // A variant that still matches the golden did not change this tap: no evidence. (A
        // variant of another shape than the golden, like the engine's, did change it.)
        if v.shape() == golden.shape()
            && within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, v.data(), golden.data()).1
        {
            continue;
        }
        if within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, actual.data(), v.data()).1 {
            // Re-pairing RoPE is the "RoPE pairing" finding; the rest are known bugs.
            let kind = if m.rope_pairing { HintKind::RopePairing } else { HintKind::KnownBug };
            out.push(Hint {
                kind,
                tap: name.clone(),
                score: 0.85,
                message: format!(
                    "the reference engine reproduces the engine's `{name}` when {}: the port likely has that bug",
                    m.describe
                ),
            });
        }
    }
}
