//! The signature of a failure: which tap family diverges first and what diagnosis says it looks
//! like. Shrinking keeps a candidate only when it fails with the signature of the original, so
//! it never wanders off to an unrelated failure.
//!
//! The rule ([`Signature::matches`]):
//! - the first divergent tap must be the same *family*: layer numbers generalized
//!   (`model.layers.*.self_attn`) and a decode step kept only as prompt (`@prompt`) vs decode
//!   (`@decode`), since a smaller input has fewer layers' worth of positions and fewer steps;
//! - when the original has a leading hint, the candidate must have a hint of that kind among its
//!   hints, at any rank. Requiring the same *leading* hint is too strict on tiny inputs: scores
//!   move with the input's size (an onset position needs positions before it, a head pattern
//!   needs several heads wrong), so ranks shuffle while the finding stays. A candidate with no
//!   hint of that kind fails differently and is not kept. An original without hints is matched
//!   on the tap family alone.

use std::fmt;

use crate::diagnose::HintKind;
use crate::report::{TrialReport, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The first divergent tap, generalized.
    pub tap: String,
    /// The leading hint's kind.
    pub hint: Option<HintKind>,
    /// Every hint kind of the report, best first.
    pub kinds: Vec<HintKind>,
}

impl Signature {
    /// The signature of a failing report; None when it passes or could not be judged.
    pub fn of(report: &TrialReport) -> Option<Signature> {
        if report.verdict != Verdict::Fail {
            return None;
        }
        let tap = report.first_divergent_tap()?;
        let kinds: Vec<HintKind> = report.hints.iter().map(|h| h.kind).collect();
        Some(Signature { tap: generalize(&tap.name), hint: kinds.first().copied(), kinds })
    }

    /// Does `other` (a candidate's signature) fail the way `self` (the original) does?
    pub fn matches(&self, other: &Signature) -> bool {
        self.tap == other.tap && self.hint.is_none_or(|k| other.kinds.contains(&k))
    }

    /// A short file-name-safe form: the tap family's last segments and the hint kind.
    pub fn slug(&self) -> String {
        let tap: String = self
            .tap
            .replace(" == full forward", "-check")
            .split('.')
            .filter(|s| *s != "*")
            .collect::<Vec<_>>()
            .join(".")
            .replace('@', "-")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' })
            .collect();
        match self.hint {
            Some(k) => format!("{tap}-{}", kind_name(k)),
            None => tap,
        }
    }
}

/// A hint kind's stable name (as in report.json).
pub fn kind_name(k: HintKind) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "first divergence `{}`", self.tap)?;
        match self.hint {
            Some(k) => write!(f, ", hint {}", kind_name(k)),
            None => write!(f, ", no hint"),
        }
    }
}

/// `model.layers.3.self_attn@4` -> `model.layers.*.self_attn@decode`;
/// `logits@2 == full forward` -> `logits@decode == full forward`.
pub fn generalize(name: &str) -> String {
    let (name, rest) = match name.split_once(' ') {
        Some((n, r)) => (n, format!(" {r}")),
        None => (name, String::new()),
    };
    let (path, step) = match name.rsplit_once('@') {
        Some((p, s)) => (p, Some(s)),
        None => (name, None),
    };
    let path = path
        .split('.')
        .map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { "*" } else { s })
        .collect::<Vec<_>>()
        .join(".");
    let step = match step {
        Some("0") => "@prompt",
        Some(_) => "@decode",
        None => "",
    };
    format!("{path}{step}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalizes_layers_and_steps() {
        assert_eq!(generalize("model.layers.3.self_attn@4"), "model.layers.*.self_attn@decode");
        assert_eq!(generalize("model.layers.0.mlp@0"), "model.layers.*.mlp@prompt");
        assert_eq!(generalize("logits@2 == full forward"), "logits@decode == full forward");
        assert_eq!(generalize("pooled.cls"), "pooled.cls");
    }

    #[test]
    fn the_original_hint_must_be_among_the_candidates() {
        let sig = |tap: &str, kinds: &[HintKind]| Signature {
            tap: tap.into(),
            hint: kinds.first().copied(),
            kinds: kinds.to_vec(),
        };
        let orig = sig("layers.*.attn", &[HintKind::KnownBug, HintKind::ErrorOnsetAtPosition]);
        assert!(orig.matches(&sig("layers.*.attn", &[HintKind::ErrorOnsetAtPosition, HintKind::KnownBug])));
        assert!(!orig.matches(&sig("layers.*.attn", &[HintKind::ErrorOnsetAtPosition])));
        assert!(!orig.matches(&sig("layers.*.attn", &[])));
        assert!(!orig.matches(&sig("layers.*.mlp", &[HintKind::KnownBug])));
        assert!(sig("logits", &[]).matches(&sig("logits", &[HintKind::UniformScale])));
        assert_eq!(orig.slug(), "layers.attn-known_bug");
        assert_eq!(sig("logits@decode == full forward", &[]).slug(), "logits-decode-check");
    }
}
