//! `report.json`: every trial, every tap, every metric and the hints, in the versioned schema of
//! docs/report-schema.md.
//!
//! JSON has no infinity or NaN, and serde_json would silently write `null` for them; numbers that
//! can be non-finite are written as the strings `"inf"`, `"-inf"` or `"nan"` instead. Each object
//! starts from the serde form of the internal struct, so a field another part of the harness adds
//! shows up without a change here; the fields below are the ones given a stable shape.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::{TapReport, TapStatus, TrialReport, Verdict, case_path, terminal};
use crate::metrics::Metrics;
use crate::tolerance::Failure;

/// Bumped on any change that can break a reader (a field removed, renamed or retyped).
pub const SCHEMA_VERSION: u32 = 1;

/// A float as JSON: a number when finite, else `"inf"`, `"-inf"` or `"nan"`.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("nan")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub fn metrics(m: &Metrics) -> Value {
    let mut o = object(serde_json::to_value(m).unwrap_or(Value::Null));
    for (k, x) in [
        ("max_abs", m.max_abs),
        ("mean_abs", m.mean_abs),
        ("max_rel", m.max_rel),
        ("cosine", m.cosine),
        ("nmse", m.nmse),
        ("sqnr_db", m.sqnr_db),
        ("norm_ratio", m.norm_ratio),
    ] {
        o.insert(k.into(), num(x));
    }
    Value::Object(o)
}

fn failure(f: &Failure) -> Value {
    match f {
        Failure::Allclose { mismatches, allowed, atol, rtol } => json!({
            "criterion": "allclose", "mismatches": mismatches, "allowed": allowed,
            "atol": num(*atol), "rtol": num(*rtol),
        }),
        Failure::Cosine { got, min } => json!({"criterion": "cosine", "got": num(*got), "min": num(*min)}),
        Failure::SqnrDb { got, min } => json!({"criterion": "sqnr_db", "got": num(*got), "min": num(*min)}),
        Failure::NonFinite { nan, inf } => json!({"criterion": "non_finite", "nan": nan, "inf": inf}),
        Failure::Argmax { agree, clear, min } => {
            json!({"criterion": "argmax", "agree": agree, "clear": clear, "min": num(*min)})
        }
        Failure::Noise { multiple, max, floor } => {
            json!({"criterion": "noise", "multiple": num(*multiple), "max": num(*max), "floor": num(*floor)})
        }
        Failure::Unjudgeable { reason } => json!({"criterion": "unjudgeable", "reason": reason}),
    }
}

fn status_word(s: &TapStatus) -> &'static str {
    match s {
        TapStatus::Pass => "pass",
        TapStatus::Fail { .. } => "fail",
        TapStatus::Missing => "missing",
        TapStatus::ShapeMismatch { .. } => "shape_mismatch",
        TapStatus::Error { .. } => "error",
        TapStatus::Tokenizer { .. } => "tokenizer_mismatch",
    }
}

pub fn tap(t: &TapReport) -> Value {
    let mut o = object(serde_json::to_value(t).unwrap_or(Value::Null));
    o.insert("status".into(), json!(status_word(&t.status)));
    o.insert("problem".into(), json!(terminal::tap_problem(t)));
    let failures: Vec<Value> = match &t.status {
        TapStatus::Fail { failures } => failures.iter().map(failure).collect(),
        _ => vec![],
    };
    o.insert("failures".into(), Value::Array(failures));
    match &t.status {
        TapStatus::ShapeMismatch { actual, expected } => {
            o.insert("actual_shape".into(), json!(actual));
            o.insert("expected_shape".into(), json!(expected));
        }
        TapStatus::Error { message } => {
            o.insert("message".into(), json!(message));
        }
        TapStatus::Tokenizer { at, harness, hf, harness_shape } => {
            o.insert("at".into(), json!(at));
            o.insert("harness".into(), json!(harness));
            o.insert("hf".into(), json!(hf));
            o.insert("harness_shape".into(), json!(harness_shape));
        }
        _ => {}
    }
    let tol = &t.tolerance;
    o.insert(
        "tolerance".into(),
        json!({
            "atol": tol.atol.map(num), "rtol": tol.rtol.map(num), "mismatch": tol.mismatch.map(num),
            "cosine": tol.cosine.map(num), "sqnr_db": tol.sqnr_db.map(num),
            "argmax": tol.argmax.map(num), "noise": tol.noise.map(num),
        }),
    );
    if let Some(l) = &t.logits {
        let mut lo = object(serde_json::to_value(l).unwrap_or(Value::Null));
        for (k, x) in [("topk_overlap", l.topk_overlap), ("kl_mean", l.kl_mean), ("kl_max", l.kl_max)] {
            lo.insert(k.into(), num(x));
        }
        o.insert("logits".into(), Value::Object(lo));
    }
    o.insert("noise_floor".into(), t.noise_floor.map(num).unwrap_or(Value::Null));
    o.insert("metrics".into(), t.metrics.as_ref().map(metrics).unwrap_or(Value::Null));
    o.insert(
        "row_max_abs".into(),
        match &t.row_max_abs {
            // NaN marks a position that is not compared (padding): null.
            Some(v) => Value::Array(v.iter().map(|&x| if x.is_nan() { Value::Null } else { num(x as f64) }).collect()),
            None => Value::Null,
        },
    );
    o.insert("sqnr_db_at_tolerance".into(), t.sqnr_db_at_tolerance.map(num).unwrap_or(Value::Null));
    Value::Object(o)
}

pub fn trial(r: &TrialReport, root: &Path) -> Value {
    let mut o = object(serde_json::to_value(r).unwrap_or(Value::Null));
    o.insert("case_file".into(), json!(case_path(root, &r.case_file)));
    o.insert("first_divergent_tap".into(), json!(r.first_divergent_tap().map(|t| &t.name)));
    o.insert("taps".into(), Value::Array(r.taps.iter().map(tap).collect()));
    Value::Object(o)
}

/// The whole document, pretty-printed.
pub fn render(reports: &[TrialReport], root: &Path) -> String {
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let doc = json!({
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "harness", "version": env!("CARGO_PKG_VERSION")},
        "summary": {
            "trials": reports.len(),
            "pass": count(Verdict::Pass),
            "fail": count(Verdict::Fail),
            "error": count(Verdict::Error),
        },
        "trials": reports.iter().map(|r| trial(r, root)).collect::<Vec<_>>(),
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
