//! What a trial compares the engine under test against: the case's goldens (HF transformers,
//! the usual reference), or another engine's outputs on the same inputs, for a case with
//! `reference: {engine: NAME}` (a port checked against llama.cpp rather than HF).
//!
//! Comparison and diagnosis read expected tensors only through [`Expected`], so both kinds of
//! reference get the same per-tap table, first divergence and hints.

use std::path::PathBuf;

use crate::case::Case;
use crate::engine::{LoadedModel, Outputs};
use crate::error::{Error, Result};
use crate::golden::Goldens;
use crate::tensor::Tensor;

pub trait Expected: Sync {
    /// The expected tensor of `tap` (any tap the reference has, compared or not).
    fn load(&self, tap: &str) -> Result<Tensor>;
    /// Whether the reference has `tap` at all.
    fn has(&self, tap: &str) -> bool;
    /// The position of `tap` in the forward order the reference recorded, if it recorded one.
    fn position(&self, _tap: &str) -> Option<usize> {
        None
    }
    /// The tap's float32 noise floor (HF float32 vs float64), when measured.
    fn noise_floor(&self, _tap: &str) -> Option<f64> {
        None
    }
    /// The file the expected tensor is read from, for messages.
    fn file(&self, _tap: &str) -> Option<PathBuf> {
        None
    }
    /// The goldens behind it, if any (depth bisection reads their `depth.{k}` taps).
    fn goldens(&self) -> Option<&Goldens> {
        None
    }
}

impl Expected for Goldens {
    fn load(&self, tap: &str) -> Result<Tensor> {
        Goldens::load(self, tap)
    }
    fn has(&self, tap: &str) -> bool {
        self.entry(tap).is_some()
    }
    fn position(&self, tap: &str) -> Option<usize> {
        self.manifest.taps.iter().position(|e| e.name == tap)
    }
    fn noise_floor(&self, tap: &str) -> Option<f64> {
        self.entry(tap).and_then(|e| e.noise.as_ref()).map(|n| n.floor)
    }
    fn file(&self, tap: &str) -> Option<PathBuf> {
        self.entry(tap).map(|e| self.dir.join(&e.file))
    }
    fn goldens(&self) -> Option<&Goldens> {
        Some(self)
    }
}

/// A reference engine's outputs for one case. The case's taps are already in forward order
/// (the family's module list), so no order is recorded; no noise floor is known.
pub struct EngineOutputs {
    pub engine: String,
    pub outputs: Outputs,
}

impl Expected for EngineOutputs {
    fn load(&self, tap: &str) -> Result<Tensor> {
        self.outputs.get(tap).cloned().ok_or_else(|| {
            Error::engine(format!("the reference engine `{}` did not return tap `{tap}`", self.engine))
                .hint("the reference must produce every tap the case compares; check its tap list or names rules")
        })
    }
    fn has(&self, tap: &str) -> bool {
        self.outputs.contains_key(tap)
    }
}

/// Run `case` on the reference engine `name` (already loaded as `model`) for every tap the case
/// compares.
pub fn from_engine(case: &Case, name: &str, model: &dyn LoadedModel) -> Result<EngineOutputs> {
    let taps: Vec<&str> = case.taps.iter().map(|t| t.name.as_str()).collect();
    let outputs = crate::trial::run_case(case, model, &taps).map_err(|e| {
        let msg = format!("the reference engine `{name}` failed: {}", e.msg);
        Error { msg, ..e }
    })?;
    Ok(EngineOutputs { engine: name.to_string(), outputs })
}
