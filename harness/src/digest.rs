//! What goldens depend on, as one hash: a case's or model spec's keys that change the tensors
//! tools/ would write, canonicalized the same way by tools/hflib/spec.py (`golden_digest`). Editing
//! anything else (a description, `engines:`, tolerances, `shrink:`) leaves the goldens fresh.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Keys of a case that the goldens depend on (taps by name only: their tolerances do not count).
pub const CASE_KEYS: &[&str] = &["model", "inputs", "taps", "decode", "bisect", "compare_padding"];
/// Keys of a model spec that its weights, structure and every case's goldens depend on.
pub const SPEC_KEYS: &[&str] = &["family", "source", "config", "dtype", "gguf"];

/// Floats as the hex of their IEEE-754 bits (Python and Rust print floats differently, the bits
/// are the same); `source.fetch` is a command, not content.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => Value::String(format!("f:{:016x}", n.as_f64().unwrap_or(0.0).to_bits())),
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
        other => other.clone(),
    }
}

/// The sha256 of `keys` of a document (a YAML mapping as JSON), canonicalized.
pub fn golden_digest(doc: &Value, keys: &[&str]) -> String {
    let mut out = Map::new();
    if let Some(m) = doc.as_object() {
        for k in keys {
            let Some(v) = m.get(*k).filter(|v| !v.is_null()) else { continue };
            let v = match *k {
                "taps" => Value::Array(
                    v.as_array()
                        .map(|a| a.iter().map(|t| t.get("tap").cloned().unwrap_or_else(|| t.clone())).collect())
                        .unwrap_or_default(),
                ),
                "source" => {
                    let mut s = v.clone();
                    if let Some(o) = s.as_object_mut() {
                        o.remove("fetch");
                    }
                    s
                }
                _ => v.clone(),
            };
            out.insert((*k).to_string(), canonical(&v));
        }
    }
    let text = serde_json::to_string(&Value::Object(out)).expect("JSON values serialize");
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// [`golden_digest`] of a YAML text (None when it does not parse: the loader reports that).
pub fn of_yaml(text: &str, keys: &[&str]) -> Option<String> {
    serde_norway::from_str::<Value>(text).ok().map(|v| golden_digest(&v, keys))
}

/// The case digest of a case file's text: [`CASE_KEYS`], with each named input read from a
/// `.npy` (`inputs.<name>: {npy: f}`) given as `{npy: f, sha256: <of the file, or "missing">}`,
/// `f` relative to `case_dir`, so that editing the file makes the goldens stale.
pub fn of_case(text: &str, case_dir: &std::path::Path) -> Option<String> {
    let mut v = serde_norway::from_str::<Value>(text).ok()?;
    if let Some(inputs) = v.get_mut("inputs").and_then(Value::as_object_mut) {
        for input in inputs.values_mut() {
            let Some(m) = input.as_object_mut() else { continue };
            let Some(f) = m.get("npy").and_then(Value::as_str) else { continue };
            let sha = harness_api::hash::sha256_file(&case_dir.join(f)).unwrap_or_else(|_| "missing".to_string());
            m.insert("sha256".into(), Value::String(sha));
        }
    }
    Some(golden_digest(&v, CASE_KEYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_golden_keys_count() {
        let a = "model: m\ninputs: {input_ids: [[1, 2]]}\ntaps: [logits]\n";
        let b = "description: x\nmodel: m\ninputs: {input_ids: [[1, 2]]}\nengines: [reference]\ntaps:\n  - {tap: logits, tolerance: {atol: 1.0e-3}}\ntolerance: {atol: 1}\n";
        assert_eq!(of_yaml(a, CASE_KEYS), of_yaml(b, CASE_KEYS));
        let c = "model: m\ninputs: {input_ids: [[1, 3]]}\ntaps: [logits]\n";
        assert_ne!(of_yaml(a, CASE_KEYS), of_yaml(c, CASE_KEYS));
    }

    #[test]
    fn matches_the_python_canonical_form() {
        // tools/tests/test_spec.py asserts the same digest for the same document.
        let doc = "family: LlamaForCausalLM\nsource: {random: {seed: 3}, fetch: x}\nconfig: {rope_theta: 500000.0, rms_norm_eps: 1.0e-5, hidden_size: 64, name: \"é\"}\n";
        assert_eq!(
            of_yaml(doc, SPEC_KEYS).unwrap(),
            "5d7902fea380783292a7eebf7204a65b0d47870ab880bbf38e04b33045359d64"
        );
    }
}
