//! Sentence-transformers models: the pooling and normalization after the transformer, read from
//! the checkpoint's `modules.json` and `1_Pooling/config.json`, and the named taps they give:
//! `sentence_embedding` (computed by the engine) and `similarity` (its cosine-similarity matrix,
//! computed by the harness from the engine's `sentence_embedding`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";
pub const SIMILARITY: &str = "similarity";

/// One pooling mode of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// The first real token (`attention_mask.argmax`).
    Cls,
    /// Element-wise max over real tokens.
    Max,
    /// `sum(h * mask) / clamp(sum(mask), 1e-9)`.
    Mean,
    /// `sum(h * mask) / sqrt(clamp(sum(mask), 1e-9))`.
    MeanSqrtLen,
    /// The last real token.
    LastToken,
}

/// The modules after the transformer, in order: pooling (modes concatenated) then optional
/// L2 normalization.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub pooling: Vec<PoolMode>,
    pub normalize: bool,
    /// `modules.json`, for messages.
    pub file: PathBuf,
}

/// Legacy boolean keys of `1_Pooling/config.json`, in the order sentence-transformers
/// concatenates the modes.
const LEGACY_KEYS: &[(&str, &str)] = &[
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
];

/// The sentence pipeline of a checkpoint directory, or None when it is not a
/// sentence-transformers model (no `modules.json`).
pub fn load(dir: &Path) -> Result<Option<Pipeline>> {
    let file = dir.join("modules.json");
    let Ok(bytes) = std::fs::read(&file) else { return Ok(None) };
    let bad = |msg: String| Error::input(msg).file(&file);
    let modules: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("invalid modules.json: {}", crate::error::lowercase_first(&e.to_string()))))?;
    let mut pooling = None;
    let mut normalize = false;
    for (i, m) in modules.iter().enumerate() {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let short = ty.rsplit('.').next().unwrap_or(ty);
        match short {
            "Transformer" if i == 0 => {}
            "Pooling" if pooling.is_none() => {
                let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
                if sub.contains("..") || sub.starts_with('/') {
                    return Err(bad(format!("module {i} has path `{sub}` outside the checkpoint")));
                }
                pooling = Some(read_pooling(&dir.join(sub).join("config.json"))?);
            }
            "Normalize" if pooling.is_some() && !normalize => normalize = true,
            _ => {
                return Err(bad(format!("sentence-transformers module {i} `{ty}` is not supported here"))
                    .hint("supported: Transformer, then Pooling, then optionally Normalize"));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| {
        bad("modules.json has no Pooling module".into())
            .hint("a sentence-transformers model pools after the transformer")
    })?;
    Ok(Some(Pipeline { pooling, normalize, file }))
}

fn read_pooling(file: &Path) -> Result<Vec<PoolMode>> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, &e))?;
    let bad = |msg: String| Error::input(msg).file(file);
    let cfg: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("invalid pooling config: {}", crate::error::lowercase_first(&e.to_string()))))?;
    let names: Vec<String> = match cfg.get("pooling_mode") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect(),
        Some(other) => return Err(bad(format!("`pooling_mode` must be a name or a list of names, not {other}"))),
        None => LEGACY_KEYS
            .iter()
            .filter(|(k, _)| cfg.get(*k).and_then(Value::as_bool).unwrap_or(false))
            .map(|(_, n)| n.to_string())
            .collect(),
    };
    if names.is_empty() {
        return Err(bad("the pooling config enables no pooling mode".into()));
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "cls" => Ok(PoolMode::Cls),
            "max" => Ok(PoolMode::Max),
            "mean" => Ok(PoolMode::Mean),
            "mean_sqrt_len_tokens" => Ok(PoolMode::MeanSqrtLen),
            "lasttoken" => Ok(PoolMode::LastToken),
            other => Err(bad(format!("pooling mode `{other}` is not supported"))
                .hint("supported: cls, max, mean, mean_sqrt_len_tokens, lasttoken")),
        })
        .collect()
}

/// Cosine similarity of every pair of rows of `[batch, dim]` embeddings: `[batch, batch]`, as
/// sentence-transformers' `cos_sim` (rows L2-normalized with eps 1e-12, then `a @ a^T`).
pub fn similarity(emb: &Tensor) -> Result<Tensor> {
    let [b, d] = emb.shape() else {
        return Err(Error::engine(format!("`sentence_embedding` has shape {:?}, expected [batch, dim]", emb.shape())));
    };
    let (b, d) = (*b, *d);
    let rows: Vec<Vec<f64>> = emb
        .data()
        .chunks(d.max(1))
        .map(|r| {
            let n = r.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt().max(1e-12);
            r.iter().map(|&x| x as f64 / n).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(b * b);
    for i in 0..b {
        for j in 0..b {
            out.push(rows[i].iter().zip(&rows[j]).map(|(x, y)| x * y).sum::<f64>() as f32);
        }
    }
    Tensor::new(vec![b, b], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn reads_minilm_style_pipeline() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        );
        write(
            d.path(),
            "1_Pooling/config.json",
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#,
        );
        let p = load(d.path()).unwrap().unwrap();
        assert_eq!(p.pooling, vec![PoolMode::Mean]);
        assert!(p.normalize);
        write(d.path(), "1_Pooling/config.json", r#"{"pooling_mode": ["cls", "weightedmean"]}"#);
        assert!(load(d.path()).unwrap_err().to_string().contains("`weightedmean` is not supported"));
        assert!(load(&d.path().join("nothing")).unwrap().is_none());
    }

    #[test]
    fn similarity_is_cosine() {
        let e = Tensor::new(vec![3, 2], vec![1.0, 0.0, 2.0, 0.0, 0.0, 3.0]).unwrap();
        let s = similarity(&e).unwrap();
        assert_eq!(s.data(), &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
