//! The `Engine` trait, what an engine implements to be tested, and the registry of engines a run
//! can use.
//!
//! An engine loads a model spec once ([`Engine::load`]) and then runs inputs, returning the
//! requested taps under their HF names. Engines differ in what they can expose: the reference
//! engine returns every module's output, an outputs-only engine just `logits` or
//! `last_hidden_state`; [`LoadedModel::taps`] says which.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inputs::{IdMatrix, Inputs};
use crate::model::ModelSpec;
use crate::tensor::Tensor;

/// Tap name -> tensor, as returned by an engine.
pub type Outputs = BTreeMap<String, Tensor>;

pub trait Engine: Send + Sync {
    /// The name used in trial names (`{engine}::{case}`) and in a case's `engines:` list.
    fn name(&self) -> &str;
    /// Whether the engine implements this HF class at all (before looking at the config): used
    /// to name the trials of a model that is absent.
    fn implements(&self, class: &str) -> bool {
        let _ = class;
        true
    }
    /// Whether the engine can run this model (class and config features); `Err` says why not. A
    /// case whose model an engine cannot run gets no trial on it by default, and an *ignored*
    /// trial with this reason when the case lists the engine: a capability, never a load error.
    fn supports(&self, model: &ModelSpec) -> std::result::Result<(), String> {
        if self.implements(&model.class) {
            Ok(())
        } else {
            Err(format!("`{}` does not run {}", self.name(), model.class))
        }
    }
    /// Whether the engine runs on cases that do not list engines (test-only engines do not).
    fn default_enabled(&self) -> bool {
        true
    }
    fn load(&self, model: &ModelSpec) -> Result<Box<dyn LoadedModel>>;
    /// The engine's own tolerance, replacing the case's in its trials (a reduced-precision engine).
    fn tolerance(&self) -> Option<crate::tolerance::Tolerance> {
        None
    }
    /// Why the engine cannot run on this machine (e.g. its program is not installed), if so.
    /// Outside CI such trials are reported as ignored with this reason; in CI they fail.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// Which case a run is for, and the case's engine options (`engine_options:` in the case file,
/// by engine name): what an engine may want beyond the inputs (e.g. a quantization type).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunContext<'a> {
    pub case: &'a str,
    pub engine_options: Option<&'a BTreeMap<String, serde_json::Value>>,
}

pub trait LoadedModel: Send + Sync {
    /// Run one batch and return (at least) the requested taps.
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs>;
    /// [`LoadedModel::run`] for a case: engines that take per-case options override this.
    fn run_for(&self, ctx: &RunContext<'_>, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let _ = ctx;
        self.run(inputs, taps)
    }
    /// [`LoadedModel::decode`] for a case.
    fn decode_for(
        &self,
        ctx: &RunContext<'_>,
        prompt: &Inputs,
        tokens: &IdMatrix,
        taps: &[&str],
    ) -> Result<Vec<Outputs>> {
        let _ = ctx;
        self.decode(prompt, tokens, taps)
    }
    /// Taps this engine can produce for this model; `None` means every module it records.
    fn taps(&self) -> Option<Vec<String>> {
        None
    }
    /// Facts about how the engine was driven that a reader of the report should know (a config
    /// key translated for it, checkpoint tensors it never read); shown with every trial.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Taps the engine said it could not produce (fused away, not exposed for this input), with
    /// its reason, over its runs so far: a trial does not compare them and says why in a note.
    fn not_produced(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Incremental decoding with a KV cache, for `decode:` cases: step 0 runs the prompt, step k
    /// feeds `tokens[:, k-1]` alone, positions continuing from the prompt length. Returns one
    /// `Outputs` per step (`tokens.seq + 1` of them), taps under their plain names (no `@step`).
    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        let _ = (prompt, tokens, taps);
        Err(Error::engine("this engine does not support incremental decoding (`decode:` cases)")
            .hint("list only engines that decode under the case's `engines:`"))
    }
    /// Blocks (decoder/encoder layers) the engine can run alone on a given input, for the
    /// "error added" of each tap; empty when it cannot.
    fn blocks(&self) -> Vec<Block> {
        vec![]
    }
    /// Run one block of [`LoadedModel::blocks`] on `input` (the golden of the block's input tap)
    /// with the batch's mask and positions from `inputs`; returns the block's taps.
    fn run_block(&self, inputs: &Inputs, block: &str, input: &Tensor, taps: &[&str]) -> Result<Outputs> {
        let _ = (inputs, input, taps);
        Err(Error::engine(format!("this engine cannot run block `{block}` alone")))
    }
}

/// A block and the tap whose output feeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Module path, e.g. `model.layers.3`; the block's taps are it and its children.
    pub path: String,
    /// The tap whose output is the block's input, e.g. `model.layers.2`.
    pub input: String,
}

impl Block {
    pub fn contains(&self, tap: &str) -> bool {
        tap == self.path || tap.strip_prefix(self.path.as_str()).is_some_and(|r| r.starts_with('.'))
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    engines: Vec<Arc<dyn Engine>>,
}

impl Registry {
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
