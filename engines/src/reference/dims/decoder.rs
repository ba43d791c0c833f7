//! The decoder-only causal LMs of the Llama lineage, as one parameterized architecture:
//! `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`,
//! `Gemma2ForCausalLM`, `Gemma3ForCausalLM`, `Phi3ForCausalLM`. Each differs from Llama by a few
//! switches read from the config (following each class's modeling file in transformers 5):
//! biases, per-head q/k norms, sliding-window layers, RoPE scaling and partial rotary, Gemma's
//! (1 + w) norms, sandwich norms, embedding scale, soft-capping and query scalar, Phi-3's fused
//! projections. What a config asks that is not implemented is refused by name, so the engine
//! says why it cannot run the model instead of computing something else.

use serde_json::Value;

use harness_api::config::{Config, check_param_count};
use harness_api::error::Result;

pub const LLAMA: &str = "LlamaForCausalLM";
pub const MISTRAL: &str = "MistralForCausalLM";
pub const QWEN2: &str = "Qwen2ForCausalLM";
pub const QWEN3: &str = "Qwen3ForCausalLM";
pub const GEMMA2: &str = "Gemma2ForCausalLM";
pub const GEMMA3: &str = "Gemma3ForCausalLM";
pub const PHI3: &str = "Phi3ForCausalLM";
pub const CLASSES: [&str; 7] = [LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3];

/// How RoPE's inverse frequencies are scaled (`rope_parameters.rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// `inv_freq / factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, the band between smoothed.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Dimensions of each head that rotate (`head_dim * partial_rotary_factor`); the rest pass.
    pub rotary_dim: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: erf.
    Gelu,
}

/// Where per-head q/k norms sit: Qwen3 normalizes `[b, s, heads, d]` before the transpose,
/// Gemma 3 `[b, heads, s, d]` after it (the recorded tap shapes differ accordingly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    BeforeTranspose,
    AfterTranspose,
}

#[derive(Debug, Clone)]
pub struct DecoderDims {
    pub class: String,
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    /// Gemma: norms multiply by `1 + w`, computed in float32.
    pub norm_plus_one: bool,
    /// One RoPE per layer (Gemma 3 has a base per attention type).
    pub rope: Vec<Rope>,
    pub act: Act,
    /// Biases of q, k, v, o.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: Option<QkNorm>,
    /// Per layer: the sliding window (keys `j > i - window`), None for full attention.
    pub window: Vec<Option<usize>>,
    /// Attention scores are scaled by this (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar^-0.5).
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Gemma: embeddings multiplied by sqrt(hidden) (in float32).
    pub embed_scale: Option<f32>,
    /// Gemma 2/3: post-attention and pre/post-feedforward norms around each sublayer.
    pub sandwich_norms: bool,
    /// Phi-3: `self_attn.qkv_proj` and `mlp.gate_up_proj` are single matrices.
    pub fused: bool,
    pub tie_embeddings: bool,
}

fn rope_of(c: &Config, params: Option<&Value>, head_dim: usize, partial: f64) -> Result<Rope> {
    let get = |k: &str| params.and_then(|p| p.get(k)).filter(|v| !v.is_null());
    let num = |k: &str| -> Result<f64> {
        get(k).and_then(Value::as_f64).ok_or_else(|| c.err(format!("rope_parameters.{k} must be a number")))
    };
    let ty = get("rope_type").or_else(|| get("type")).and_then(Value::as_str).unwrap_or("default");
    let theta = match get("rope_theta") {
        Some(t) => t.as_f64().ok_or_else(|| c.err("rope_parameters.rope_theta must be a number"))?,
        None => c.f64_or("rope_theta", 10_000.0)?,
    };
    let partial = match get("partial_rotary_factor") {
        Some(p) => p.as_f64().ok_or_else(|| c.err("partial_rotary_factor must be a number"))?,
        None => partial,
    };
    let scaling = match ty {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(c
                .err(format!("rope type `{other}` is not implemented by the reference engine"))
                .hint("it implements `default`, `linear` and `llama3`"));
        }
    };
    let rotary_dim = (head_dim as f64 * partial) as usize;
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
        return Err(c.err(format!("rotary dimension {rotary_dim} of head_dim {head_dim} is not a positive even size")));
    }
    Ok(Rope { theta, scaling, rotary_dim })
}

/// `rope_parameters` (transformers 5) or the legacy `rope_scaling` + `rope_theta` keys.
fn rope_params(c: &Config) -> Option<Value> {
    c.get("rope_parameters").cloned().or_else(|| {
        let mut m = c.get("rope_scaling").and_then(Value::as_object).cloned().unwrap_or_default();
        if let Some(t) = c.get("rope_theta") {
            m.insert("rope_theta".into(), t.clone());
        }
        (!m.is_empty()).then_some(Value::Object(m))
    })
}

fn act_of(c: &Config, key: &str, default: &str) -> Result<Act> {
    match c.str_or(key, default)? {
        "silu" | "swish" => Ok(Act::Silu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Act::GeluTanh),
        "gelu" => Ok(Act::Gelu),
        other => Err(c
            .err(format!("{key} `{other}` is not implemented by the reference engine"))
            .hint("it implements silu, gelu and gelu_pytorch_tanh")),
    }
}

impl DecoderDims {
    pub fn from_config(class: &str, c: &Config) -> Result<Self> {
        let gemma = matches!(class, GEMMA2 | GEMMA3);
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
        let default_head_dim = match class {
            QWEN3 => Some(128),
            GEMMA2 | GEMMA3 => Some(256),
            _ => None,
        };
        let head_dim = match c.opt_usize("head_dim")?.or(default_head_dim) {
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
        let vocab = c.usize("vocab_size")?;
        let (layers, intermediate) = (c.usize("num_hidden_layers")?, c.usize("intermediate_size")?);
        check_param_count(c, &[&[vocab, hidden], &[layers, hidden, intermediate], &[layers, hidden, hidden]])?;

        let act =
            if gemma { act_of(c, "hidden_activation", "gelu_pytorch_tanh")? } else { act_of(c, "hidden_act", "silu")? };

        // Which layers slide, and over how many keys.
        let window_size = c.opt_usize("sliding_window")?;
        let types: Option<Vec<String>> = match c.get("layer_types") {
            None => None,
            Some(v) => {
                let list = v.as_array().ok_or_else(|| c.err("`layer_types` must be a list"))?;
                if list.len() != layers {
                    return Err(c.err(format!("`layer_types` has {} entries for {layers} layers", list.len())));
                }
                Some(list.iter().map(|t| t.as_str().unwrap_or("?").to_string()).collect())
            }
        };
        let window: Vec<Option<usize>> = match (&types, class) {
            // Mistral: every layer slides when `sliding_window` is set.
            (_, MISTRAL) => vec![window_size; layers],
            (Some(types), _) => types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(None),
                    "sliding_attention" => window_size.map(Some).ok_or_else(|| {
                        c.err(format!("layer {i} is `sliding_attention` but `sliding_window` is not set"))
                    }),
                    other => Err(c
                        .err(format!("layer_types[{i}] `{other}` is not implemented by the reference engine"))
                        .hint("it implements `full_attention` and `sliding_attention`")),
                })
                .collect::<Result<_>>()?,
            (None, _) => vec![None; layers],
        };
        if window.contains(&Some(0)) {
            return Err(c.err("sliding_window 0 leaves nothing to attend to"));
        }

        // RoPE: Gemma 3 has one per attention type; Phi-3 rotates part of each head.
        let partial = c.f64_or("partial_rotary_factor", 1.0)?;
        let params = rope_params(c);
        let per_type = params.as_ref().and_then(|p| p.get("full_attention")).is_some();
        let rope: Vec<Rope> = if per_type {
            let p = params.as_ref().unwrap();
            let types = types.clone().unwrap_or_else(|| vec!["full_attention".into(); layers]);
            types
                .iter()
                .map(|t| {
                    let sub = p.get(t.as_str()).ok_or_else(|| c.err(format!("rope_parameters has no `{t}`")))?;
                    rope_of(c, Some(sub), head_dim, partial)
                })
                .collect::<Result<_>>()?
        } else {
            vec![rope_of(c, params.as_ref(), head_dim, partial)?; layers]
        };
        if class == PHI3
            && let Some(p) = &params
            && p.get("rope_type").and_then(Value::as_str).is_some_and(|t| t == "longrope")
        {
            return Err(c.err("Phi-3 `longrope` scaling is not implemented by the reference engine"));
        }

        let attn_scale = if gemma {
            let s = c.f64_or("query_pre_attn_scalar", head_dim as f64)?;
            if s <= 0.0 {
                return Err(c.err("query_pre_attn_scalar must be positive"));
            }
            s.powf(-0.5)
        } else {
            (head_dim as f64).powf(-0.5)
        };
        let opt_pos = |k: &str| -> Result<Option<f64>> { Ok(c.opt_f64(k)?.filter(|v| *v > 0.0)) };
        let attention_bias = c.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) = match class {
            QWEN2 => (true, false),
            PHI3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = matches!(class, LLAMA) && c.bool_or("mlp_bias", false)?;
        let default_eps = if class == PHI3 { 1e-5 } else { 1e-6 };
        if c.bool_or("use_bidirectional_attention", false)? {
            return Err(c.err("bidirectional attention is not implemented by the reference engine"));
        }
        Ok(DecoderDims {
            class: class.to_string(),
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            rms_eps: c.f64_or("rms_norm_eps", default_eps)?,
            norm_plus_one: gemma,
            rope,
            act,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm: match class {
                QWEN3 => Some(QkNorm::BeforeTranspose),
                GEMMA3 => Some(QkNorm::AfterTranspose),
                _ => None,
            },
            window,
            attn_scale,
            attn_softcap: if class == GEMMA2 || class == GEMMA3 { opt_pos("attn_logit_softcapping")? } else { None },
            final_softcap: if class == GEMMA2 || class == GEMMA3 { opt_pos("final_logit_softcapping")? } else { None },
            embed_scale: gemma.then(|| (hidden as f64).sqrt() as f32),
            sandwich_norms: gemma,
            fused: class == PHI3,
            tie_embeddings: c.bool_or("tie_word_embeddings", gemma)?,
        })
    }
}

/// Whether the reference engine implements this class and config (errors name the key).
pub fn check(class: &str, c: &Config) -> Result<()> {
    DecoderDims::from_config(class, c).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        let mut m = serde_json::json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
        });
        m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Config::new(m.as_object().unwrap().clone(), "cases/models/q.yaml".into())
    }

    #[test]
    fn head_dim_defaults_per_class() {
        let c = config(serde_json::json!({}));
        assert_eq!(DecoderDims::from_config(QWEN3, &c).unwrap().head_dim, 128);
        assert_eq!(DecoderDims::from_config(LLAMA, &c).unwrap().head_dim, 4);
        assert_eq!(DecoderDims::from_config(GEMMA2, &c).unwrap().head_dim, 256);
    }

    #[test]
    fn sliding_layers_follow_layer_types_and_mistral_slides_everywhere() {
        let c =
            config(serde_json::json!({"sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"]}));
        assert_eq!(DecoderDims::from_config(QWEN3, &c).unwrap().window, vec![Some(6), None]);
        let m = config(serde_json::json!({"sliding_window": 6}));
        assert_eq!(DecoderDims::from_config(MISTRAL, &m).unwrap().window, vec![Some(6), Some(6)]);
        assert_eq!(DecoderDims::from_config(LLAMA, &m).unwrap().window, vec![None, None]);
        let bad = config(serde_json::json!({"layer_types": ["sliding_attention", "full_attention"]}));
        assert!(DecoderDims::from_config(QWEN3, &bad).unwrap_err().to_string().contains("sliding_window"));
    }

    #[test]
    fn rope_types_read_both_config_forms() {
        let c = config(serde_json::json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}));
        let d = DecoderDims::from_config(LLAMA, &c).unwrap();
        assert!(matches!(d.rope[0].scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(d.rope[0].theta, 5e5);
        let legacy = config(serde_json::json!({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}));
        assert_eq!(
            DecoderDims::from_config(LLAMA, &legacy).unwrap().rope[1].scaling,
            RopeScaling::Linear { factor: 2.0 }
        );
        let dynamic = config(serde_json::json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}));
        let e = DecoderDims::from_config(LLAMA, &dynamic).unwrap_err().to_string();
        assert!(e.contains("rope type `dynamic` is not implemented by the reference engine"), "{e}");
    }

    #[test]
    fn partial_rotary_and_per_type_rope() {
        let c = config(serde_json::json!({"partial_rotary_factor": 0.5}));
        assert_eq!(DecoderDims::from_config(PHI3, &c).unwrap().rope[0].rotary_dim, 2);
        let g = config(serde_json::json!({"head_dim": 8, "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}}));
        let d = DecoderDims::from_config(GEMMA3, &g).unwrap();
        assert_eq!((d.rope[0].theta, d.rope[1].theta), (1e4, 1e6));
        assert_eq!(d.qk_norm, Some(QkNorm::AfterTranspose));
    }
}
