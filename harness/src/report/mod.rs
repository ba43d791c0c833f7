//! Structured results of trials. A trial produces a [`TrialReport`]; the terminal, JSON, JUnit,
//! HTML and GitHub-annotation views only render it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diagnose::Hint;
use crate::diagnose::logits::LogitsMetrics;
use crate::metrics::Metrics;
use crate::tolerance::{Failure, Tolerance};

pub mod files;
pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod terminal;

pub use files::{REPORT_ENV, after_run, report_dir_from_env, write_reports};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Ran, and some tap is out of tolerance.
    Fail,
    /// Could not be judged: bad case, missing/stale golden, engine crash.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TapStatus {
    Pass,
    /// Out of tolerance; the criteria that failed.
    Fail {
        failures: Vec<Failure>,
    },
    /// The engine did not return this tap.
    Missing,
    ShapeMismatch {
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    /// The golden could not be used (corrupt, hash mismatch, NaN in the golden).
    Error {
        message: String,
    },
    /// The harness's tokenization differs from HF's tokenizer (a `tokenizer.*` tap) at `at`
    /// (`[row, position]`); a side is None past the end of its row. The model still ran on the
    /// harness's tokenization.
    Tokenizer {
        at: Vec<usize>,
        harness: Option<TokenAt>,
        hf: Option<TokenAt>,
        harness_shape: Vec<usize>,
    },
}

/// A token id and, for `input_ids`, its token string.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenAt {
    pub id: i64,
    pub token: Option<String>,
}

impl TapStatus {
    pub fn is_pass(&self) -> bool {
        matches!(self, TapStatus::Pass)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TapReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub tolerance: Tolerance,
    pub metrics: Option<Metrics>,
    /// For logits taps: argmax agreement, top-k overlap, KL divergence.
    pub logits: Option<LogitsMetrics>,
    /// The tap's float32 noise floor from the manifest (max_abs of HF float32 vs float64).
    pub noise_floor: Option<f64>,
    /// `max_abs` position as a multi-index into `shape`.
    pub max_abs_index: Option<Vec<usize>>,
    pub first_mismatch_index: Option<Vec<usize>>,
    pub status: TapStatus,
    /// Largest |engine - golden| per token position (`[batch, seq]` row-major) of a token tap;
    /// NaN where the position is not compared (padding), +inf where the engine gave NaN/Inf.
    /// Filled only for trials that did not pass (it feeds the HTML heat map).
    pub row_max_abs: Option<Vec<f32>>,
    /// The SQNR (dB) this tap would have if every element were off by exactly its allclose limit
    /// `atol + rtol·|golden|`: the tolerance line of the HTML error plot. Trials that did not
    /// pass only.
    pub sqnr_db_at_tolerance: Option<f64>,
    /// The error this tap adds by itself: its block run alone on the golden of the block's
    /// input (engines with [`crate::engine::LoadedModel::run_block`]; trials that did not pass).
    pub added: Option<Added>,
}

/// Metrics of a tap when its block runs on golden inputs (its own error, not inherited).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Added {
    pub max_abs: f64,
    pub sqnr_db: f64,
    pub within_tolerance: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrialReport {
    /// `{engine}::{case}`.
    pub trial: String,
    pub engine: String,
    pub case: String,
    pub case_file: PathBuf,
    pub verdict: Verdict,
    /// Taps in forward order.
    pub taps: Vec<TapReport>,
    /// Index into `taps` of the first tap (in forward order) that is not within tolerance.
    pub first_divergence: Option<usize>,
    /// What the first divergence looks like, best first.
    pub hints: Vec<Hint>,
    /// Why the trial could not be judged (verdict `error`).
    pub error: Option<String>,
    /// A command that reruns just this trial.
    pub rerun: String,
    /// How the engine was driven, for the reader: config keys translated for it, checkpoint
    /// tensors it never read, taps it cannot produce (so not compared).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Outputs-only engines: the first divergent layer, found by running truncated models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bisection: Option<crate::bisect::Bisection>,
    /// A documented finding this trial is expected to reproduce (`cases/expected/<engine>.yaml`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<crate::expect::Outcome>,
}

impl TapReport {
    /// A passing report of `name` with nothing measured yet.
    pub fn new(name: &str, tolerance: Tolerance) -> TapReport {
        TapReport {
            name: name.to_string(),
            shape: vec![],
            tolerance,
            metrics: None,
            logits: None,
            noise_floor: None,
            max_abs_index: None,
            first_mismatch_index: None,
            status: TapStatus::Pass,
            row_max_abs: None,
            sqnr_db_at_tolerance: None,
            added: None,
        }
    }
}

impl TrialReport {
    /// A passing report with no taps yet: `trial` (`{engine}::{case}`) and where it comes from.
    pub fn new(trial: String, engine: &str, case: &str, case_file: PathBuf, rerun: String) -> TrialReport {
        TrialReport {
            trial,
            engine: engine.to_string(),
            case: case.to_string(),
            case_file,
            verdict: Verdict::Pass,
            taps: vec![],
            first_divergence: None,
            hints: vec![],
            error: None,
            rerun,
            notes: vec![],
            bisection: None,
            expected: None,
        }
    }

    pub fn first_divergent_tap(&self) -> Option<&TapReport> {
        self.first_divergence.map(|i| &self.taps[i])
    }
    /// Whether the trial is green: it passes, or it fails exactly as its documented finding says.
    pub fn ok(&self) -> bool {
        match &self.expected {
            Some(e) => e.mismatch.is_none(),
            None => self.verdict == Verdict::Pass,
        }
    }
}

/// A case file as shown in reports: relative to the repository root, `/`-separated.
pub fn case_path(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// Escape text for XML/HTML content and attribute values; drops the control characters XML 1.0
/// cannot hold.
pub fn escape_xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\n' | '\t' | '\r' => o.push(c),
            c if (c as u32) < 0x20 => {}
            c => o.push(c),
        }
    }
    o
}
