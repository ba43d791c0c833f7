//! candle-transformers' Whisper as `WhisperForConditionalGeneration`: its encoder on
//! `input_features`, its decoder on `decoder_input_ids` with the encoder's output, and the tied
//! output projection. It exposes the encoder's and the decoder's final outputs and the logits.

use std::path::Path;

use candle_core::{Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper;
use serde_json::{Map, Value};

use super::{ModelNotes, parse_config, to_tensor};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::{InputData, Inputs};

const TAPS: [&str; 4] = ["model.encoder.layer_norm", "model.decoder.layer_norm", "last_hidden_state", "logits"];

pub struct Whisper {
    model: whisper::model::Whisper,
    /// The config's `activation_function`, when it is not the tanh GELU candle computes.
    other_gelu: Option<String>,
}

impl Whisper {
    pub fn conditional_generation(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Whisper> {
        let cfg: whisper::Config = parse_config(json, file)?;
        let act = json.get("activation_function").and_then(Value::as_str).unwrap_or("gelu");
        let other_gelu = (!matches!(act, "gelu_new" | "gelu_pytorch_tanh")).then(|| act.to_string());
        Ok(Whisper { model: whisper::model::Whisper::load(&vb, cfg)?, other_gelu })
    }
}

impl ModelNotes for Whisper {
    fn own_notes(&self) -> Vec<String> {
        // whisper/model.rs calls `Tensor::gelu` (the tanh approximation) and reads no
        // activation_function: a finding on every config that asks for another activation.
        self.other_gelu
            .iter()
            .map(|a| {
                format!(
                    "candle-transformers' Whisper computes GELU with the tanh approximation; this config's \
                     activation_function is `{a}`"
                )
            })
            .collect()
    }
}

impl LoadedModel for Whisper {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let feats = inputs.named("input_features").ok_or_else(|| {
            Error::engine("Whisper needs `input_features`").hint("give `input_features` under the case's `inputs:`")
        })?;
        let InputData::F32(data) = &feats.data else {
            return Err(Error::engine(format!("`input_features` is {}, Whisper takes float32", feats.data.dtype())));
        };
        let ids = inputs.named("decoder_input_ids").ok_or_else(|| {
            Error::engine("Whisper needs `decoder_input_ids`")
                .hint("give `decoder_input_ids` under the case's `inputs:`")
        })?;
        let InputData::I64(id_data) = &ids.data else {
            return Err(Error::engine(format!("`decoder_input_ids` is {}, Whisper takes int64", ids.data.dtype())));
        };
        let x = CTensor::from_vec(data.clone(), feats.shape.as_slice(), &Device::Cpu)?;
        let tokens: Vec<u32> = id_data.iter().map(|&t| t as u32).collect();
        let tokens = CTensor::from_vec(tokens, ids.shape.as_slice(), &Device::Cpu)?;
        // The forwards take `&mut self` for their KV caches; a clone shares the weights.
        let mut m = self.model.clone();
        m.reset_kv_cache();
        let enc = m.encoder.forward(&x, true)?;
        let dec = m.decoder.forward(&tokens, &enc, true)?;
        let logits = m.decoder.final_linear(&dec)?;
        let mut out = Outputs::new();
        for (name, t) in TAPS.iter().zip([&enc, &dec, &dec, &logits]) {
            if taps.contains(name) {
                out.insert(name.to_string(), to_tensor(t)?);
            }
        }
        Ok(out)
    }
    fn taps(&self) -> Option<Vec<String>> {
        Some(TAPS.iter().map(|s| s.to_string()).collect())
    }
}
