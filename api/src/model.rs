//! A model as engines see it: its class, checkpoint directory, config, recorded structure and
//! sentence pipeline. The harness builds it from a model spec (`cases/models/<id>.yaml`);
//! engines read it and never parse YAML.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::sentence;
use crate::structure::Structure;

/// Where a model's weights come from: `random: {seed: N}`, `path: DIR` or `hf: org/name`.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A tiny model initialised by HF transformers from `config` and this seed (by tools/).
    Random { seed: u64 },
    /// A checkpoint directory (config.json + model.safetensors), relative to the repository root.
    Path { path: PathBuf, allow_outside_root: bool },
    /// A model in the local Hugging Face cache at `revision` (a ref or a commit; default `main`).
    Hf { repo: String, revision: Option<String> },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    Float32,
    Float16,
    Bfloat16,
}

impl WeightDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::Float32 => "float32",
            WeightDtype::Float16 => "float16",
            WeightDtype::Bfloat16 => "bfloat16",
        }
    }
}

/// A loaded, validated model spec.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub id: String,
    pub file: PathBuf,
    /// The HF class (`family:` in the spec), e.g. `MistralForCausalLM`: any transformers class.
    pub class: String,
    /// What HF recorded about the architecture (goldens/models/<id>/structure.json).
    pub structure: Arc<Structure>,
    pub source: Source,
    pub dtype: WeightDtype,
    /// The checkpoint directory: `goldens/models/<id>` for random models, else the `path`.
    pub dir: PathBuf,
    /// Effective config: the checkpoint's config.json (when present) overlaid by the spec's keys.
    pub config: Config,
    /// `hf` sources: the commit hash the cache resolved (recorded in and checked against the
    /// goldens' manifest).
    pub revision: Option<String>,
    /// Why the checkpoint is not on disk (`path`/`hf` sources), with the command that provides
    /// it: the model's cases are ignored, not run. The config is then not validated.
    pub absent: Option<Error>,
    /// The sentence-transformers pooling/normalization, when the checkpoint has a modules.json.
    pub sentence: Option<sentence::Pipeline>,
}

impl ModelSpec {
    /// The vocabulary size the structure recorded (or the config's `vocab_size`).
    pub fn vocab(&self) -> Result<usize> {
        match self.structure.vocab_size {
            Some(v) => Ok(v),
            None => self.config.usize("vocab_size"),
        }
    }
    /// Token types the model takes (0: it takes no `token_type_ids`).
    pub fn type_vocab(&self) -> usize {
        if self.structure.takes("token_type_ids") { self.structure.type_vocab_size.unwrap_or(0) } else { 0 }
    }
}

/// Checkpoint files that are Python pickles: never loaded (tools/harness_goldens/spec.py has the
/// same list, and a test keeps them equal).
pub const PICKLES: &[&str] = &["pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt"];

/// The layer count of a config (`num_hidden_layers`, or DistilBERT's `n_layers`).
pub fn layer_count(c: &Config) -> Result<Option<usize>> {
    match c.opt_usize("num_hidden_layers")? {
        Some(n) => Ok(Some(n)),
        None => c.opt_usize("n_layers"),
    }
}

/// A config.json truncated to its first `k` layers (the layer count and `layer_types`).
pub fn truncate_config(json: &mut serde_json::Map<String, serde_json::Value>, k: usize) {
    for key in ["num_hidden_layers", "n_layers"] {
        if json.contains_key(key) {
            json.insert(key.into(), serde_json::json!(k));
        }
    }
    if let Some(serde_json::Value::Array(a)) = json.get_mut("layer_types") {
        a.truncate(k);
    }
}

/// `spec` truncated to its first `k` layers (same checkpoint directory): depth bisection of
/// outputs-only engines runs these.
pub fn truncated(spec: &ModelSpec, k: usize) -> ModelSpec {
    let mut map = spec.config.raw().clone();
    truncate_config(&mut map, k);
    ModelSpec { config: Config::new(map, spec.file.clone()), ..spec.clone() }
}
