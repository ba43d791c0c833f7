//! candle-transformers' encoders: `bert::BertModel`, `distilbert::DistilBertModel` and
//! `modernbert::ModernBert`. Each returns the last hidden state, so that is the one tap.

use std::path::Path;

use candle_core::DType;
use candle_nn::VarBuilder;
use candle_transformers::models::{bert, distilbert, modernbert};
use serde_json::{Map, Value};

use super::{ModelNotes, ids, parse_config, to_tensor};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::Result;
use harness_api::inputs::Inputs;

const TAP: &str = "last_hidden_state";

enum Model {
    Bert(bert::BertModel),
    DistilBert(distilbert::DistilBertModel),
    ModernBert(modernbert::ModernBert),
}

pub struct Encoder {
    model: Model,
}

impl Encoder {
    pub fn bert(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Encoder> {
        let cfg: bert::Config = parse_config(json, file)?;
        Ok(Encoder { model: Model::Bert(bert::BertModel::load(vb, &cfg)?) })
    }
    pub fn distilbert(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Encoder> {
        let cfg: distilbert::Config = parse_config(json, file)?;
        Ok(Encoder { model: Model::DistilBert(distilbert::DistilBertModel::load(vb, &cfg)?) })
    }
    pub fn modernbert(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Encoder> {
        let cfg: modernbert::Config = parse_config(json, file)?;
        // candle-transformers reads a ModernBertForMaskedLM checkpoint (`model.` prefix); a bare
        // ModernBertModel checkpoint has the same tensors without it.
        let vb = vb.rename_f(|name| name.strip_prefix("model.").unwrap_or(name).to_string());
        Ok(Encoder { model: Model::ModernBert(modernbert::ModernBert::load(vb, &cfg)?) })
    }
}

impl ModelNotes for Encoder {}

impl LoadedModel for Encoder {
    fn run(&self, inputs: &Inputs, _taps: &[&str]) -> Result<Outputs> {
        let input_ids = ids(&inputs.input_ids)?;
        // 1 = real token, as HF's attention_mask.
        let mask = match &inputs.attention_mask {
            Some(m) => ids(m)?,
            None => input_ids.ones_like()?,
        };
        let hidden = match &self.model {
            Model::Bert(m) => {
                let types = match &inputs.token_type_ids {
                    Some(t) => ids(t)?,
                    None => input_ids.zeros_like()?,
                };
                m.forward(&input_ids, &types, Some(&mask))?
            }
            Model::DistilBert(m) => {
                // DistilBertModel takes the positions to hide: nonzero = masked, broadcast over
                // heads and queries.
                let (b, s) = input_ids.dims2()?;
                let hide = mask.eq(0u32)?.to_dtype(DType::U8)?.reshape((b, 1, 1, s))?;
                m.forward(&input_ids, &hide)?
            }
            Model::ModernBert(m) => m.forward(&input_ids, &mask)?,
        };
        let mut out = Outputs::new();
        out.insert(TAP.into(), to_tensor(&hidden)?);
        Ok(out)
    }
    fn taps(&self) -> Option<Vec<String>> {
        Some(vec![TAP.into()])
    }
}
