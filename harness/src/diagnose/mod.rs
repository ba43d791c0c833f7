//! Diagnosis: where a divergence starts and what it looks like.
//!
//! [`first_divergence`] localizes (first tap in forward order out of tolerance); hints say what
//! the error at that tap looks like (a shifted token, a transposed layout, a uniform scale, an
//! error that starts at some position, ...), ranked by score.

use serde::Serialize;

use crate::report::TapReport;

pub mod logits;

/// The first tap in forward order that is not within tolerance.
pub fn first_divergence(taps: &[TapReport]) -> Option<usize> {
    taps.iter().position(|t| !t.status.is_pass())
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
