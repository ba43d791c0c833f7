//! `BertModel`: word + position + token-type embeddings, post-LayerNorm blocks, tanh pooler.

use harness_api::config::Config;
use harness_api::error::Result;

/// The shapes the reference engine needs, read once from the config.
#[derive(Debug, Clone)]
pub struct BertDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub ln_eps: f64,
}

impl BertDims {
    pub fn from_config(c: &Config) -> Result<Self> {
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let head_dim = head_dim(c, hidden, heads)?;
        check_gelu(c, "hidden_act")?;
        if c.bool_or("is_decoder", false)? || c.bool_or("add_cross_attention", false)? {
            return Err(c
                .err("BertModel as a decoder (is_decoder / add_cross_attention) is not supported")
                .hint("the reference engine runs BERT as a bidirectional encoder"));
        }
        let pos_type = c.str_or("position_embedding_type", "absolute")?;
        if pos_type != "absolute" {
            return Err(c
                .err(format!("position_embedding_type `{pos_type}` is not supported"))
                .hint("the reference engine implements `absolute` positions"));
        }
        let (vocab, layers, intermediate) =
            (c.usize("vocab_size")?, c.usize("num_hidden_layers")?, c.usize("intermediate_size")?);
        let (max_positions, type_vocab) = (c.usize("max_position_embeddings")?, c.usize("type_vocab_size")?);
        harness_api::config::check_param_count(
            c,
            &[
                &[vocab, hidden],
                &[max_positions, hidden],
                &[type_vocab, hidden],
                &[layers, hidden, intermediate],
                &[layers, hidden, hidden, 4],
            ],
        )?;
        Ok(BertDims {
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            head_dim,
            max_positions,
            type_vocab,
            ln_eps: c.f64_or("layer_norm_eps", 1e-12)?,
        })
    }
}

/// `hidden / heads`, which must divide evenly.
pub(super) fn head_dim(c: &Config, hidden: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(c
            .err(format!("hidden size {hidden} is not a multiple of the number of attention heads {heads}"))
            .hint("each head gets hidden / heads channels"));
    }
    Ok(hidden / heads)
}

/// The encoder families use GELU with erf (`gelu` in HF's ACT2FN); other activations are refused.
pub(super) fn check_gelu(c: &Config, key: &str) -> Result<()> {
    let act = c.str_or(key, "gelu")?;
    if act != "gelu" {
        return Err(c
            .err(format!("{key} `{act}` is not supported by the reference engine"))
            .hint("it implements `gelu` (erf)"));
    }
    Ok(())
}

/// Whether the reference engine implements this config (errors name the key).
pub fn check(c: &Config) -> Result<()> {
    BertDims::from_config(c).map(|_| ())
}
