//! `ModernBertModel`: pre-norm encoder with alternating global and local (sliding-window)
//! attention, a RoPE base per attention type, GeGLU MLP, embedding and final LayerNorms.

use serde_json::Value;

use super::bert::{check_gelu, head_dim};
use harness_api::config::Config;
use harness_api::error::Result;

#[derive(Debug, Clone)]
pub struct ModernBertDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Per layer: true for global (`full_attention`), false for local (`sliding_attention`).
    pub global: Vec<bool>,
    /// Local layers attend to keys with `|i - j| <= window` (HF: `local_attention // 2`).
    pub window: usize,
    pub global_theta: f64,
    pub local_theta: f64,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
}

/// `layer_types` (transformers 5), else derived from `global_attn_every_n_layers` (transformers
/// 4; default 3) exactly as ModernBertConfig.__post_init__ does: layer i is global when
/// `i % n == 0`.
fn layer_types(c: &Config, layers: usize) -> Result<Vec<bool>> {
    if let Some(v) = c.get("layer_types") {
        let list = v.as_array().ok_or_else(|| c.err("model config `layer_types` must be a list"))?;
        if list.len() != layers {
            return Err(c
                .err(format!("`layer_types` has {} entries but num_hidden_layers is {layers}", list.len()))
                .hint("give one `full_attention` or `sliding_attention` per layer"));
        }
        return list
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(true),
                Some("sliding_attention") => Ok(false),
                _ => Err(c
                    .err(format!("layer_types[{i}] is {t}"))
                    .hint("ModernBERT layers are `full_attention` or `sliding_attention`")),
            })
            .collect();
    }
    let n = c.usize_or("global_attn_every_n_layers", 3)?;
    if n == 0 {
        return Err(c.err("global_attn_every_n_layers must be at least 1"));
    }
    Ok((0..layers).map(|i| i % n == 0).collect())
}

/// The RoPE base of one attention type: `rope_parameters.<type>.rope_theta` (transformers 5),
/// else the transformers-4 key (`global_rope_theta` / `local_rope_theta`), else HF's default.
fn rope_theta(c: &Config, ty: &str, legacy: &str, default: f64) -> Result<f64> {
    let params = match c.get("rope_parameters") {
        None => None,
        Some(Value::Object(m)) => m.get(ty).filter(|v| !v.is_null()),
        Some(_) => {
            return Err(c.err("model config `rope_parameters` must be a mapping of attention type to parameters"));
        }
    };
    for scaling in [params, c.get("rope_scaling")].into_iter().flatten() {
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str);
        if let Some(k) = kind.filter(|k| *k != "default") {
            return Err(c
                .err(format!("rope type `{k}` for {ty} layers is not supported by the reference engine"))
                .hint("use `rope_type: default`"));
        }
    }
    if let Some(t) = params.and_then(|p| p.get("rope_theta")) {
        return t.as_f64().ok_or_else(|| c.err(format!("`rope_parameters.{ty}.rope_theta` must be a number")));
    }
    c.f64_or(legacy, default)
}

impl ModernBertDims {
    pub fn from_config(c: &Config) -> Result<Self> {
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let head_dim = head_dim(c, hidden, heads)?;
        if head_dim % 2 != 0 {
            return Err(c.err(format!("head_dim {head_dim} is odd; RoPE rotates pairs")));
        }
        check_gelu(c, "hidden_activation")?;
        let (vocab, layers, intermediate) =
            (c.usize("vocab_size")?, c.usize("num_hidden_layers")?, c.usize("intermediate_size")?);
        harness_api::config::check_param_count(
            c,
            &[&[vocab, hidden], &[layers, hidden, intermediate, 3], &[layers, hidden, hidden, 4]],
        )?;
        Ok(ModernBertDims {
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            head_dim,
            global: layer_types(c, layers)?,
            window: c.usize_or("local_attention", 128)? / 2,
            global_theta: rope_theta(c, "full_attention", "global_rope_theta", 160_000.0)?,
            local_theta: rope_theta(c, "sliding_attention", "local_rope_theta", 10_000.0)?,
            norm_eps: c.f64_or("norm_eps", 1e-5)?,
            norm_bias: c.bool_or("norm_bias", false)?,
            attention_bias: c.bool_or("attention_bias", false)?,
            mlp_bias: c.bool_or("mlp_bias", false)?,
        })
    }
}

/// Whether the reference engine implements this config (errors name the key).
pub fn check(c: &Config) -> Result<()> {
    ModernBertDims::from_config(c).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(extra: serde_json::Value) -> Result<ModernBertDims> {
        let mut map = serde_json::json!({
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 4, "num_attention_heads": 2,
        });
        map.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        ModernBertDims::from_config(&Config::new(map.as_object().unwrap().clone(), "m.yaml".into()))
    }

    #[test]
    fn transformers4_and_transformers5_forms_agree() {
        let t4 = dims(serde_json::json!({
            "global_attn_every_n_layers": 3, "global_rope_theta": 1000.0, "local_rope_theta": 50.0,
            "local_attention": 8,
        }))
        .unwrap();
        let t5 = dims(serde_json::json!({
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
            },
            "local_attention": 8,
        }))
        .unwrap();
        for d in [&t4, &t5] {
            assert_eq!(d.global, [true, false, false, true]);
            assert_eq!((d.global_theta, d.local_theta, d.window), (1000.0, 50.0, 4));
        }
    }

    #[test]
    fn transformers5_keys_win_over_legacy_ones_as_in_hf() {
        // A generated config.json (layer_types, rope_parameters) overlaid by a spec's legacy keys.
        let d = dims(serde_json::json!({
            "global_attn_every_n_layers": 2, "global_rope_theta": 1.0,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_theta": 7.0}},
        }))
        .unwrap();
        assert_eq!(d.global, [true, false, false, true]);
        assert_eq!((d.global_theta, d.local_theta), (7.0, 10_000.0));
    }

    #[test]
    fn defaults_follow_modernbert_config() {
        let d = dims(serde_json::json!({})).unwrap();
        assert_eq!(d.global, [true, false, false, true]);
        assert_eq!((d.global_theta, d.local_theta, d.window, d.norm_eps), (160_000.0, 10_000.0, 64, 1e-5));
        assert!(!d.norm_bias && !d.attention_bias && !d.mlp_bias);
    }

    #[test]
    fn bad_layer_types_and_rope_types_are_refused() {
        let e = dims(serde_json::json!({"layer_types": ["full_attention"]})).unwrap_err().to_string();
        assert!(e.contains("`layer_types` has 1 entries but num_hidden_layers is 4"), "{e}");
        let e = dims(serde_json::json!({"layer_types": ["full_attention", "x", "full_attention", "full_attention"]}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.yaml: layer_types[1] is \"x\""), "{e}");
        let e = dims(serde_json::json!({"rope_parameters": {"sliding_attention": {"rope_type": "linear"}}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope type `linear` for sliding_attention layers is not supported"), "{e}");
        let e = dims(serde_json::json!({"vocab_size": 1u64 << 40})).unwrap_err().to_string();
        assert!(e.contains("imply more than 2^40 weights"), "{e}");
        let e = dims(serde_json::json!({"hidden_activation": "silu"})).unwrap_err().to_string();
        assert!(e.contains("hidden_activation `silu` is not supported") && e.contains("hint"), "{e}");
    }
}
