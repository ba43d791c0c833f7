//! candle-transformers' causal LMs: `llama::Llama`, `qwen3` and `quantized_llama` (GGUF).
//!
//! Their `forward` returns the logits of the *last* position only and takes no attention mask.
//! The golden `logits` are `[batch, seq, vocab]`, so the adapter runs every prefix `ids[:, :t]`
//! as its own forward (no cache) and keeps its last row: for a causal model that is exactly
//! position t-1 of a full forward. A row with padding runs alone, without its padding (its real
//! tokens must be one contiguous run); with RoPE only relative positions enter attention, so a
//! left-padded row's tokens starting at position 0 attend exactly as HF's do. Decode cases use
//! the models' own KV caches.

use std::path::Path;

use candle_core::{DType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, quantized_llama, qwen3};
use serde_json::{Map, Value};

use super::{ModelNotes, ids, parse_config, to_tensor};
use harness_api::engine::{LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::{IdMatrix, Inputs};
use harness_api::tensor::Tensor;

pub enum Lm {
    Llama { model: llama::Llama, cfg: llama::Config },
    Qwen3 { lm: qwen3::ModelForCausalLM, base: qwen3::Model },
    Gguf { model: quantized_llama::ModelWeights },
}

pub struct Causal {
    lm: Lm,
}

impl Causal {
    pub fn llama(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Causal> {
        let cfg: llama::LlamaConfig = parse_config(json, file)?;
        let cfg = cfg.into_config(false);
        Ok(Causal { lm: Lm::Llama { model: llama::Llama::load(vb, &cfg)?, cfg } })
    }
    pub fn qwen3(json: &Map<String, Value>, vb: VarBuilder<'static>, file: &Path) -> Result<Causal> {
        let cfg: qwen3::Config = parse_config(json, file)?;
        let base = qwen3::Model::new(&cfg, vb.clone())?;
        let lm = qwen3::ModelForCausalLM::new(&cfg, vb)?;
        Ok(Causal { lm: Lm::Qwen3 { lm, base } })
    }
    pub fn gguf(model: quantized_llama::ModelWeights) -> Causal {
        Causal { lm: Lm::Gguf { model } }
    }

    fn session(&self) -> Result<Session> {
        Ok(match &self.lm {
            Lm::Llama { model, cfg } => {
                Session::Llama(model.clone(), llama::Cache::new(true, DType::F32, cfg, &Device::Cpu)?)
            }
            Lm::Qwen3 { lm, base } => {
                // The loaded models never run (every session runs clones), so their caches are empty.
                Session::Qwen3(lm.clone(), base.clone())
            }
            Lm::Gguf { model } => {
                let mut m = model.clone();
                m.clear_kv_cache();
                Session::Gguf(m)
            }
        })
    }

    fn has_hidden(&self) -> bool {
        matches!(self.lm, Lm::Qwen3 { .. })
    }

    /// Logits `[b, s, vocab]` (and the last hidden state `[b, s, h]` where the model has one) of
    /// unpadded `ids`, one prefix per forward.
    fn full(&self, ids: &CTensor, hidden: bool) -> Result<(CTensor, Option<CTensor>)> {
        let (_, s) = ids.dims2()?;
        let mut rows = Vec::with_capacity(s);
        for t in 1..=s {
            let (logits, _) = self.session()?.step(&ids.narrow(1, 0, t)?, 0, false)?;
            rows.push(logits);
        }
        let logits = CTensor::stack(&rows, 1)?;
        let h = if hidden && self.has_hidden() { self.session()?.step(ids, 0, true)?.1 } else { None };
        Ok((logits, h))
    }
}

/// One model instance with its KV cache.
enum Session {
    Llama(llama::Llama, llama::Cache),
    Qwen3(qwen3::ModelForCausalLM, qwen3::Model),
    Gguf(quantized_llama::ModelWeights),
}

impl Session {
    /// Feed `ids` `[b, t]` at positions `offset..offset+t`: the last position's logits `[b, vocab]`
    /// and, when asked and available, the last hidden state `[b, t, h]`.
    fn step(&mut self, ids: &CTensor, offset: usize, hidden: bool) -> Result<(CTensor, Option<CTensor>)> {
        Ok(match self {
            Session::Llama(m, cache) => (m.forward(ids, offset, cache)?, None),
            Session::Qwen3(lm, base) => {
                let logits = lm.forward(ids, offset)?.squeeze(1)?;
                // The base model keeps its own cache: step it only when its output is wanted.
                let h = if hidden { Some(base.forward(ids, offset)?) } else { None };
                (logits, h)
            }
            Session::Gguf(m) => (m.forward(ids, offset)?, None),
        })
    }
}

/// Per row, the span `[start, end)` of real tokens, or None when nothing is padded.
fn real_spans(inputs: &Inputs) -> Result<Option<Vec<(usize, usize)>>> {
    let Some(mask) = &inputs.attention_mask else { return Ok(None) };
    if !mask.data.contains(&0) {
        return Ok(None);
    }
    (0..mask.batch)
        .map(|b| {
            let row = mask.row(b);
            let start = row.iter().position(|&m| m != 0).unwrap_or(0);
            let end = row.iter().rposition(|&m| m != 0).map_or(0, |e| e + 1);
            if row[start..end].contains(&0) {
                return Err(Error::engine(format!(
                    "row {b} of attention_mask has padding between real tokens; candle-transformers' causal \
                     models take no attention mask, so only one contiguous run of real tokens per row can be run"
                ))
                .hint("leave candle-transformers out of this case's `engines:`"));
            }
            Ok((start, end))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Place each row's `[1, n, d]` result at its span of a zero `[b, s, d]` tensor.
fn scatter(parts: &[(usize, usize, CTensor)], batch: usize, seq: usize) -> Result<Tensor> {
    let d = parts.first().map_or(0, |p| p.2.dim(2).unwrap_or(0));
    let mut data = vec![0f32; batch * seq * d];
    for (b, (start, _, t)) in parts.iter().enumerate() {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        let at = (b * seq + start) * d;
        data[at..at + v.len()].copy_from_slice(&v);
    }
    Tensor::new(vec![batch, seq, d], data)
}

impl ModelNotes for Causal {
    fn own_notes(&self) -> Vec<String> {
        vec![
            "candle-transformers' causal models return the last position's logits and take no attention mask: \
             the harness runs every prefix as its own forward, and each padded row alone without its padding"
                .into(),
        ]
    }
}

impl LoadedModel for Causal {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let want_hidden = taps.is_empty() || taps.contains(&"last_hidden_state");
        let ids_m = &inputs.input_ids;
        let (logits, hidden) = match real_spans(inputs)? {
            None => {
                let (l, h) = self.full(&ids(ids_m)?, want_hidden)?;
                (to_tensor(&l)?, h.map(|h| to_tensor(&h)).transpose()?)
            }
            Some(spans) => {
                let (mut ls, mut hs) = (Vec::new(), Vec::new());
                for (b, &(start, end)) in spans.iter().enumerate() {
                    let row = IdMatrix { batch: 1, seq: end - start, data: ids_m.row(b)[start..end].to_vec() };
                    let (l, h) = self.full(&ids(&row)?, want_hidden)?;
                    ls.push((start, end, l));
                    if let Some(h) = h {
                        hs.push((start, end, h));
                    }
                }
                let hidden = (!hs.is_empty()).then(|| scatter(&hs, ids_m.batch, ids_m.seq)).transpose()?;
                (scatter(&ls, ids_m.batch, ids_m.seq)?, hidden)
            }
        };
        let mut out = Outputs::new();
        out.insert("logits".into(), logits);
        if let Some(h) = hidden {
            out.insert("last_hidden_state".into(), h);
        }
        Ok(out)
    }

    fn taps(&self) -> Option<Vec<String>> {
        let mut t = vec!["logits".to_string()];
        if self.has_hidden() {
            t.insert(0, "last_hidden_state".into());
        }
        Some(t)
    }

    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        let want_hidden = self.has_hidden() && (taps.is_empty() || taps.contains(&"last_hidden_state"));
        let mut steps = vec![self.run(prompt, taps)?];
        let mut s = self.session()?;
        let p = ids(&prompt.input_ids)?;
        let plen = prompt.input_ids.seq;
        s.step(&p, 0, want_hidden)?;
        for k in 0..tokens.seq {
            let col: Vec<i64> = (0..tokens.batch).map(|b| tokens.row(b)[k]).collect();
            let x = ids(&IdMatrix { batch: tokens.batch, seq: 1, data: col })?;
            let (logits, h) = s.step(&x, plen + k, want_hidden)?;
            let mut out = Outputs::new();
            out.insert("logits".into(), to_tensor(&logits.unsqueeze(1)?)?);
            if let Some(h) = h {
                out.insert("last_hidden_state".into(), to_tensor(&h)?);
            }
            steps.push(out);
        }
        Ok(steps)
    }
}
