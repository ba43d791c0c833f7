//! `DistilBertForSequenceClassification`: BERT-like encoder without token types, LayerNorm eps
//! fixed at 1e-12 by the model code, and a pre_classifier + ReLU + classifier head on token 0.

use super::bert::{check_gelu, head_dim};
use harness_api::config::Config;
use harness_api::error::Result;

/// DistilBERT's LayerNorms use this epsilon whatever the config says (modeling_distilbert.py).
pub const LN_EPS: f64 = 1e-12;

#[derive(Debug, Clone)]
pub struct DistilBertDims {
    pub vocab: usize,
    pub dim: usize,
    pub hidden_dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub num_labels: usize,
}

/// DistilBERT's own key, or the name its `attribute_map` maps onto it (`hidden_size` -> `dim`).
fn aliased(c: &Config, key: &str, alias: &str) -> Result<usize> {
    match c.opt_usize(key)? {
        Some(v) => Ok(v),
        None => c.usize(alias).map_err(|_| {
            c.err(format!("model config has no `{key}`")).hint(format!("add `{key}:` (or `{alias}:`) under `config:`"))
        }),
    }
}

/// `num_labels`, else the size of `id2label` (what config.json stores), else HF's default 2.
fn num_labels(c: &Config) -> Result<usize> {
    if let Some(n) = c.opt_usize("num_labels")? {
        return Ok(n);
    }
    match c.get("id2label") {
        None => Ok(2),
        Some(v) => v.as_object().map(|m| m.len()).ok_or_else(|| c.err("model config `id2label` must be a mapping")),
    }
}

impl DistilBertDims {
    pub fn from_config(c: &Config) -> Result<Self> {
        let dim = aliased(c, "dim", "hidden_size")?;
        let heads = aliased(c, "n_heads", "num_attention_heads")?;
        let head_dim = head_dim(c, dim, heads)?;
        check_gelu(c, "activation")?;
        let num_labels = num_labels(c)?;
        if num_labels == 0 {
            return Err(c.err("num_labels must be at least 1").hint("set `num_labels:` under `config:`"));
        }
        let (vocab, hidden_dim) = (c.usize("vocab_size")?, c.usize("hidden_dim")?);
        let (layers, max_positions) =
            (aliased(c, "n_layers", "num_hidden_layers")?, c.usize("max_position_embeddings")?);
        harness_api::config::check_param_count(
            c,
            &[
                &[vocab, dim],
                &[max_positions, dim],
                &[layers, dim, hidden_dim],
                &[layers, dim, dim, 4],
                &[num_labels, dim],
            ],
        )?;
        Ok(DistilBertDims { vocab, dim, hidden_dim, layers, heads, head_dim, max_positions, num_labels })
    }
}

/// Whether the reference engine implements this config (errors name the key).
pub fn check(c: &Config) -> Result<()> {
    DistilBertDims::from_config(c).map(|_| ())
}
