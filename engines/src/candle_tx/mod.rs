//! candle-transformers as an engine under test: a real engine this project did not write.
//!
//! Its BERT, DistilBERT, ModernBERT, Llama, Qwen3, ViT and Whisper models load our checkpoints (config.json,
//! translated where candle-transformers 0.11 reads other keys than transformers 5 writes, see
//! [`config`]) and run the case's inputs through its public API. That API exposes final outputs
//! only, so [`LoadedModel::taps`] lists those and trials compare just them; depth bisection
//! (the harness's `bisect`) localizes a divergence by running the model truncated to k layers.
//!
//! The adapter only drives the API: whatever the models compute wrong is a finding (docs/findings.md).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor as CTensor};
use candle_nn::VarBuilder;

use harness_api::engine::{Engine, LoadedModel};
use harness_api::error::{Error, Result};
use harness_api::inputs::{IdMatrix, Inputs};
use harness_api::model::ModelSpec;
use harness_api::tensor::Tensor;

pub mod audio;
pub mod causal;
pub mod config;
pub mod encoders;
pub mod gguf;
pub mod vision;

pub const NAME: &str = "candle-transformers";

const CLASSES: [&str; 7] = [
    "BertModel",
    "DistilBertForSequenceClassification",
    "ModernBertModel",
    "LlamaForCausalLM",
    "Qwen3ForCausalLM",
    "ViTForImageClassification",
    "WhisperForConditionalGeneration",
];

/// candle-transformers 0.11's models for the families it has.
pub struct CandleTxEngine;

impl Engine for CandleTxEngine {
    fn name(&self) -> &str {
        NAME
    }
    fn implements(&self, class: &str) -> bool {
        CLASSES.contains(&class)
    }
    fn supports(&self, model: &ModelSpec) -> std::result::Result<(), String> {
        if !self.implements(&model.class) {
            return Err(format!("candle-transformers (as driven here) has no model for {}", model.class));
        }
        config::load(model).map(|_| ()).map_err(|e| e.msg)
    }
    fn load(&self, spec: &ModelSpec) -> Result<Box<dyn LoadedModel>> {
        let cfg = config::load(spec)?;
        let ckpt = Checkpoint::load(&spec.dir)?;
        let mut notes: Vec<String> =
            cfg.notes.iter().map(|n| format!("config translated for candle-transformers: {n}")).collect();
        let file = spec.dir.join("config.json");
        let model: Box<dyn ModelNotes> = match spec.class.as_str() {
            "LlamaForCausalLM" => Box::new(causal::Causal::llama(&cfg.json, ckpt.var_builder(), &file)?),
            "Qwen3ForCausalLM" => Box::new(causal::Causal::qwen3(&cfg.json, ckpt.var_builder(), &file)?),
            "BertModel" => Box::new(encoders::Encoder::bert(&cfg.json, ckpt.var_builder(), &file)?),
            "DistilBertForSequenceClassification" => {
                Box::new(encoders::Encoder::distilbert(&cfg.json, ckpt.var_builder(), &file)?)
            }
            "ModernBertModel" => Box::new(encoders::Encoder::modernbert(&cfg.json, ckpt.var_builder(), &file)?),
            "WhisperForConditionalGeneration" => {
                Box::new(audio::Whisper::conditional_generation(&cfg.json, ckpt.var_builder(), &file)?)
            }
            "ViTForImageClassification" => {
                Box::new(vision::Vit::image_classification(&cfg.json, ckpt.var_builder(), &file)?)
            }
            other => return Err(Error::engine(format!("candle-transformers has no model for `{other}` here"))),
        };
        if let Some(n) = ckpt.unread_note() {
            notes.push(n);
        }
        Ok(Box::new(Noted::new(model, notes)))
    }
}

/// A loaded model plus the notes of its load.
pub trait ModelNotes: LoadedModel {
    fn own_notes(&self) -> Vec<String> {
        Vec::new()
    }
}

pub struct Noted {
    inner: Box<dyn ModelNotes>,
    notes: Vec<String>,
}

impl Noted {
    /// `notes` first, then the model's own.
    pub fn new(inner: Box<dyn ModelNotes>, mut notes: Vec<String>) -> Noted {
        notes.extend(inner.own_notes());
        Noted { inner, notes }
    }
}

impl LoadedModel for Noted {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<harness_api::engine::Outputs> {
        self.inner.run(inputs, taps)
    }
    fn taps(&self) -> Option<Vec<String>> {
        self.inner.taps()
    }
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<harness_api::engine::Outputs>> {
        self.inner.decode(prompt, tokens, taps)
    }
}

/// model.safetensors as candle-transformers sees it through a `VarBuilder`, recording which
/// tensors the model read: a checkpoint tensor an engine never reads is a weight it ignores.
pub struct Checkpoint {
    tensors: Arc<HashMap<String, CTensor>>,
    read: Arc<Mutex<BTreeSet<String>>>,
}

impl Checkpoint {
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let file = dir.join("model.safetensors");
        if !file.exists() {
            return Err(Error::golden("model weights are missing")
                .file(&file)
                .hint("generate the model with `tools/.venv/bin/python tools/regen_goldens.py`"));
        }
        let raw = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| {
            Error::input(format!("cannot read safetensors: {}", harness_api::error::candle_message(&e))).file(&file)
        })?;
        let tensors = raw.into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
        Ok(Checkpoint { tensors: Arc::new(tensors), read: Arc::default() })
    }

    pub fn var_builder(&self) -> VarBuilder<'static> {
        let backend = Recording { tensors: self.tensors.clone(), read: self.read.clone() };
        VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu)
    }

    /// "candle-transformers did not read N checkpoint tensors: ...", when it did not.
    pub fn unread_note(&self) -> Option<String> {
        let read = self.read.lock().unwrap();
        let mut unread: Vec<&String> = self.tensors.keys().filter(|k| !read.contains(*k)).collect();
        if unread.is_empty() {
            return None;
        }
        unread.sort();
        const SHOWN: usize = 8;
        let mut list = unread.iter().take(SHOWN).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        if unread.len() > SHOWN {
            list.push_str(&format!(" and {} more", unread.len() - SHOWN));
        }
        Some(format!(
            "candle-transformers did not read {} of the checkpoint's {} tensors: {list}",
            unread.len(),
            self.tensors.len()
        ))
    }
}

struct Recording {
    tensors: Arc<HashMap<String, CTensor>>,
    read: Arc<Mutex<BTreeSet<String>>>,
}

impl candle_nn::var_builder::SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<CTensor> {
        let t = candle_nn::var_builder::SimpleBackend::get(self.tensors.as_ref(), s, name, h, dtype, dev)?;
        self.read.lock().unwrap().insert(name.to_string());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<CTensor> {
        let t = candle_nn::var_builder::SimpleBackend::get_unchecked(self.tensors.as_ref(), name, dtype, dev)?;
        self.read.lock().unwrap().insert(name.to_string());
        Ok(t)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Deserialize a candle-transformers config struct from the translated JSON.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    json: &serde_json::Map<String, serde_json::Value>,
    file: &Path,
) -> Result<T> {
    serde_json::from_value(serde_json::Value::Object(json.clone())).map_err(|e| {
        Error::input(format!("candle-transformers cannot read this config: {e}"))
            .file(file)
            .hint("a key it needs is missing or has another type; see engines/candle_tx/config.rs")
    })
}

/// `[b, s]` u32 ids.
pub fn ids(m: &IdMatrix) -> Result<CTensor> {
    let v: Vec<u32> = m.data.iter().map(|&x| x as u32).collect();
    Ok(CTensor::from_vec(v, (m.batch, m.seq), &Device::Cpu)?)
}

/// A candle tensor as the harness's tensor.
pub fn to_tensor(t: &CTensor) -> Result<Tensor> {
    let shape = t.dims().to_vec();
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Tensor::new(shape, data)
}
