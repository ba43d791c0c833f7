//! The config candle-transformers gets: the checkpoint's config.json as transformers 5 wrote it,
//! with the keys candle-transformers 0.11 reads under other names translated, each translation
//! recorded as a note for the report.

use serde_json::{Map, Value, json};

use harness_api::error::{Error, Result};
use harness_api::model::ModelSpec;

/// candle-transformers' view of one checkpoint config.
pub struct Translated {
    pub json: Map<String, Value>,
    /// One line per key translated, e.g. `rope_parameters.rope_theta -> rope_theta (500000)`.
    pub notes: Vec<String>,
}

/// config.json of `spec` (what a candle-transformers user deserializes), truncated to the spec's
/// layer count (depth bisection runs truncated specs), then translated for `class`.
pub fn load(spec: &ModelSpec) -> Result<Translated> {
    let file = spec.dir.join("config.json");
    let bytes = std::fs::read(&file).map_err(|e| {
        Error::io(&file, &e).hint("generate the model with `tools/.venv/bin/python tools/regen_goldens.py`")
    })?;
    let mut json: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| Error::input(format!("invalid config.json: {e}")).file(&file))?;
    if let Some(k) = harness_api::model::layer_count(&spec.config)? {
        harness_api::model::truncate_config(&mut json, k);
    }
    translate(&spec.class, json, &file)
}

fn translate(class: &str, mut json: Map<String, Value>, file: &std::path::Path) -> Result<Translated> {
    let mut notes = Vec::new();
    let err = |msg: String| {
        Error::input(msg).file(file).hint("candle-transformers 0.11 cannot express this config; leave the engine out")
    };
    match class {
        "Qwen3ForCausalLM"
            if json.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
                || json
                    .get("layer_types")
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("sliding_attention"))) =>
        {
            // Its qwen3.rs refuses them ("sliding window is not supported").
            return Err(err("candle-transformers' Qwen3 has no sliding-window layers".into()));
        }
        "WhisperForConditionalGeneration" => {
            // Its whisper/model.rs sizes every MLP as 4 * d_model (OpenAI's layout) and reads no
            // ffn key: another size fails at load with a shape mismatch.
            let d = json.get("d_model").and_then(Value::as_u64).unwrap_or(0);
            for key in ["encoder_ffn_dim", "decoder_ffn_dim"] {
                if let Some(f) = json.get(key).and_then(Value::as_u64)
                    && f != 4 * d
                {
                    return Err(err(format!(
                        "candle-transformers' Whisper assumes {key} = 4 x d_model ({}); this config has {f}",
                        4 * d
                    )));
                }
            }
        }
        _ => {}
    }
    match class {
        "LlamaForCausalLM" | "Qwen3ForCausalLM" => {
            if let Some(p) = json.get("rope_parameters").and_then(Value::as_object).cloned() {
                let ty = p.get("rope_type").and_then(Value::as_str).unwrap_or("default");
                if ty != "default" {
                    return Err(err(format!("rope_type `{ty}` has no translation for candle-transformers")));
                }
                if let Some(theta) = p.get("rope_theta")
                    && json.get("rope_theta") != Some(theta)
                {
                    notes.push(format!("rope_parameters.rope_theta -> rope_theta ({theta})"));
                    json.insert("rope_theta".into(), theta.clone());
                }
            }
        }
        "ModernBertModel" => {
            if let Some(eps) = json.get("norm_eps").cloned()
                && json.get("layer_norm_eps") != Some(&eps)
            {
                notes.push(format!("norm_eps -> layer_norm_eps ({eps})"));
                json.insert("layer_norm_eps".into(), eps);
            }
            if let Some(p) = json.get("rope_parameters").and_then(Value::as_object).cloned() {
                for (kind, key) in [("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")]
                {
                    if let Some(theta) = p.get(kind).and_then(|v| v.get("rope_theta"))
                        && json.get(key) != Some(theta)
                    {
                        notes.push(format!("rope_parameters.{kind}.rope_theta -> {key} ({theta})"));
                        json.insert(key.into(), theta.clone());
                    }
                }
            }
            if let Some(types) = json.get("layer_types").and_then(Value::as_array).cloned() {
                let global: Vec<bool> = types.iter().map(|t| t.as_str() == Some("full_attention")).collect();
                // candle-transformers: layer i is global iff i % global_attn_every_n_layers == 0.
                let n = (1..=global.len().max(1))
                    .find(|n| global.iter().enumerate().all(|(i, &g)| g == (i % n == 0)))
                    .ok_or_else(|| {
                        err(format!("layer_types {types:?} is not `full_attention` every n layers starting at layer 0"))
                    })?;
                // With fewer layers than n, any larger n says the same; keep the config's when it agrees.
                let current = json.get("global_attn_every_n_layers").and_then(Value::as_u64).map(|v| v as usize);
                let agrees =
                    current.is_some_and(|c| c > 0 && global.iter().enumerate().all(|(i, &g)| g == (i % c == 0)));
                if !agrees {
                    notes.push(format!("layer_types -> global_attn_every_n_layers ({n})"));
                    json.insert("global_attn_every_n_layers".into(), json!(n));
                }
            }
        }
        _ => {}
    }
    Ok(Translated { json, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(class: &str, v: Value) -> Translated {
        translate(class, v.as_object().unwrap().clone(), std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn rope_parameters_become_rope_theta() {
        let t = tr("LlamaForCausalLM", json!({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}));
        assert_eq!(t.json["rope_theta"], json!(500000.0));
        assert_eq!(t.notes, ["rope_parameters.rope_theta -> rope_theta (500000.0)"]);
    }

    #[test]
    fn modernbert_layer_types_become_a_period() {
        let t = tr(
            "ModernBertModel",
            json!({"norm_eps": 1e-5, "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
                   "rope_parameters": {"full_attention": {"rope_theta": 160000.0}, "sliding_attention": {"rope_theta": 10000.0}}}),
        );
        assert_eq!(t.json["global_attn_every_n_layers"], json!(3));
        assert_eq!(t.json["layer_norm_eps"], json!(1e-5));
        assert_eq!(t.json["local_rope_theta"], json!(10000.0));
        assert_eq!(t.notes.len(), 4);
        let bad = translate(
            "ModernBertModel",
            json!({"layer_types": ["sliding_attention", "full_attention"]}).as_object().unwrap().clone(),
            std::path::Path::new("config.json"),
        );
        assert!(bad.err().unwrap().to_string().contains("every n layers"));
    }
}
