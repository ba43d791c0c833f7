//! candle-transformers' ViT as `ViTForImageClassification`: its public `Embeddings` and
//! `Encoder`, then the final LayerNorm and the classifier on the CLS token, as HF computes
//! them. `vit::Model::forward` returns logits only; driving its parts gives four more taps.
//!
//! candle-transformers reads ViT checkpoints by their transformers 4 names
//! (`vit.encoder.layer.0.attention.attention.query`); transformers 5 writes
//! `vit.layers.0.attention.q_proj`. The names are translated (and the report says so).

use std::path::Path;

use candle_core::{Device, Module, Tensor as CTensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::vit;
use serde_json::{Map, Value};

use super::{ModelNotes, parse_config, to_tensor};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::{InputData, Inputs};

pub struct Vit {
    taps: [String; 5],
    embeddings: vit::Embeddings,
    encoder: vit::Encoder,
    layernorm: LayerNorm,
    classifier: Linear,
}

impl Vit {
    pub fn image_classification(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Vit> {
        let cfg: vit::Config = parse_config(json, file)?;
        let labels = json
            .get("id2label")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .or_else(|| json.get("num_labels").and_then(Value::as_u64).map(|n| n as usize))
            .unwrap_or(2);
        let vb = vb.rename_f(transformers5_name);
        let v = vb.pp("vit");
        // The encoder's output is the last layer's (transformers 5 has no `vit.encoder` module).
        let last = format!("vit.layers.{}", cfg.num_hidden_layers.saturating_sub(1));
        Ok(Vit {
            taps: ["vit.embeddings".into(), last, "vit.layernorm".into(), "last_hidden_state".into(), "logits".into()],
            embeddings: vit::Embeddings::new(&cfg, false, v.pp("embeddings"))?,
            encoder: vit::Encoder::new(&cfg, v.pp("encoder"))?,
            layernorm: candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, v.pp("layernorm"))?,
            classifier: candle_nn::linear(cfg.hidden_size, labels, vb.pp("classifier"))?,
        })
    }
}

/// candle's (transformers 4) name of a ViT tensor -> the transformers 5 checkpoint's.
fn transformers5_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("vit.encoder.layer.") else { return name.to_string() };
    let (i, leaf) = rest.split_once('.').unwrap_or((rest, ""));
    let leaf = [
        ("attention.attention.query.", "attention.q_proj."),
        ("attention.attention.key.", "attention.k_proj."),
        ("attention.attention.value.", "attention.v_proj."),
        ("attention.output.dense.", "attention.o_proj."),
        ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."),
    ]
    .iter()
    .find_map(|(old, new)| leaf.strip_prefix(old).map(|t| format!("{new}{t}")))
    .unwrap_or_else(|| leaf.to_string());
    format!("vit.layers.{i}.{leaf}")
}

impl ModelNotes for Vit {
    fn own_notes(&self) -> Vec<String> {
        vec!["checkpoint names translated for candle-transformers' ViT: transformers 5's `vit.layers.N.attention.q_proj`, `mlp.fc1`, ... read as transformers 4's `vit.encoder.layer.N.attention.attention.query`, `intermediate.dense`, ...".into()]
    }
}

impl LoadedModel for Vit {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let px = inputs.named("pixel_values").ok_or_else(|| {
            Error::engine("ViT needs `pixel_values`").hint("give `pixel_values` under the case's `inputs:`")
        })?;
        let InputData::F32(data) = &px.data else {
            return Err(Error::engine(format!("`pixel_values` is {}, ViT takes float32", px.data.dtype())));
        };
        let pixels = CTensor::from_vec(data.clone(), px.shape.as_slice(), &Device::Cpu)?;
        let emb = self.embeddings.forward(&pixels, None, false)?;
        let enc = self.encoder.forward(&emb)?;
        let norm = self.layernorm.forward(&enc)?;
        let logits = self.classifier.forward(&norm.narrow(1, 0, 1)?.squeeze(1)?)?;
        let mut out = Outputs::new();
        for (name, t) in self.taps.iter().zip([&emb, &enc, &norm, &norm, &logits]) {
            if taps.contains(&name.as_str()) {
                out.insert(name.clone(), to_tensor(t)?);
            }
        }
        Ok(out)
    }
    fn taps(&self) -> Option<Vec<String>> {
        Some(self.taps.to_vec())
    }
}
