//! The report data model: what a trial produces ([`TrialReport`]), per tap ([`TapReport`]),
//! with the hints diagnosis gives ([`Hint`]), a depth bisection ([`Bisection`]) and the
//! judgement of an expected finding ([`Outcome`]). The harness's terminal, JSON, JUnit, HTML and
//! GitHub views only render it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::logits::LogitsMetrics;
use crate::metrics::Metrics;
use crate::tolerance::{Failure, Tolerance};

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
    pub bisection: Option<Bisection>,
    /// A documented finding this trial is expected to reproduce (`cases/expected/<engine>.yaml`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Outcome>,
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

/// What kind of error a hint names. Stable identifiers: they appear in report.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// Engine row i matches golden row j != i (e.g. pooling took the last token, not CLS).
    TokenMisalignment,
    /// The engine tensor is the golden transposed.
    Transposed,
    /// The engine tensor is the golden with its dimensions reversed (ggml order).
    ReversedDims,
    /// A constant factor away from the golden (cosine ~1, constant norm ratio).
    UniformScale,
    /// The negation of the golden (cosine ~-1).
    SignFlip,
    /// Exact up to some position, wrong after it (sliding window, mask, cache).
    ErrorOnsetAtPosition,
    /// Error that grows with position (RoPE).
    ErrorGrowsWithPosition,
    /// Only the padded rows of the batch are wrong (mask handling).
    PaddedRowsOnly,
    /// Only some attention heads are wrong (head mapping, GQA).
    SomeHeads,
    /// Only some channels are wrong.
    SomeChannels,
    /// The error disappears when RoPE pairs are re-paired (interleaved vs half-split).
    RopePairing,
    /// Two runs of the engine on the same input differ (dropout, uninitialized memory).
    NonDeterministic,
    /// The engine produced NaN or Inf here first.
    NonFinite,
    /// A candidate transform of the engine output brings it within tolerance.
    BlameTransform,
    /// Each token is off by its own scale factor (a normalization constant).
    RowScale,
    /// The engine's output equals this module's input: the module looks skipped.
    ModuleSkipped,
    /// The engine's output equals a sublayer's output, or adding an input fixes it.
    ResidualMissing,
    /// The prompt matches and a later decode step diverges first.
    DecodeStep,
    /// The reference engine with a known port bug reproduces the engine's output.
    KnownBug,
    /// Pulled back through a square projection, the engine's output is the golden input times
    /// the weight untransposed.
    TransposedWeight,
    /// An activation function (or the other half of its input) reproduces the engine's output.
    ActivationVariant,
    /// The first divergent layer is of a kind (e.g. local attention) the layers before it are not.
    LayerType,
    /// The harness's tokenization of a text case differs from HF's tokenizer.
    TokenizerDivergence,
    /// Small, noise-like error spread over every element (fp16/bf16 rounding somewhere).
    ReducedPrecision,
    /// The engine matches when a named input (`pixel_values`, ...) is given with its axes in
    /// another memory order (NHWC for NCHW, frames for mel bins).
    InputLayout,
    /// The error is one constant per channel at every token (a bias dropped or doubled).
    ChannelOffset,
    /// Each channel is the golden times its own factor (`w` vs `1 + w`, a scale vector).
    ChannelScale,
    /// The engine matches when a named float input is given before a standard normalization
    /// (mean/std, a 0-255 range): it normalizes an input that is already normalized.
    InputNormalization,
    /// The engine's positions are the golden's taken with another stride (engine `s·j` is golden
    /// `j`, or engine `i` is golden `s·i`): a convolution stride, a frame hop, a patch size.
    PositionStride,
}

impl HintKind {
    /// What the finding rests on: the engine's and the golden tensors alone (`data`), the
    /// model's structure as well (`structure`), or running something again (`re-run`).
    pub fn evidence(self) -> &'static str {
        match self {
            HintKind::KnownBug
            | HintKind::RopePairing
            | HintKind::NonDeterministic
            | HintKind::InputLayout
            | HintKind::InputNormalization => "re-run",
            HintKind::LayerType | HintKind::DecodeStep => "structure",
            _ => "data",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hint {
    pub kind: HintKind,
    /// The tap the finding is about.
    pub tap: String,
    /// In [0, 1]; hints are shown best first.
    pub score: f64,
    /// One sentence for a person: what the error looks like and where to look.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bisection {
    /// The output compared at each depth.
    pub tap: String,
    /// Layers of the full model.
    pub layers: usize,
    /// Each depth run, in the order tried.
    pub probes: Vec<DepthProbe>,
    /// The smallest depth whose output diverges; None when every depth tried is within tolerance.
    pub first_divergent_depth: Option<usize>,
    /// The module of layer `first_divergent_depth - 1` (e.g. `model.layers.1`).
    pub first_divergent_layer: Option<String>,
    /// Why bisection stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthProbe {
    pub depth: usize,
    pub pass: bool,
    pub max_abs: Option<f64>,
    pub cosine: Option<f64>,
}

impl Bisection {
    /// One sentence for the report.
    pub fn describe(&self) -> String {
        let runs = self
            .probes
            .iter()
            .map(|p| format!("{} {}", p.depth, if p.pass { "ok" } else { "diverges" }))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(e) = &self.error {
            return format!("depth bisection of `{}` stopped: {e} (depths run: {runs})", self.tap);
        }
        match (self.first_divergent_depth, &self.first_divergent_layer) {
            (Some(1), Some(layer)) => format!(
                "depth bisection of `{}`: the model truncated to 1 layer already diverges: first divergent layer \
                 `{layer}`, or what every depth shares (embeddings, final norm, head) (depths run: {runs})",
                self.tap
            ),
            (Some(k), Some(layer)) => format!(
                "depth bisection of `{}`: {} layers match HF, {k} diverge: first divergent layer `{layer}` \
                 (depths run: {runs})",
                self.tap,
                k - 1
            ),
            _ => format!(
                "depth bisection of `{}`: every depth tried matches HF (depths run: {runs}); the divergence is in \
                 another output",
                self.tap
            ),
        }
    }
}

/// How a trial compares with its expectation (in the report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub finding: String,
    /// The expectations file.
    pub file: PathBuf,
    /// None when the trial failed exactly as expected; else what differs.
    pub mismatch: Option<String>,
}
