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

/// Names of the axes of well-known named inputs, for the hint's wording.
fn axis_names(input: &str, rank: usize) -> Vec<String> {
    let known: &[&str] = match (input, rank) {
        ("pixel_values", 4) => &["B", "C", "H", "W"],
        ("pixel_values", 5) => &["B", "T", "C", "H", "W"],
        ("input_features", 3) => &["B", "mel", "frames"],
        _ => &[],
    };
    if known.is_empty() {
        (0..rank).map(|i| format!("axis{i}")).collect()
    } else {
        known.iter().map(|s| s.to_string()).collect()
    }
}

/// All orders of `1..rank` (the batch stays first), identity excluded; none past rank 5.
fn permutations(rank: usize) -> Vec<Vec<usize>> {
    fn go(rest: Vec<usize>, cur: Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if rest.is_empty() {
            out.push(cur);
            return;
        }
        for (i, &a) in rest.iter().enumerate() {
            let mut r = rest.clone();
            r.remove(i);
            let mut c = cur.clone();
            c.push(a);
            go(r, c, out);
        }
    }
    if !(3..=5).contains(&rank) {
        return vec![];
    }
    let mut out = Vec::new();
    go((1..rank).collect(), vec![0], &mut out);
    out.retain(|p| p.iter().enumerate().any(|(i, &a)| i != a));
    out
}

/// `data` (C order, `shape`) with its axes in the order `perm`, laid out in C order of the
/// permuted shape: the bytes an engine that reads layout `perm` needs to see the same tensor.
fn transpose(data: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let pshape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let mut idx = vec![0usize; rank];
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..data.len() {
        out.push(data[idx.iter().zip(perm).map(|(&i, &a)| i * strides[a]).sum::<usize>()]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < pshape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// A named float input of rank 3-5 (an image, a spectrogram) read in another memory layout: give
/// the engine the case's input transposed to each other order of its non-batch axes, declared
/// shape unchanged; an order that makes the first divergent tap match the goldens is the layout
/// the engine reads (NHWC for NCHW, frames-major for mel-major).
pub fn input_layout(ctx: &mut Ctx<'_>, run: &dyn Fn(&crate::case::Inputs) -> Result<Outputs>, out: &mut Vec<Hint>) {
    use harness_api::inputs::InputData;
    let name = ctx.taps[ctx.first].name.clone();
    let kind = ctx.kind_of(&name);
    let Some(golden) = ctx.golden(&name) else { return };
    for (k, input) in ctx.case.inputs.named.iter().enumerate() {
        let InputData::F32(data) = &input.data else { continue };
        for perm in permutations(input.shape.len()) {
            let mut inputs = ctx.case.inputs.clone();
            inputs.named[k].data = InputData::F32(transpose(data, &input.shape, &perm));
            let Ok(outs) = run(&inputs) else { continue };
            let Some(v) = outs.get(&name) else { continue };
            if v.shape() != golden.shape()
                || !within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, v.data(), golden.data()).1
            {
                continue;
            }
            let axes = axis_names(&input.name, input.shape.len());
            let declared = axes.join(", ");
            let read = perm.iter().map(|&a| axes[a].as_str()).collect::<Vec<_>>().join(", ");
            out.push(Hint {
                kind: HintKind::InputLayout,
                tap: name.clone(),
                score: 0.9,
                message: format!(
                    "the engine reads `{}` as [{read}], not [{declared}]: given the input transposed to \
                     [{read}] it matches the goldens at `{name}` — it expects another memory layout (NHWC vs NCHW, \
                     frames vs mel bins); transpose the input, or fix the layout the engine assumes",
                    input.name
                ),
            });
            return;
        }
    }
}

/// Normalizations a preprocessing step applies to images: (name, mean, std) per channel.
const IMAGE_NORMS: &[(&str, [f32; 3], [f32; 3])] = &[
    ("mean 0.5, std 0.5 (ViT, SigLIP)", [0.5; 3], [0.5; 3]),
    ("ImageNet's mean and std", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ("CLIP's mean and std", [0.481_454_66, 0.457_827_5, 0.408_210_73], [0.268_629_54, 0.261_302_6, 0.275_777_1]),
];

/// A named float input normalized a second time by the engine: give it the case's input with a
/// standard normalization undone (`x * std + mean` per channel; `x * 255` for a port that
/// divides by 255; Whisper's log-mel scaling `x * 4 - 4`); one that makes the first divergent
/// tap match names what the engine applies on top of the preprocessor's output.
pub fn input_normalization(
    ctx: &mut Ctx<'_>,
    run: &dyn Fn(&crate::case::Inputs) -> Result<Outputs>,
    out: &mut Vec<Hint>,
) {
    use harness_api::inputs::InputData;
    let name = ctx.taps[ctx.first].name.clone();
    let kind = ctx.kind_of(&name);
    let Some(golden) = ctx.golden(&name) else { return };
    for (k, input) in ctx.case.inputs.named.iter().enumerate() {
        let InputData::F32(data) = &input.data else { continue };
        // (what the engine does, the input that undoes it)
        let mut undo: Vec<(String, Vec<f32>)> = Vec::new();
        if input.shape.len() == 4 && input.shape[1] == 3 {
            let plane = input.shape[2] * input.shape[3];
            for (what, mean, std) in IMAGE_NORMS {
                let v =
                    data.iter().enumerate().map(|(i, &x)| x * std[(i / plane) % 3] + mean[(i / plane) % 3]).collect();
                undo.push((format!("normalizes it again with {what}"), v));
            }
        }
        undo.push((
            "divides it by 255 (it expects 0-255 pixel values)".into(),
            data.iter().map(|x| x * 255.0).collect(),
        ));
        if input.name == "input_features" {
            undo.push((
                "applies Whisper's log-mel scaling ((x + 4) / 4) again".into(),
                data.iter().map(|x| x * 4.0 - 4.0).collect(),
            ));
        }
        for (what, v) in undo {
            let mut inputs = ctx.case.inputs.clone();
            inputs.named[k].data = InputData::F32(v);
            let Ok(outs) = run(&inputs) else { continue };
            let Some(got) = outs.get(&name) else { continue };
            if got.shape() != golden.shape()
                || !within_tolerance(ctx.case, &ctx.taps[ctx.first], kind, got.data(), golden.data()).1
            {
                continue;
            }
            out.push(Hint {
                kind: HintKind::InputNormalization,
                tap: name.clone(),
                score: 0.9,
                message: format!(
                    "the engine {what}: given `{}` with that undone it matches the goldens at `{name}`; the case's \
                     input is the preprocessor's output, already normalized — drop the engine's own normalization \
                     (or feed it what it expects)",
                    input.name
                ),
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_to_nhwc_puts_channels_last() {
        // [1, 2, 1, 2] (B, C, H, W): channel 0 = [1, 2], channel 1 = [3, 4].
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(transpose(&x, &[1, 2, 1, 2], &[0, 2, 3, 1]), [1.0, 3.0, 2.0, 4.0]);
        assert_eq!(permutations(4).len(), 5);
        assert!(permutations(2).is_empty());
    }
}
