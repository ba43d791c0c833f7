//! The `Engine` trait and the registry of engines a run can use.
//!
//! An engine loads a model spec once ([`Engine::load`]) and then runs inputs, returning the
//! requested taps under their HF names. Engines differ in what they can expose: the reference
//! engine returns every module's output, an outputs-only engine just `logits` or
//! `last_hidden_state`; [`LoadedModel::taps`] says which.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::case::{IdMatrix, Inputs, ModelSpec};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::tensor::Tensor;

/// Tap name -> tensor, as returned by an engine.
pub type Outputs = BTreeMap<String, Tensor>;

pub trait Engine: Send + Sync {
    /// The name used in trial names (`{engine}::{case}`) and in a case's `engines:` list.
    fn name(&self) -> &str;
    fn supports(&self, family: &Family) -> bool;
    /// Whether the engine runs on cases that do not list engines (test-only engines do not).
    fn default_enabled(&self) -> bool {
        true
    }
    fn load(&self, model: &ModelSpec) -> Result<Box<dyn LoadedModel>>;
}

pub trait LoadedModel: Send + Sync {
    /// Run one batch and return (at least) the requested taps.
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs>;
    /// Taps this engine can produce for this model; `None` means every module of the family.
    fn taps(&self) -> Option<Vec<String>> {
        None
    }
    /// Incremental decoding with a KV cache, for `decode:` cases: step 0 runs the prompt, step k
    /// feeds `tokens[:, k-1]` alone, positions continuing from the prompt length. Returns one
    /// `Outputs` per step (`tokens.seq + 1` of them), taps under their plain names (no `@step`).
    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        let _ = (prompt, tokens, taps);
        Err(Error::engine("this engine does not support incremental decoding (`decode:` cases)")
            .hint("list only engines that decode under the case's `engines:`"))
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    engines: Vec<Arc<dyn Engine>>,
}

impl Registry {
    /// The engines that ship with the harness.
    pub fn builtin() -> Registry {
        let mut r = Registry::default();
        r.add(Arc::new(crate::engines::reference::ReferenceEngine::new()));
        r
    }
    pub fn add(&mut self, e: Arc<dyn Engine>) {
        self.engines.retain(|x| x.name() != e.name());
        self.engines.push(e);
    }
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Engine>> {
        self.engines.iter().find(|e| e.name() == name)
    }
    pub fn names(&self) -> Vec<&str> {
        self.engines.iter().map(|e| e.name()).collect()
    }
    pub fn all(&self) -> &[Arc<dyn Engine>] {
        &self.engines
    }
}
