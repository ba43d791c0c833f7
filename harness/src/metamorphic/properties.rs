//! The metamorphic properties: how an engine's outputs on one input must relate to its outputs
//! on a related input. Each returns the comparisons that show a violation (the related run is
//! the expected side), in forward order.

use crate::case::{Case, Tap};
use crate::engine::{LoadedModel, Outputs};
use crate::error::{Error, Result};
use crate::report::TapReport;
use crate::shrink::candidate_case;
use crate::shrink::input::{Candidate, Layout};
use crate::structure::TapKind;
use crate::tensor::Tensor;
use crate::tolerance::Tolerance;
use crate::trial::{compare_tensors, run_case};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// The same input twice gives bit-identical outputs.
    Determinism,
    /// A row alone gives what the same row gives inside a (padded) batch.
    Batch,
    /// Extra padding (masked) does not change the real tokens' outputs.
    Padding,
    /// Appending tokens does not change earlier positions (causal models).
    Prefix,
    /// Decoding with the KV cache gives the full forward's last position (causal models).
    Cache,
}

/// Why a property does not hold on an input.
#[derive(Debug, Clone)]
pub struct Violation {
    /// One sentence.
    pub what: String,
    /// The comparisons, in forward order (the related run is the expected side).
    pub taps: Vec<TapReport>,
    /// Index of the first failing comparison.
    pub first: Option<usize>,
}

impl Property {
    pub const NAMES: &'static [&'static str] = &["determinism", "batch", "padding", "prefix", "cache"];

    pub fn parse(s: &str) -> Option<Property> {
        Some(match s {
            "determinism" => Property::Determinism,
            "batch" => Property::Batch,
            "padding" => Property::Padding,
            "prefix" => Property::Prefix,
            "cache" => Property::Cache,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Property::NAMES[self as usize]
    }

    pub fn needs_causal(self) -> bool {
        matches!(self, Property::Prefix | Property::Cache)
    }

    /// Whether the property applies to given named inputs (an image, a spectrogram): the others
    /// vary generated token ids.
    pub fn takes_named_inputs(self) -> bool {
        matches!(self, Property::Determinism | Property::Batch)
    }

    /// Inputs with a prompt and tokens after it (appended, or decoded).
    pub fn uses_steps(self) -> bool {
        self.needs_causal()
    }
}

/// Rows `b` (or row 0 of a positions tap) and positions `pos` of a `[batch, seq, ...]` tensor, as
/// `[1, len, ...]`; a pooled `[batch, ...]` tensor gives `[1, ...]` (row `b`).
pub(crate) fn slice(t: &Tensor, kind: TapKind, b: usize, pos: std::ops::Range<usize>) -> Result<Tensor> {
    let shape = t.shape();
    let bad = || Error::engine(format!("tap of shape {shape:?} has no row {b} / positions {pos:?}"));
    match kind {
        TapKind::Rows => {
            let feat: usize = shape.get(1..).map_or(1, |s| s.iter().product());
            let data = t.data().get(b * feat..(b + 1) * feat).ok_or_else(bad)?.to_vec();
            let mut s = vec![1];
            s.extend_from_slice(&shape[1..]);
            Tensor::new(s, data)
        }
        TapKind::Whole => Err(Error::engine(format!("tap of shape {shape:?} has no row or position axes to slice"))),
        TapKind::Tokens | TapKind::Positions => {
            if shape.len() < 2 || pos.end > shape[1] {
                return Err(bad());
            }
            let b = if kind == TapKind::Positions { 0 } else { b };
            let feat: usize = shape[2..].iter().product();
            let start = (b * shape[1] + pos.start) * feat;
            let data = t.data().get(start..start + pos.len() * feat).ok_or_else(bad)?.to_vec();
            let mut s = vec![1, pos.len()];
            s.extend_from_slice(&shape[2..]);
            Tensor::new(s, data)
        }
    }
}

fn get<'a>(out: &'a Outputs, name: &str) -> Result<&'a Tensor> {
    out.get(name).ok_or_else(|| {
        Error::engine(format!("the engine did not return `{name}`")).hint("tap only what the engine exposes")
    })
}

fn compare(name: &str, tol: &Tolerance, actual: Tensor, expected: Tensor) -> TapReport {
    compare_tensors(name, tol, Some(&actual), Ok(expected), &|_| None, None, None)
}

/// The comparisons of one check, and which failed first.
struct Checks {
    taps: Vec<TapReport>,
    failed_at: Option<(usize, String)>,
}

impl Checks {
    fn new() -> Checks {
        Checks { taps: vec![], failed_at: None }
    }
    fn push(&mut self, rep: TapReport, context: impl FnOnce() -> String) {
        if !rep.status.is_pass() && self.failed_at.is_none() {
            self.failed_at = Some((self.taps.len(), context()));
        }
        self.taps.push(rep);
    }
    fn violation(self, what: impl FnOnce(&str, &str) -> String) -> Option<Violation> {
        let (i, context) = self.failed_at?;
        let name = self.taps[i].name.clone();
        Some(Violation { what: what(&name, &context), taps: self.taps, first: Some(i) })
    }
}

fn run(model: &dyn LoadedModel, case: &Case) -> Result<Outputs> {
    let names: Vec<&str> = case.taps.iter().map(|t| t.name.as_str()).collect();
    crate::timings::time(crate::timings::Phase::Forward, || run_case(case, model, &names))
}

/// Does `property` hold for `model` on `cand`? `base` gives the model, taps and tolerances.
pub fn check(
    property: Property,
    base: &Case,
    model: &dyn LoadedModel,
    layout: &Layout,
    cand: &Candidate,
) -> Result<Option<Violation>> {
    let taps: Vec<&Tap> = base.taps.iter().collect();
    let case = candidate_case(base, cand, layout);
    match property {
        Property::Determinism => determinism(model, &case, &taps),
        Property::Batch => {
            let batch = run(model, &case)?;
            let mut checks = Checks::new();
            let alone: Vec<Outputs> = (0..cand.rows.len())
                .map(|b| {
                    let one = Candidate { rows: vec![cand.rows[b].clone()], prompt: None, extra_pad: 0 };
                    run(model, &candidate_case(base, &one, layout))
                })
                .collect::<Result<_>>()?;
            for t in &taps {
                for (b, row) in cand.rows.iter().enumerate() {
                    let n = row.ids.len();
                    let x = slice(get(&batch, &t.name)?, t.module.kind, b, 0..n)?;
                    let e = slice(get(&alone[b], &t.name)?, t.module.kind, 0, 0..n)?;
                    checks.push(compare(&t.name, &t.tolerance, x, e), || format!("row {b}"));
                }
            }
            Ok(checks.violation(|tap, row| {
                format!(
                    "{row} inside the batch of {} differs from the same row run alone, first at `{tap}`",
                    cand.rows.len()
                )
            }))
        }
        Property::Padding => {
            let padded = run(model, &case)?;
            let plain = Candidate { extra_pad: 0, ..cand.clone() };
            let plain = run(model, &candidate_case(base, &plain, layout))?;
            let mut checks = Checks::new();
            for t in &taps {
                for (b, row) in cand.rows.iter().enumerate() {
                    let n = row.ids.len();
                    let x = slice(get(&padded, &t.name)?, t.module.kind, b, 0..n)?;
                    let e = slice(get(&plain, &t.name)?, t.module.kind, b, 0..n)?;
                    checks.push(compare(&t.name, &t.tolerance, x, e), || format!("row {b}"));
                }
            }
            Ok(checks.violation(|tap, row| {
                let n = cand.extra_pad;
                let what = if n == 1 { "1 padding position".to_string() } else { format!("{n} padding positions") };
                format!("{what} (masked) change the real tokens of {row}, first at `{tap}`")
            }))
        }
        Property::Prefix => {
            let m = cand.prompt.unwrap_or(1);
            let whole = Candidate { prompt: None, ..cand.clone() };
            let whole = run(model, &candidate_case(base, &whole, layout))?;
            let prefix = Candidate { prompt: None, rows: cut(cand, m), extra_pad: 0 };
            let prefix = run(model, &candidate_case(base, &prefix, layout))?;
            let mut checks = Checks::new();
            for t in taps.iter().filter(|t| t.module.kind != TapKind::Rows) {
                for b in 0..cand.rows.len() {
                    let x = slice(get(&whole, &t.name)?, t.module.kind, b, 0..m)?;
                    let e = slice(get(&prefix, &t.name)?, t.module.kind, b, 0..m)?;
                    checks.push(compare(&t.name, &t.tolerance, x, e), || format!("row {b}"));
                }
            }
            let appended = cand.steps();
            Ok(checks.violation(|tap, row| {
                let what = if appended == 1 { "1 token".to_string() } else { format!("{appended} tokens") };
                let first = if m == 1 { "position 0".to_string() } else { format!("the first {m} positions") };
                format!("appending {what} changes {first} of {row}, first at `{tap}`")
            }))
        }
        Property::Cache => {
            let dec = case.decode.as_ref().ok_or_else(|| Error::engine("a cache check needs decode steps"))?;
            let names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
            let steps = model.decode(&case.inputs, &dec.tokens, &names)?;
            let m = case.inputs.input_ids.seq;
            let mut checks = Checks::new();
            for (k, step) in steps.iter().enumerate() {
                let full = run(
                    model,
                    &candidate_case(base, &Candidate { prompt: None, rows: cut(cand, m + k), extra_pad: 0 }, layout),
                )?;
                for t in taps.iter().filter(|t| t.module.kind != TapKind::Rows) {
                    // Step 0 is the prompt; step k the last position of the first m + k tokens.
                    let pos = if k == 0 { 0..m } else { m + k - 1..m + k };
                    for b in 0..cand.rows.len() {
                        let x = slice(get(step, &t.name)?, t.module.kind, b, 0..pos.len())?;
                        let e = slice(get(&full, &t.name)?, t.module.kind, b, pos.clone())?;
                        let name = format!("{}@{k}", t.name);
                        checks.push(compare(&name, &t.tolerance, x, e), || format!("row {b}"));
                    }
                }
            }
            Ok(checks.violation(|tap, row| {
                format!("decoding through the KV cache differs from the full forward at `{tap}` ({row})")
            }))
        }
    }
}

/// Two runs of `case` give bit-identical outputs.
fn determinism(model: &dyn LoadedModel, case: &Case, taps: &[&Tap]) -> Result<Option<Violation>> {
    let (a, b) = (run(model, case)?, run(model, case)?);
    let exact = Tolerance { atol: Some(0.0), rtol: Some(0.0), ..Tolerance::default() };
    let mut checks = Checks::new();
    for t in taps {
        let (x, y) = (get(&a, &t.name)?, get(&b, &t.name)?);
        let same = x.shape() == y.shape() && x.data().iter().zip(y.data()).all(|(p, q)| p.to_bits() == q.to_bits());
        let mut rep = compare(&t.name, &exact, x.clone(), y.clone());
        if !same && rep.status.is_pass() {
            // Only NaN bit patterns differ: still not bit-identical.
            rep.status = crate::report::TapStatus::Error { message: "NaN bits differ between runs".into() };
        }
        if same {
            rep.status = crate::report::TapStatus::Pass;
        }
        checks.push(rep, String::new);
    }
    Ok(checks.violation(|tap, _| format!("two runs on the same input differ, first at `{tap}`")))
}

/// `check` on a case's own named inputs (no generated ids): determinism, and batch invariance
/// (each row alone gives its row of the batch, on every `[batch, ...]` tap).
pub fn check_named(property: Property, case: &Case, model: &dyn LoadedModel) -> Result<Option<Violation>> {
    let taps: Vec<&Tap> = case.taps.iter().collect();
    match property {
        Property::Determinism => determinism(model, case, &taps),
        Property::Batch => {
            let rows = case.inputs.batch();
            let batch = run(model, case)?;
            let alone: Vec<Outputs> = (0..rows)
                .map(|b| {
                    let mut one = case.clone();
                    one.inputs = crate::shrink::rows::row_inputs(&case.inputs, b);
                    run(model, &one)
                })
                .collect::<Result<_>>()?;
            let mut checks = Checks::new();
            for t in taps.iter().filter(|t| matches!(t.module.kind, TapKind::Tokens | TapKind::Rows)) {
                for (b, one) in alone.iter().enumerate() {
                    let x = get(&batch, &t.name)?;
                    let n = x.shape().get(1).copied().unwrap_or(0);
                    let x = slice(x, t.module.kind, b, 0..n)?;
                    let e = slice(get(one, &t.name)?, t.module.kind, 0, 0..n)?;
                    checks.push(compare(&t.name, &t.tolerance, x, e), || format!("row {b}"));
                }
            }
            Ok(checks.violation(|tap, row| {
                format!("{row} inside the batch of {rows} differs from the same row run alone, first at `{tap}`")
            }))
        }
        p => Err(Error::input(format!("`{}` needs generated token inputs", p.name()))),
    }
}

/// The rows cut to their first `n` tokens.
fn cut(c: &Candidate, n: usize) -> Vec<crate::shrink::input::Row> {
    c.rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.ids.truncate(n);
            r.tail = false;
            r
        })
        .collect()
}
