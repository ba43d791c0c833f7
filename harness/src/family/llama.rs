//! `LlamaForCausalLM`.

use super::{Config, Family, Module, TapKind};
use crate::error::Result;

pub static LLAMA: Family = Family { class: "LlamaForCausalLM", causal: true, position_offset: 0, validate, modules };

/// The shapes the reference engine needs, read once from the config.
#[derive(Debug, Clone)]
pub struct LlamaDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub act: String,
    /// Qwen3: RMSNorm over each query / key head (`q_norm`, `k_norm`) before RoPE.
    pub qk_norm: bool,
}

impl LlamaDims {
    /// LlamaForCausalLM: `head_dim` defaults to hidden_size / num_attention_heads.
    pub fn from_config(c: &Config) -> Result<Self> {
        Self::parse(c, false)
    }

    /// Qwen3ForCausalLM: `head_dim` defaults to 128 (Qwen3Config), q_norm / k_norm, no MLP bias.
    pub fn qwen3(c: &Config) -> Result<Self> {
        Self::parse(c, true)
    }

    fn parse(c: &Config, qwen3: bool) -> Result<Self> {
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let kv_heads = c.usize_or("num_key_value_heads", heads)?;
        if heads == 0 || kv_heads == 0 {
            return Err(c.err("num_attention_heads and num_key_value_heads must be positive"));
        }
        if heads % kv_heads != 0 {
            return Err(c
                .err(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"))
                .hint("grouped-query attention shares each key/value head among a whole number of query heads"));
        }
        let head_dim = match c.opt_usize("head_dim")?.or(qwen3.then_some(128)) {
            Some(d) => d,
            None => {
                if hidden % heads != 0 {
                    return Err(c
                        .err(format!("hidden_size {hidden} is not divisible by num_attention_heads {heads}"))
                        .hint("set `head_dim` explicitly"));
                }
                hidden / heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(c.err(format!("head_dim {head_dim} is odd; RoPE rotates pairs")));
        }
        let act = c.str_or("hidden_act", "silu")?.to_string();
        if act != "silu" {
            return Err(c.err(format!("hidden_act `{act}` is not supported for Llama")).hint("Llama uses `silu`"));
        }
        let vocab = c.usize("vocab_size")?;
        let (layers, intermediate) = (c.usize("num_hidden_layers")?, c.usize("intermediate_size")?);
        super::check_param_count(c, &[&[vocab, hidden], &[layers, hidden, intermediate], &[layers, hidden, hidden]])?;
        Ok(LlamaDims {
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            rms_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: c.rope_theta(10000.0)?,
            tie_embeddings: c.bool_or("tie_word_embeddings", false)?,
            attention_bias: c.bool_or("attention_bias", false)?,
            mlp_bias: !qwen3 && c.bool_or("mlp_bias", false)?,
            act,
            qk_norm: qwen3,
        })
    }
}

fn validate(c: &Config) -> Result<()> {
    LlamaDims::from_config(c).map(|_| ())
}

/// Decoder-layer modules shared by the Llama-like families, in completion order.
/// `attn` lists the attention's submodules in completion order.
pub fn decoder_layer_modules(prefix: &str, attn: &[&str]) -> Vec<Module> {
    let mut m = vec![Module::tokens(format!("{prefix}.input_layernorm"))];
    for p in attn {
        m.push(Module::tokens(format!("{prefix}.self_attn.{p}")));
    }
    m.push(Module::tokens(format!("{prefix}.self_attn")));
    m.push(Module::tokens(format!("{prefix}.post_attention_layernorm")));
    for p in ["gate_proj", "act_fn", "up_proj", "down_proj"] {
        m.push(Module::tokens(format!("{prefix}.mlp.{p}")));
    }
    m.push(Module::tokens(format!("{prefix}.mlp")));
    m.push(Module::tokens(prefix.to_string()));
    m
}

fn modules(c: &Config) -> Result<Vec<Module>> {
    Ok(decoder_modules(&LlamaDims::from_config(c)?))
}

/// Every module of a Llama-like causal LM (Llama, Qwen3) in completion order. q_norm runs on
/// q_proj's output before k_proj starts (likewise k_norm), as HF's recorded module_order shows.
pub fn decoder_modules(d: &LlamaDims) -> Vec<Module> {
    let attn: &[&str] = if d.qk_norm {
        &["q_proj", "q_norm", "k_proj", "k_norm", "v_proj", "o_proj"]
    } else {
        &["q_proj", "k_proj", "v_proj", "o_proj"]
    };
    let mut m = vec![Module::tokens("model.embed_tokens"), Module::with_kind("model.rotary_emb", TapKind::Positions)];
    for i in 0..d.layers {
        m.extend(decoder_layer_modules(&format!("model.layers.{i}"), attn));
    }
    m.push(Module::tokens("model.norm"));
    m.push(Module::tokens("last_hidden_state"));
    m.push(Module::tokens("lm_head"));
    m.push(Module::tokens("logits"));
    m
}
