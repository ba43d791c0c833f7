//! Tolerance specs and their exact semantics.
//!
//! A tolerance is a set of criteria; a tap passes when *all* the criteria given hold:
//! - `atol`, `rtol`: allclose per element, `|a - e| <= atol + rtol * |e|` (a missing one is 0);
//! - `mismatch`: the fraction of elements allowed to fail allclose (default 0);
//! - `cosine`: minimum cosine similarity of the flattened tensors;
//! - `sqnr_db`: minimum SQNR in dB (`-10 log10 NMSE`);
//! - `argmax`: for logits, the minimum fraction of clear positions whose argmax agrees (see
//!   `diagnose::logits`);
//! - `noise`: `max_abs <= noise * floor`, where `floor` is the tap's float32 noise floor that
//!   tools/ measured against a float64 run of the reference (recorded in the manifest).
//!
//! NaN/Inf from the engine where the golden is finite always fails. A tap's own tolerance
//! replaces the case default as a whole (criteria are not merged).

use serde::{Deserialize, Serialize};

use crate::logits::LogitsMetrics;
use crate::metrics::{AllClose, Metrics};

/// Used when a case gives no tolerance. Measured on the tiny-model suite: the reference engine
/// (candle, f32) is within 2e-6 of HF (torch, f32) on every tap; the defaults leave headroom for
/// other summation orders without letting a real bug (errors >= 1e-3 on these models) through.
pub const DEFAULT_ATOL: f64 = 1e-4;
pub const DEFAULT_RTOL: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqnr_db: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argmax: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            atol: Some(DEFAULT_ATOL),
            rtol: Some(DEFAULT_RTOL),
            mismatch: None,
            cosine: None,
            sqnr_db: None,
            argmax: None,
            noise: None,
        }
    }
}

/// One criterion that did not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "criterion", rename_all = "snake_case")]
pub enum Failure {
    /// More elements outside allclose than allowed.
    Allclose {
        mismatches: usize,
        allowed: usize,
        atol: f64,
        rtol: f64,
    },
    Cosine {
        got: f64,
        min: f64,
    },
    SqnrDb {
        got: f64,
        min: f64,
    },
    NonFinite {
        nan: usize,
        inf: usize,
    },
    Argmax {
        agree: usize,
        clear: usize,
        min: f64,
    },
    /// `max_abs` is more than `max` times the tap's noise floor.
    Noise {
        multiple: f64,
        max: f64,
        floor: f64,
    },
    /// A criterion that cannot be judged (e.g. `noise` without a recorded floor).
    Unjudgeable {
        reason: String,
    },
}

/// What a tap's criteria are judged on.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub metrics: &'a Metrics,
    pub logits: Option<&'a LogitsMetrics>,
    /// The tap's float32 noise floor (max_abs of float32 vs float64 HF), if recorded.
    pub noise_floor: Option<f64>,
}

impl Tolerance {
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("atol", self.atol, 0.0, f64::INFINITY),
            ("rtol", self.rtol, 0.0, f64::INFINITY),
            ("mismatch", self.mismatch, 0.0, 1.0),
            ("cosine", self.cosine, -1.0, 1.0),
            ("sqnr_db", self.sqnr_db, f64::NEG_INFINITY, f64::INFINITY),
            ("argmax", self.argmax, 0.0, 1.0),
            ("noise", self.noise, 0.0, f64::INFINITY),
        ];
        for (name, v, lo, hi) in checks {
            if let Some(v) = v
                && (v.is_nan() || v < lo || v > hi)
            {
                return Err(format!("tolerance `{name}` is {v}, outside [{lo}, {hi}]"));
            }
        }
        if self.mismatch.is_some() && self.atol.is_none() && self.rtol.is_none() {
            return Err("tolerance `mismatch` needs `atol` or `rtol` (it counts allclose failures)".into());
        }
        if !self.has_allclose()
            && self.cosine.is_none()
            && self.sqnr_db.is_none()
            && self.argmax.is_none()
            && self.noise.is_none()
        {
            return Err(
                "tolerance has no criterion: give at least one of atol, rtol, cosine, sqnr_db, argmax, noise".into()
            );
        }
        Ok(())
    }

    pub fn has_allclose(&self) -> bool {
        self.atol.is_some() || self.rtol.is_some()
    }

    /// The per-element parameters of the comparison pass (zeros when allclose is not asked:
    /// mismatches are then still counted, against exact equality, but do not fail the tap).
    pub fn allclose(&self) -> AllClose {
        AllClose { atol: self.atol.unwrap_or(0.0), rtol: self.rtol.unwrap_or(0.0) }
    }

    /// Every criterion that fails; empty means the tap passes.
    pub fn check(&self, obs: Observed<'_>) -> Vec<Failure> {
        let m = obs.metrics;
        let mut f = Vec::new();
        if m.nan + m.inf > 0 {
            f.push(Failure::NonFinite { nan: m.nan, inf: m.inf });
        }
        if self.has_allclose() {
            let total = m.n + m.nan + m.inf;
            let allowed = (self.mismatch.unwrap_or(0.0) * total as f64).floor() as usize;
            if m.mismatches > allowed {
                let t = self.allclose();
                f.push(Failure::Allclose { mismatches: m.mismatches, allowed, atol: t.atol, rtol: t.rtol });
            }
        }
        if let Some(min) = self.cosine
            && m.cosine.partial_cmp(&min).is_none_or(|o| o.is_lt())
        {
            f.push(Failure::Cosine { got: m.cosine, min });
        }
        if let Some(min) = self.sqnr_db
            && m.sqnr_db.partial_cmp(&min).is_none_or(|o| o.is_lt())
        {
            f.push(Failure::SqnrDb { got: m.sqnr_db, min });
        }
        if let Some(min) = self.argmax {
            match obs.logits {
                Some(l) if l.argmax_fraction() < min => {
                    f.push(Failure::Argmax { agree: l.argmax_agree, clear: l.clear, min })
                }
                Some(_) => {}
                None => f.push(Failure::Unjudgeable { reason: "`argmax` applies to logits taps only".into() }),
            }
        }
        if let Some(max) = self.noise {
            match obs.noise_floor {
                Some(floor) if floor > 0.0 => {
                    let multiple = m.max_abs / floor;
                    if multiple > max {
                        f.push(Failure::Noise { multiple, max, floor });
                    }
                }
                _ => f.push(Failure::Unjudgeable {
                    reason: "no noise floor recorded for this tap (regenerate the goldens)".into(),
                }),
            }
        }
        f
    }

    /// Short human form, e.g. `atol 1e-4 rtol 1e-3` or `cosine>=0.999 sqnr>=30dB`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.atol {
            parts.push(format!("atol {a:e}"));
        }
        if let Some(r) = self.rtol {
            parts.push(format!("rtol {r:e}"));
        }
        if let Some(m) = self.mismatch {
            parts.push(format!("mismatch<={m}"));
        }
        if let Some(c) = self.cosine {
            parts.push(format!("cosine>={c}"));
        }
        if let Some(s) = self.sqnr_db {
            parts.push(format!("sqnr>={s}dB"));
        }
        if let Some(a) = self.argmax {
            parts.push(format!("argmax>={a}"));
        }
        if let Some(n) = self.noise {
            parts.push(format!("noise<={n}x"));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::compare;

    #[test]
    fn default_is_valid_allclose() {
        assert!(Tolerance::default().validate().is_ok());
        assert!(Tolerance::default().has_allclose());
    }

    #[test]
    fn validation_rejects_nonsense() {
        let t = |s: &str| serde_norway::from_str::<Tolerance>(s).unwrap().validate();
        assert!(t("{atol: -1}").unwrap_err().contains("`atol` is -1"));
        assert!(t("{cosine: 1.5}").is_err());
        assert!(t("{mismatch: 0.1}").unwrap_err().contains("needs `atol`"));
        assert!(t("{cosine: 0.99, sqnr_db: 30}").is_ok());
    }

    #[test]
    fn mismatch_fraction_allows_a_few() {
        let a = [0.0f32, 0.0, 0.0, 1.0];
        let e = [0.0f32; 4];
        let strict = Tolerance { atol: Some(0.1), ..Tolerance::default() };
        let loose = Tolerance { mismatch: Some(0.25), ..strict.clone() };
        let m = compare(&a, &e, strict.allclose(), None);
        assert_eq!(strict.check(obs(&m)).len(), 1);
        assert!(loose.check(obs(&m)).is_empty());
    }

    #[test]
    fn cosine_criterion_fails_on_sign_flip_and_nan() {
        let t = Tolerance { atol: None, rtol: None, cosine: Some(0.99), ..Tolerance::default() };
        let m = compare(&[-1.0, -2.0], &[1.0, 2.0], t.allclose(), None);
        assert!(matches!(t.check(obs(&m))[0], Failure::Cosine { .. }));
        let m = compare(&[f32::NAN, 2.0], &[1.0, 2.0], t.allclose(), None);
        assert!(matches!(t.check(obs(&m))[0], Failure::NonFinite { nan: 1, .. }));
    }

    fn obs(m: &Metrics) -> Observed<'_> {
        Observed { metrics: m, logits: None, noise_floor: None }
    }

    #[test]
    fn noise_multiple_of_the_floor() {
        let t = Tolerance { atol: None, rtol: None, noise: Some(10.0), ..Tolerance::default() };
        let m = compare(&[1.0 + 5e-6], &[1.0], t.allclose(), None);
        let with = |floor| t.check(Observed { metrics: &m, logits: None, noise_floor: floor });
        assert!(with(Some(1e-6)).is_empty()); // ~5x the floor
        assert!(matches!(with(Some(1e-7))[0], Failure::Noise { .. })); // ~50x
        assert!(matches!(with(None)[0], Failure::Unjudgeable { .. }));
    }
}
