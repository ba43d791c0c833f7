//! `DistilBertForSequenceClassification`: BERT-like encoder without token types, LayerNorm eps
//! fixed at 1e-12 by the model code, and a pre_classifier + ReLU + classifier head on token 0.

use super::bert::{check_gelu, head_dim};
use super::{Config, Family, Module, TapKind};
use crate::error::Result;

pub static DISTILBERT: Family =
    Family { class: "DistilBertForSequenceClassification", causal: false, position_offset: 0, validate, modules };

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
        super::check_param_count(
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

fn validate(c: &Config) -> Result<()> {
    DistilBertDims::from_config(c).map(|_| ())
}

fn modules(c: &Config) -> Result<Vec<Module>> {
    let d = DistilBertDims::from_config(c)?;
    let t = |p: &str| Module::tokens(p);
    let mut m = vec![
        t("distilbert.embeddings.word_embeddings"),
        Module::with_kind("distilbert.embeddings.position_embeddings", TapKind::Positions),
        t("distilbert.embeddings.LayerNorm"),
        t("distilbert.embeddings.dropout"),
        t("distilbert.embeddings"),
    ];
    for i in 0..d.layers {
        let p = format!("distilbert.transformer.layer.{i}");
        for s in [
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "attention",
            "sa_layer_norm",
            "ffn.lin1",
            "ffn.activation",
            "ffn.lin2",
            "ffn.dropout",
            "ffn",
            "output_layer_norm",
        ] {
            m.push(t(&format!("{p}.{s}")));
        }
        m.push(t(&p));
    }
    m.push(t("distilbert.transformer"));
    m.push(t("last_hidden_state"));
    for s in ["pre_classifier", "dropout", "classifier", "logits"] {
        m.push(Module::with_kind(s, TapKind::Pooled));
    }
    Ok(m)
}
