//! `Qwen3ForCausalLM`: the Llama decoder plus per-head q_norm / k_norm, with `head_dim`
//! independent of hidden_size / num_attention_heads (see `LlamaDims::qwen3`).

use super::llama::{LlamaDims, decoder_modules};
use super::{Config, Family, Module};
use crate::error::Result;

pub static QWEN3: Family = Family { class: "Qwen3ForCausalLM", causal: true, position_offset: 0, validate, modules };

fn validate(c: &Config) -> Result<()> {
    LlamaDims::qwen3(c)?;
    let sliding = c.bool_or("use_sliding_window", false)?
        || c.get("layer_types")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|t| t.as_str() != Some("full_attention")));
    if sliding {
        return Err(c
            .err("qwen3 sliding-window layers are not supported by the reference engine")
            .hint("set `use_sliding_window: false` (the Qwen3 default) and leave `layer_types` out"));
    }
    Ok(())
}

fn modules(c: &Config) -> Result<Vec<Module>> {
    Ok(decoder_modules(&LlamaDims::qwen3(c)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        let mut m = serde_json::json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2,
        });
        m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Config::new(m.as_object().unwrap().clone(), "cases/models/q.yaml".into())
    }

    #[test]
    fn head_dim_defaults_to_128_not_hidden_over_heads() {
        assert_eq!(LlamaDims::qwen3(&config(serde_json::json!({}))).unwrap().head_dim, 128);
        assert_eq!(LlamaDims::from_config(&config(serde_json::json!({}))).unwrap().head_dim, 4);
    }

    #[test]
    fn q_norm_and_k_norm_complete_right_after_their_projections() {
        let names: Vec<String> = modules(&config(serde_json::json!({}))).unwrap().into_iter().map(|m| m.path).collect();
        let at = names.iter().position(|n| n == "model.layers.0.self_attn.q_proj").unwrap();
        let attn: Vec<&str> = names[at..at + 7].iter().map(|n| n.rsplit('.').next().unwrap()).collect();
        assert_eq!(attn, ["q_proj", "q_norm", "k_proj", "k_norm", "v_proj", "o_proj", "self_attn"]);
    }

    #[test]
    fn sliding_window_layers_are_refused() {
        let e = validate(&config(serde_json::json!({"use_sliding_window": true}))).unwrap_err().to_string();
        assert!(e.starts_with("cases/models/q.yaml: qwen3 sliding-window layers are not supported"), "{e}");
        let layers = serde_json::json!({"layer_types": ["sliding_attention"]});
        assert!(validate(&config(layers)).is_err());
        assert!(validate(&config(serde_json::json!({"layer_types": ["full_attention"]}))).is_ok());
    }
}
