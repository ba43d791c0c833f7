//! Decode cases: the prompt (step 0), then one token per step through the engine's KV cache.
//!
//! Each step's taps are compared with HF's run with `past_key_values` under `{tap}@{step}`.
//! On top, the engine is checked against itself: decode step k's logits must equal its full
//! forward over the prompt and the first k tokens, at the last position ("cache decode == full
//! forward"). Those checks are extra entries `logits@{k} == full forward` in the report, placed
//! after step k's taps; they need no golden, so they also catch a broken cache in an engine
//! whose goldens come from elsewhere.

use crate::case::{Case, Decode, Tap};
use crate::engine::{LoadedModel, Outputs};
use crate::error::{Error, Result};
use crate::expected::Expected;
use crate::report::TapReport;
use crate::structure::Module;
use crate::tensor::Tensor;
use crate::trial::compare_tap;

/// What the full-forward check compares at every step.
const CHECKED: &str = "logits";

/// The name of the full-forward check of step `k`.
pub fn check_name(k: usize) -> String {
    format!("{CHECKED}@{k} == full forward")
}

/// Run every step of `dec` on `model` and return the outputs keyed `{tap}@{step}`. `taps` are
/// the wanted names, with or without their `@step`; `logits` is always returned.
pub fn outputs(case: &Case, dec: &Decode, model: &dyn LoadedModel, taps: &[&str]) -> Result<Outputs> {
    let mut names: Vec<&str> = vec![CHECKED];
    for t in taps {
        let base = t.rsplit_once('@').map_or(*t, |(b, _)| b);
        if !names.contains(&base) {
            names.push(base);
        }
    }
    let steps = model.decode_for(&case.run_context(), &case.inputs, &dec.tokens, &names)?;
    if steps.len() != dec.steps() + 1 {
        return Err(Error::engine(format!(
            "decode returned {} steps, expected {} (the prompt and {} tokens)",
            steps.len(),
            dec.steps() + 1,
            dec.steps()
        )));
    }
    let mut out = Outputs::new();
    for (k, step) in steps.into_iter().enumerate() {
        out.extend(step.into_iter().map(|(name, t)| (format!("{name}@{k}"), t)));
    }
    Ok(out)
}

/// "Cache decode == full forward": decode step k's logits (in `outputs`, from [`outputs`])
/// against the engine's full forward over the prompt and the first k tokens, for k = 1..=steps,
/// as `(step, report)`. The tolerance is the `logits` tap's, else the case default.
pub fn full_forward_checks(
    case: &Case,
    dec: &Decode,
    model: &dyn LoadedModel,
    outputs: &Outputs,
    reference: &dyn Expected,
) -> Result<Vec<(usize, TapReport)>> {
    let tolerance = case.taps.iter().find(|t| t.module.path == CHECKED).map_or(&case.tolerance, |t| &t.tolerance);
    let mut checks = Vec::with_capacity(dec.steps());
    for k in 1..=dec.steps() {
        let full = model.run_for(&case.run_context(), &dec.prefix(&case.inputs, k), &[CHECKED])?;
        let tap = Tap {
            name: check_name(k),
            module: Module::tokens(CHECKED),
            tolerance: tolerance.clone(),
            pattern: "decode".into(),
            step: Some(k),
        };
        let expected = match full.get(CHECKED) {
            Some(t) => last_position(t),
            None => Err(Error::engine(format!("the full forward returned no `{CHECKED}`"))),
        };
        // The golden's float32 noise floor at this step is the unit for `noise:` tolerances.
        let floor = reference.noise_floor(&format!("{CHECKED}@{k}"));
        // No golden file: the reference here is the engine itself.
        checks.push((k, compare_tap(case, &tap, outputs.get(&format!("{CHECKED}@{k}")), expected, floor, None)));
    }
    Ok(checks)
}

/// `[b, n, ...]` -> `[b, 1, ...]`: the last position of every row.
fn last_position(t: &Tensor) -> Result<Tensor> {
    let shape = t.shape();
    if shape.len() < 2 || shape[1] == 0 {
        return Err(Error::engine(format!("expected a [batch, seq, ...] tensor, got shape {shape:?}")));
    }
    let (b, n) = (shape[0], shape[1]);
    let row: usize = shape[2..].iter().product();
    let mut data = Vec::with_capacity(b * row);
    for bi in 0..b {
        let start = (bi * n + n - 1) * row;
        data.extend_from_slice(&t.data()[start..start + row]);
    }
    let mut out_shape = shape.to_vec();
    out_shape[1] = 1;
    Tensor::new(out_shape, data)
}

/// Put each step's check right after that step's last tap (taps are step-major).
pub fn insert_checks(taps: &mut Vec<TapReport>, checks: Vec<(usize, TapReport)>) {
    for (k, check) in checks {
        let suffix = format!("@{k}");
        let at = taps.iter().rposition(|t| t.name.ends_with(&suffix)).map_or(taps.len(), |i| i + 1);
        taps.insert(at, check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_position_takes_the_last_row_of_each_sequence() {
        let t = Tensor::new(vec![2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let l = last_position(&t).unwrap();
        assert_eq!(l.shape(), &[2, 1, 2]);
        assert_eq!(l.data(), &[4.0, 5.0, 10.0, 11.0]);
    }
}
