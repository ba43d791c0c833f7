//! Structured results of trials. A trial produces a [`TrialReport`]; the terminal (and later
//! JSON/JUnit/HTML) views only render it.

use std::path::PathBuf;

use serde::Serialize;

use crate::diagnose::Hint;
use crate::diagnose::logits::LogitsMetrics;
use crate::metrics::Metrics;
use crate::tolerance::{Failure, Tolerance};

pub mod terminal;

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
}

impl TrialReport {
    pub fn first_divergent_tap(&self) -> Option<&TapReport> {
        self.first_divergence.map(|i| &self.taps[i])
    }
}
