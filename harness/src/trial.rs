//! One trial: a case run on one engine, every tap compared with its expected tensor (a golden,
//! or a reference engine's output: see [`crate::expected`]), in forward order.

use crate::case::{Case, Tap};
use crate::diagnose::logits::{self, is_logits_tap};
use crate::diagnose::probes::Variants;
use crate::diagnose::{Ctx, Reruns, diagnose};
use crate::engine::{LoadedModel, Outputs};
use crate::error::Result;
use crate::expected::Expected;
use crate::metrics::{Selection, compare_golden, unravel};
use crate::report::{Added, TapReport, TapStatus, TrialReport, Verdict};
use crate::structure::TapKind;
use crate::tensor::Tensor;
use crate::timings::{self, Phase};
use crate::tolerance::{Observed, Tolerance};

/// Row flags selecting the real (non-padding) tokens of a `[batch, seq, ...]` tap, or None when
/// every element is compared.
pub fn selection_rows(case: &Case, kind: TapKind, follows_ids: bool, shape: &[usize]) -> Option<Vec<bool>> {
    let mask = case.inputs.attention_mask.as_ref()?;
    // A decoder's taps (an encoder-decoder's) follow its own ids: the encoder's mask is not theirs,
    // even at the same length.
    if case.compare_padding || kind != TapKind::Tokens || !follows_ids || !mask.data.contains(&0) {
        return None;
    }
    if shape.len() < 2 || shape[0] != mask.batch || shape[1] != mask.seq {
        return None;
    }
    Some(mask.data.iter().map(|&m| m != 0).collect())
}

/// Compare one tap. `actual` is None when the engine did not return it; `noise_floor` is the
/// tap's recorded float32 noise floor.
pub fn compare_tap(
    case: &Case,
    tap: &Tap,
    actual: Option<&Tensor>,
    golden: Result<Tensor>,
    noise_floor: Option<f64>,
    golden_file: Option<&std::path::Path>,
) -> TapReport {
    let rows = |shape: &[usize]| selection_rows(case, tap.module.kind, tap.module.follows_ids(), shape);
    compare_tensors(&tap.name, &tap.tolerance, actual, golden, &rows, noise_floor, golden_file)
}

/// Compare an engine tensor with its golden under `tolerance`; `rows` gives the compared rows
/// for the golden's shape (see [`selection_rows`]). Shared by trials and `harness diff`.
pub fn compare_tensors(
    name: &str,
    tolerance: &Tolerance,
    actual: Option<&Tensor>,
    golden: Result<Tensor>,
    rows: &dyn Fn(&[usize]) -> Option<Vec<bool>>,
    noise_floor: Option<f64>,
    golden_file: Option<&std::path::Path>,
) -> TapReport {
    let mut rep = TapReport { noise_floor, ..TapReport::new(name, tolerance.clone()) };
    let golden = match golden {
        Ok(g) => g,
        Err(e) => {
            rep.status = TapStatus::Error { message: e.to_string() };
            return rep;
        }
    };
    rep.shape = golden.shape().to_vec();
    let Some(actual) = actual else {
        rep.status = TapStatus::Missing;
        return rep;
    };
    if actual.shape() != golden.shape() {
        rep.status = TapStatus::ShapeMismatch { actual: actual.shape().to_vec(), expected: golden.shape().to_vec() };
        return rep;
    }
    let rows = rows(golden.shape());
    let sel = rows.as_deref().map(|rows| Selection { row_len: golden.numel() / rows.len().max(1), rows });
    let m = compare_golden(actual, &golden, tolerance.allclose(), sel);
    let shape = golden.shape();
    if is_logits_tap(name) {
        // One row per position: the token selection, if any, is exactly the row selection.
        rep.logits = Some(logits::compute(actual.data(), golden.data(), shape, tolerance.allclose(), rows.as_deref()));
    }
    rep.max_abs_index = m.max_abs_at.map(|i| unravel(i, shape));
    rep.first_mismatch_index = m.first_mismatch_at.map(|i| unravel(i, shape));
    if m.golden_nonfinite > 0 {
        let at = m.first_golden_nonfinite_at.map(|i| unravel(i, shape));
        let mut err = crate::Error::golden(format!(
            "the golden holds {} NaN/Inf values (first at {})",
            m.golden_nonfinite,
            crate::report::terminal::index(&at)
        ))
        .hint("goldens must be finite: check the reference run for an overflow, then regenerate");
        if let Some(p) = golden_file {
            err = err.file(p);
        }
        rep.status = TapStatus::Error { message: err.to_string() };
    } else {
        let failures =
            tolerance.check(Observed { metrics: &m, logits: rep.logits.as_ref(), noise_floor: rep.noise_floor });
        if !failures.is_empty() {
            rep.status = TapStatus::Fail { failures };
        }
    }
    rep.metrics = Some(m);
    rep
}

/// The taps of `case` in the forward order the reference recorded (the case's own order, which
/// is the family's module order, when it recorded none).
pub fn taps_in_forward_order<'a>(case: &'a Case, expected: &dyn Expected) -> Vec<&'a Tap> {
    let pos = |name: &str| expected.position(name).unwrap_or(usize::MAX);
    let mut taps: Vec<&Tap> = case.taps.iter().collect();
    taps.sort_by_key(|t| pos(&t.name));
    taps
}

/// Split `taps` into those an engine producing `produced` (None: every tap) returns and those it
/// cannot; a decode tap `{tap}@{step}` counts as `{tap}`. Outputs-only engines are compared on the
/// intersection: a tap they cannot produce is not a failure, it is said in a note.
pub fn split_produced<'a>(taps: Vec<&'a Tap>, produced: Option<&[String]>) -> (Vec<&'a Tap>, Vec<&'a Tap>) {
    let Some(produced) = produced else { return (taps, vec![]) };
    taps.into_iter().partition(|t| {
        let base = t.name.split('@').next().unwrap_or(&t.name);
        produced.iter().any(|p| p == base)
    })
}

/// The note of a trial that compares fewer taps than the case has (outputs-only engines).
pub fn not_produced_note(engine: &str, skipped: &[&Tap], produced: Option<&[String]>) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut bases: Vec<&str> = Vec::new();
    for t in skipped {
        let b = t.name.split('@').next().unwrap_or(&t.name);
        if !bases.contains(&b) {
            bases.push(b);
        }
    }
    const SHOWN: usize = 6;
    let mut list = bases.iter().take(SHOWN).map(|b| format!("`{b}`")).collect::<Vec<_>>().join(", ");
    if bases.len() > SHOWN {
        list.push_str(&format!(" and {} more", bases.len() - SHOWN));
    }
    Some(format!(
        "not compared: {} of the case's taps that `{engine}` cannot produce ({list}); it returns only {}",
        bases.len(),
        produced.unwrap_or_default().join(", ")
    ))
}

/// The engine's outputs for `case`'s inputs: one forward, or for a decode case every step
/// keyed `{tap}@{step}`.
pub fn run_case(case: &Case, model: &dyn LoadedModel, taps: &[&str]) -> Result<Outputs> {
    use crate::sentence::{SENTENCE_EMBEDDING, SIMILARITY};
    match &case.decode {
        Some(dec) => crate::decode::outputs(case, dec, model, taps),
        None => {
            // `similarity` is the harness's, from the engine's `sentence_embedding`.
            let similarity = taps.is_empty() || taps.contains(&SIMILARITY);
            let mut asked = taps.to_vec();
            if similarity && !taps.is_empty() && !asked.contains(&SENTENCE_EMBEDDING) {
                asked.push(SENTENCE_EMBEDDING);
            }
            let mut out = model.run_for(&case.run_context(), &case.inputs, &asked)?;
            if similarity
                && !out.contains_key(SIMILARITY)
                && let Some(e) = out.get(SENTENCE_EMBEDDING)
            {
                let s = crate::sentence::similarity(e)?;
                out.insert(SIMILARITY.to_string(), s);
            }
            Ok(out)
        }
    }
}

/// Run `case` on a loaded engine model and compare every tap with `expected` (the goldens, or a
/// reference engine's outputs); diagnose a failure (with the reference engine's variants, when
/// given).
pub fn run(
    case: &Case,
    engine: &str,
    model: &dyn LoadedModel,
    expected: &dyn Expected,
    rerun: String,
    variants: Option<&dyn Variants>,
) -> TrialReport {
    let (mut report, outputs) = assess(case, engine, model, expected, rerun, variants);
    // Only a real failure gets the extras: an integrity error (a golden that does not match its
    // manifest, a missing tap) says nothing about the model.
    if report.verdict == Verdict::Fail {
        add_block_errors(case, model, expected, &mut report.taps);
        for tap in &case.taps {
            let Some(rep) = report.taps.iter_mut().find(|r| r.name == tap.name) else { continue };
            if let (Some(a), Ok(g)) = (outputs.get(&tap.name), expected.load(&tap.name)) {
                add_detail(case, tap, rep, a, &g);
            }
        }
    }
    report
}

/// The verdict, first divergence and hints of [`run`], without the extras only report files
/// use (per-block error, per-token detail); also returns the engine's outputs. Shrinking judges
/// its candidates with it.
pub fn assess(
    case: &Case,
    engine: &str,
    model: &dyn LoadedModel,
    expected: &dyn Expected,
    rerun: String,
    variants: Option<&dyn Variants>,
) -> (TrialReport, Outputs) {
    let mut report = TrialReport::new(format!("{engine}::{}", case.id), engine, &case.id, case.file.clone(), rerun);
    report.notes = model.notes();
    let (taps, not_produced) = split_produced(taps_in_forward_order(case, expected), model.taps().as_deref());
    if let Some(note) = not_produced_note(engine, &not_produced, model.taps().as_deref()) {
        report.notes.push(note);
    }
    if taps.is_empty() {
        report.verdict = Verdict::Error;
        report.error = Some(format!(
            "engine `{engine}` produces none of the case's taps (it produces only {})",
            model.taps().unwrap_or_default().join(", ")
        ));
        return (report, Outputs::new());
    }
    let names: Vec<&str> = taps.iter().map(|t| t.name.as_str()).collect();
    // Forward passes, with a decode case's steps and cache checks.
    let ran = timings::time(Phase::Forward, || {
        run_case(case, model, &names).and_then(|o| {
            let checks = match &case.decode {
                Some(dec) => crate::decode::full_forward_checks(case, dec, model, &o, expected)?,
                None => vec![],
            };
            Ok((o, checks))
        })
    });
    let (outputs, checks): (Outputs, _) = match ran {
        Ok(o) => o,
        Err(e) => {
            report.verdict = Verdict::Error;
            report.error = Some(format!("engine `{engine}` failed: {e}"));
            return (report, Outputs::new());
        }
    };
    // What the engine said it could not produce is not compared: a note, never an error.
    let skipped = model.not_produced();
    let (taps, unproduced): (Vec<_>, Vec<_>) =
        taps.into_iter().partition(|t| outputs.contains_key(&t.name) || !skipped.iter().any(|(n, _)| *n == t.name));
    if !unproduced.is_empty() {
        let why: Vec<String> = unproduced
            .iter()
            .filter_map(|t| skipped.iter().find(|(n, _)| *n == t.name))
            .map(|(n, w)| format!("`{n}` ({w})"))
            .collect();
        report.notes.push(format!("not compared: engine `{engine}` did not produce {}", why.join(", ")));
        if taps.is_empty() {
            report.verdict = Verdict::Error;
            report.error = Some(format!("engine `{engine}` produced none of the case's taps"));
            return (report, Outputs::new());
        }
    }
    // The tokenizer's goldens (engine-vs-engine cases have none: both engines get the same ids).
    if let (Some(text), Some(goldens)) = (&case.text, expected.goldens()) {
        report.taps.extend(crate::tokenization::compare(text, goldens));
    }
    for tap in taps {
        let file = expected.file(&tap.name);
        let floor = expected.noise_floor(&tap.name);
        let golden = timings::time(Phase::LoadGolden, || expected.load(&tap.name));
        report.taps.push(timings::time(Phase::Compare, || {
            compare_tap(case, tap, outputs.get(&tap.name), golden, floor, file.as_deref())
        }));
    }
    crate::decode::insert_checks(&mut report.taps, checks);
    report.first_divergence = crate::diagnose::first_divergence(&report.taps);
    if let Some(note) = report.first_divergence.and_then(|first| error_onset(&report.taps, first)) {
        report.notes.push(note);
    }
    if report.taps.iter().any(|t| matches!(t.status, TapStatus::Error { .. })) {
        report.verdict = Verdict::Error;
    } else if let Some(hint) =
        report.first_divergence.and_then(|i| crate::tokenization::divergence_hint(&report.taps[i]))
    {
        // Activations computed from other token ids say nothing more about the model.
        report.verdict = Verdict::Fail;
        report.hints = vec![hint];
    } else if let Some(first) = report.first_divergence {
        report.verdict = Verdict::Fail;
        let again = || timings::time(Phase::Forward, || run_case(case, model, &names));
        // Other inputs: only for a forward without decode (layout probes alter named inputs).
        let on = |inputs: &crate::case::Inputs| {
            timings::time(Phase::Forward, || model.run_for(&case.run_context(), inputs, &names))
        };
        let engine_on: Option<crate::diagnose::RunOn<'_>> =
            (case.decode.is_none() && !case.inputs.named.is_empty()).then_some(&on as _);
        let mut ctx = Ctx::new(case, expected, &outputs, &report.taps, first);
        report.hints = timings::time(Phase::Diagnose, || {
            diagnose(&mut ctx, &Reruns { engine: Some(&again), variants, engine_on })
        });
    }
    (report, outputs)
}

/// How many times its float32 noise floor a tap's error must be to count as "where the error
/// starts" (`HARNESS_ONSET_FACTOR`, default 100): engines that compute the same thing in float32
/// stay within a few floors; a bug that starts small grows from its tap on.
pub fn onset_factor() -> f64 {
    std::env::var("HARNESS_ONSET_FACTOR").ok().and_then(|v| v.parse().ok()).filter(|f: &f64| *f > 1.0).unwrap_or(100.0)
}

/// Where the error starts, when that is before the first tap out of tolerance: the first tap
/// whose max_abs is [`onset_factor`] times its noise floor or more, and every tap after it up to
/// the first divergence too (an isolated blip is not an onset). The verdict stays tolerance-based.
fn error_onset(taps: &[TapReport], first: usize) -> Option<String> {
    let factor = onset_factor();
    let x = |t: &TapReport| match (&t.metrics, t.noise_floor) {
        (Some(m), Some(f)) if f > 0.0 => Some(m.max_abs / f),
        _ => None,
    };
    let start =
        (0..first).find(|&i| (i..first).all(|j| x(&taps[j]).is_none_or(|v| v >= factor)) && x(&taps[i]).is_some())?;
    let t = &taps[start];
    Some(format!(
        "the error starts before the first divergence: at `{}`, {:.0}x its float32 noise floor though within \
         tolerance, {} tap(s) earlier (taps at or above {factor}x the floor from there on; HARNESS_ONSET_FACTOR)",
        t.name,
        x(t).unwrap_or(0.0),
        first - start
    ))
}

/// Fill [`TapReport::added`]: each block the engine can run alone is run on the golden (expected
/// tensor) of its input, and its taps are compared again, so each shows the error it adds by
/// itself.
fn add_block_errors(case: &Case, model: &dyn LoadedModel, expected: &dyn Expected, reports: &mut [TapReport]) {
    if case.decode.is_some() {
        return;
    }
    for block in model.blocks() {
        let names: Vec<String> = reports.iter().filter(|r| block.contains(&r.name)).map(|r| r.name.clone()).collect();
        if names.is_empty() || !expected.has(&block.input) {
            continue;
        }
        let Ok(input) = expected.load(&block.input) else { continue };
        let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        let Ok(out) = model.run_block(&case.inputs, &block.path, &input, &wanted) else { continue };
        for rep in reports.iter_mut().filter(|r| block.contains(&r.name)) {
            let Some(tap) = case.taps.iter().find(|t| t.name == rep.name) else { continue };
            let alone = compare_tap(case, tap, out.get(&rep.name), expected.load(&rep.name), rep.noise_floor, None);
            rep.added = alone.metrics.map(|m| Added {
                max_abs: m.max_abs,
                sqnr_db: m.sqnr_db,
                within_tolerance: alone.status.is_pass(),
            });
        }
    }
}

/// Per-token error and the tolerance-equivalent SQNR of a compared tap, for the HTML report's
/// plots. A second pass over the tap, so only trials that did not pass pay for it.
pub fn add_detail(case: &Case, tap: &Tap, rep: &mut TapReport, actual: &Tensor, golden: &Tensor) {
    let rows = selection_rows(case, tap.module.kind, tap.module.follows_ids(), golden.shape());
    detail(rep, tap.module.kind == TapKind::Tokens, rows.as_deref(), actual, golden);
}

/// [`add_detail`] without a case: `tokens` says the tap is `[batch, seq, ...]`.
pub fn detail(rep: &mut TapReport, tokens: bool, rows: Option<&[bool]>, actual: &Tensor, golden: &Tensor) {
    if rep.metrics.is_none() || actual.shape() != golden.shape() {
        return;
    }
    let (a, e) = (actual.data(), golden.data());
    let shape = golden.shape();
    let tol = rep.tolerance.allclose();
    if tokens && shape.len() >= 2 && shape[0] * shape[1] > 0 {
        let n_rows = shape[0] * shape[1];
        let row_len = golden.numel() / n_rows;
        let per_row = (0..n_rows)
            .map(|r| {
                if rows.is_some_and(|sel| !sel[r]) {
                    return f32::NAN;
                }
                let span = r * row_len..(r + 1) * row_len;
                a[span.clone()].iter().zip(&e[span]).fold(0f32, |m, (&x, &y)| {
                    let d = (x - y).abs();
                    if d.is_nan() { f32::INFINITY } else { m.max(d) }
                })
            })
            .collect();
        rep.row_max_abs = Some(per_row);
    }
    if rep.tolerance.has_allclose() {
        let row_len = rows.map_or(1, |r| golden.numel() / r.len().max(1));
        let (mut lim, mut ee) = (0f64, 0f64);
        for (i, &g) in e.iter().enumerate() {
            if rows.is_some_and(|sel| !sel[i / row_len.max(1)]) || !g.is_finite() {
                continue;
            }
            let g = g as f64;
            let l = tol.atol + tol.rtol * g.abs();
            lim += l * l;
            ee += g * g;
        }
        if ee > 0.0 && lim > 0.0 {
            rep.sqnr_db_at_tolerance = Some(-10.0 * (lim / ee).log10());
        }
    }
}
