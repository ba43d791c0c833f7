//! `GPT2LMHeadModel`: learned absolute positions, pre-LayerNorm blocks, fused `c_attn`
//! (query, key, value in one Conv1D: weights stored `[in, out]`), `gelu_new` MLP, tied head.

use harness_api::config::{Config, check_param_count};
use harness_api::error::Result;

pub const CLASS: &str = "GPT2LMHeadModel";

#[derive(Debug, Clone)]
pub struct Gpt2Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub inner: usize,
    pub layers: usize,
    pub heads: usize,
    pub positions: usize,
    pub eps: f64,
}

impl Gpt2Dims {
    pub fn from_config(c: &Config) -> Result<Self> {
        let hidden = c.opt_usize("n_embd")?.map_or_else(|| c.usize("hidden_size"), Ok)?;
        let heads = c.opt_usize("n_head")?.map_or_else(|| c.usize("num_attention_heads"), Ok)?;
        let layers = c.opt_usize("n_layer")?.map_or_else(|| c.usize("num_hidden_layers"), Ok)?;
        let positions = c.opt_usize("n_positions")?.map_or_else(|| c.usize("max_position_embeddings"), Ok)?;
        if heads == 0 || hidden % heads != 0 {
            return Err(c.err(format!("n_embd {hidden} is not a multiple of n_head {heads}")));
        }
        let inner = c.opt_usize("n_inner")?.unwrap_or(4 * hidden);
        let vocab = c.usize("vocab_size")?;
        check_param_count(c, &[&[vocab, hidden], &[layers, hidden, inner], &[positions, hidden]])?;
        let act = c.str_or("activation_function", "gelu_new")?;
        if act != "gelu_new" {
            return Err(c
                .err(format!("activation_function `{act}` is not implemented by the reference engine"))
                .hint("it implements `gelu_new`"));
        }
        for (key, default) in [
            ("scale_attn_by_inverse_layer_idx", false),
            ("reorder_and_upcast_attn", false),
            ("add_cross_attention", false),
        ] {
            if c.bool_or(key, default)? != default {
                return Err(c.err(format!("`{key}: {}` is not implemented by the reference engine", !default)));
            }
        }
        if !c.bool_or("scale_attn_weights", true)? {
            return Err(c.err("`scale_attn_weights: false` is not implemented by the reference engine"));
        }
        Ok(Gpt2Dims { vocab, hidden, inner, layers, heads, positions, eps: c.f64_or("layer_norm_epsilon", 1e-5)? })
    }
}

pub fn check(c: &Config) -> Result<()> {
    Gpt2Dims::from_config(c).map(|_| ())
}
