//! What the harness knows about a model's architecture, recorded from HF transformers when the
//! tools build (or first use) the model: `goldens/models/<id>/structure.json`.
//!
//! Nothing here is written by hand per class: module completion order, which modules run more
//! than once (never taps), the kind of each module output (per token, per position, per row,
//! whole), named outputs, whether the model is causal (measured), per-layer attention types and
//! the forward's inputs. Case loading validates taps, globs, forward order and inputs against it,
//! for any HF class.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

pub const FILE: &str = "structure.json";
pub const FORMAT: u32 = 1;

/// How a tap's axes line up with the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapKind {
    /// `[batch, seq, ...]`: one row per input token.
    Tokens,
    /// `[1, seq, ...]`: per position, shared by the batch (e.g. RoPE cos tables).
    Positions,
    /// `[batch, ...]`: one row per sequence (pooled outputs, classifier logits).
    Rows,
    /// Anything else: compared whole.
    Whole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// HF module path (`model.layers.3.mlp`) or a named output (`logits`).
    pub path: String,
    /// The Python class of the module (`LlamaMLP`); None for named outputs.
    #[serde(default)]
    pub class: Option<String>,
    pub kind: TapKind,
    #[serde(default)]
    pub batch_axis: Option<usize>,
    #[serde(default)]
    pub seq_axis: Option<usize>,
    /// The output's shape, batch and sequence axes as None.
    #[serde(default)]
    pub shape: Vec<Option<usize>>,
    /// A named output (`last_hidden_state`, `logits`, `pooled.*`), not a module path.
    #[serde(default)]
    pub output: bool,
    /// An encoder-decoder's module: the token input whose positions its sequence axis follows
    /// (`input_ids` for the encoder, `decoder_input_ids` for the decoder; None for an axis that
    /// follows neither, and for models with one sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
}

impl Module {
    pub fn new(path: impl Into<String>, kind: TapKind) -> Self {
        Module {
            path: path.into(),
            class: None,
            kind,
            batch_axis: None,
            seq_axis: None,
            shape: vec![],
            output: false,
            follows: None,
        }
    }
    pub fn tokens(path: impl Into<String>) -> Self {
        Module { batch_axis: Some(0), seq_axis: Some(1), ..Module::new(path, TapKind::Tokens) }
    }
    /// A named output (not a module path) of `kind`.
    pub fn named(path: impl Into<String>, kind: TapKind) -> Self {
        Module { output: true, ..Module::new(path, kind) }
    }
    /// Whether the case's `attention_mask` (the encoder's, over `input_ids`) describes this
    /// module's positions: not for a decoder's.
    pub fn follows_ids(&self) -> bool {
        self.follows.as_deref().is_none_or(|f| f == "input_ids")
    }
    /// The layer index if the path is under a numbered layer list (`model.layers.3.mlp` -> 3).
    pub fn layer(&self) -> Option<usize> {
        layer_of(&self.path)
    }
}

/// The first numeric segment of a module path (`model.layers.3.mlp` -> 3).
pub fn layer_of(path: &str) -> Option<usize> {
    path.split('.').find_map(|s| s.parse::<usize>().ok())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub dtype: String,
    pub rank: usize,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// The module list holding the layers (`model.layers`, `encoder.layer`).
    pub prefix: String,
    pub count: usize,
    /// Per-layer attention type (`full_attention`, `sliding_attention`), when the config has them.
    #[serde(default)]
    pub types: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeated {
    pub path: String,
    #[serde(default)]
    pub class: Option<String>,
    pub runs: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generator {
    pub tool: String,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub torch: String,
    #[serde(default)]
    pub transformers: String,
    #[serde(default)]
    pub numpy: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Structure {
    pub format: u32,
    pub model: String,
    pub class: String,
    pub model_type: String,
    /// The model spec's golden digest when it was recorded (tools/ use it; the harness checks
    /// the config itself, see `case::load_model_spec`).
    pub spec_digest: String,
    pub config_sha256: String,
    pub generator: Generator,
    /// Measured: changing a row's last token leaves its earlier positions bit-identical.
    pub causal: bool,
    /// An encoder-decoder's decoder, measured the same way on `decoder_input_ids` (None for
    /// other models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_causal: Option<bool>,
    #[serde(default)]
    pub is_encoder_decoder: bool,
    pub main_input: String,
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub type_vocab_size: Option<usize>,
    #[serde(default)]
    pub max_positions: Option<usize>,
    #[serde(default)]
    pub position_offset: usize,
    #[serde(default)]
    pub layers: Option<Layers>,
    /// Modules that ran exactly once, and named outputs, in forward completion order.
    pub modules: Vec<Module>,
    /// Modules that ran more than once per forward: their output is ambiguous, never a tap.
    #[serde(default)]
    pub repeated: Vec<Repeated>,
    /// Registered modules whose forward never ran.
    #[serde(default)]
    pub not_run: Vec<String>,
}

impl Structure {
    pub fn path(model_dir_in_goldens: &Path) -> PathBuf {
        model_dir_in_goldens.join(FILE)
    }

    /// Read `file`; a missing file is a `Golden` error with `regen` as the hint.
    pub fn read(file: &Path, regen: &str) -> Result<Structure> {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::golden(format!(
                    "no structure recorded for this model ({} does not exist)",
                    crate::error::display_path(file)
                ))
                .file(file)
                .hint(format!("the goldens tool records it from HF: {regen}")));
            }
            Err(e) => return Err(Error::io(file, &e)),
        };
        let s: Structure = serde_json::from_slice(&bytes).map_err(|e| {
            Error::golden(format!("invalid structure: {}", crate::error::lowercase_first(&e.to_string())))
                .file(file)
                .hint(format!("regenerate it: {regen}"))
        })?;
        if s.format != FORMAT {
            return Err(Error::golden(format!("structure format {} is not {FORMAT}", s.format))
                .file(file)
                .hint(format!("regenerate it: {regen}")));
        }
        Ok(s)
    }

    /// A stale structure: `what` changed since it was recorded.
    pub fn stale(file: &Path, what: &str, regen: &str) -> Error {
        Error::new(ErrorKind::Stale, format!("the recorded structure is stale: {what} changed since it was recorded"))
            .file(file)
            .hint(format!("regenerate: {regen}"))
    }

    /// A structure not recorded yet, for a model whose checkpoint is absent (its cases are
    /// ignored until it is there): no modules, no inputs.
    pub fn unknown(model: &str, class: &str) -> Structure {
        Structure {
            format: FORMAT,
            model: model.into(),
            class: class.into(),
            model_type: String::new(),
            spec_digest: String::new(),
            config_sha256: String::new(),
            generator: Generator {
                tool: String::new(),
                python: String::new(),
                torch: String::new(),
                transformers: String::new(),
                numpy: String::new(),
            },
            causal: false,
            decoder_causal: None,
            is_encoder_decoder: false,
            main_input: "input_ids".into(),
            inputs: vec![],
            vocab_size: None,
            type_vocab_size: None,
            max_positions: None,
            position_offset: 0,
            layers: None,
            modules: vec![],
            repeated: vec![],
            not_run: vec![],
        }
    }

    /// Every tappable name in forward order.
    pub fn taps(&self) -> impl Iterator<Item = &Module> {
        self.modules.iter()
    }

    pub fn module(&self, path: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.path == path)
    }

    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn takes(&self, name: &str) -> bool {
        self.input(name).is_some()
    }

    /// The attention type of each layer (`full_attention`, `sliding_attention`), when the layers
    /// differ.
    pub fn layer_types(&self) -> Option<&[String]> {
        let types = self.layers.as_ref()?.types.as_deref()?;
        let first = types.first()?;
        types.iter().any(|t| t != first).then_some(types)
    }

    /// The module of layer `i` (`model.layers.1`), if the layers are a numbered list.
    pub fn layer_module(&self, i: usize) -> Option<String> {
        let l = self.layers.as_ref()?;
        (i < l.count).then(|| format!("{}.{i}", l.prefix))
    }

    /// Whether `path` ran more than once per forward (and so is not a tap).
    pub fn repeated(&self, path: &str) -> Option<&Repeated> {
        self.repeated.iter().find(|r| r.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"{
  "format": 1, "model": "m", "class": "LlamaForCausalLM", "model_type": "llama",
  "spec_digest": "a", "config_sha256": "b",
  "generator": {"tool": "tools/regen_goldens.py", "python": "3.11", "torch": "2", "transformers": "5", "numpy": "2"},
  "causal": true, "is_encoder_decoder": false, "main_input": "input_ids",
  "inputs": [{"name": "input_ids", "dtype": "int64", "rank": 2, "required": true}],
  "vocab_size": 512, "type_vocab_size": null, "max_positions": 64, "position_offset": 0,
  "layers": {"prefix": "model.layers", "count": 2, "types": ["full_attention", "sliding_attention"]},
  "modules": [
    {"path": "model.embed_tokens", "class": "Embedding", "kind": "tokens", "batch_axis": 0, "seq_axis": 1, "shape": [null, null, 64]},
    {"path": "model.rotary_emb", "class": "R", "kind": "positions", "batch_axis": null, "seq_axis": 1, "shape": [1, null, 16]},
    {"path": "logits", "class": null, "kind": "tokens", "batch_axis": 0, "seq_axis": 1, "shape": [null, null, 512], "output": true}
  ],
  "repeated": [{"path": "x", "class": "Y", "runs": 2}],
  "not_run": ["z"]
}"#
    }

    #[test]
    fn reads_the_recorded_format() {
        let s: Structure = serde_json::from_str(sample()).unwrap();
        assert_eq!(s.modules[1].kind, TapKind::Positions);
        assert_eq!(s.modules[1].shape, vec![Some(1), None, Some(16)]);
        assert!(s.modules[2].output);
        assert_eq!(s.layer_types().unwrap().len(), 2);
        assert_eq!(s.layer_module(1).as_deref(), Some("model.layers.1"));
        assert_eq!(s.layer_module(2), None);
        assert!(s.repeated("x").is_some());
    }

    #[test]
    fn missing_and_invalid_files_name_the_command() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(FILE);
        let e = Structure::read(&f, "regen X").unwrap_err();
        assert!(e.to_string().contains("no structure recorded"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("regen X"));
        std::fs::write(&f, "{").unwrap();
        assert!(Structure::read(&f, "r").unwrap_err().to_string().contains("invalid structure"));
    }
}
