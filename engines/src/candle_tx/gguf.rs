//! candle-transformers' `quantized_llama` on the model written as GGUF by tools/ (F32 or Q8_0):
//! engines `candle-gguf-f32` and `candle-gguf-q8_0`.
//!
//! The GGUF file is `<model dir>/model.<type>.gguf`, written by `tools/regen_goldens.py` for model
//! specs with `gguf: [...]` (tools/hflib/gguf.py). It records the sha256 of the model.safetensors
//! it was converted from, so a GGUF file older than the weights is refused as stale.

use candle_core::Device;
use candle_core::quantized::gguf_file;
use candle_transformers::models::quantized_llama::ModelWeights;

use super::causal::Causal;
use harness_api::engine::{Engine, LoadedModel};
use harness_api::error::{Error, Result};
use harness_api::model::ModelSpec;

/// Metadata key holding the sha256 of the safetensors file the GGUF was converted from.
pub const SOURCE_SHA256: &str = "harness.source.sha256";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    Q8_0,
}

impl GgufType {
    pub const ALL: [GgufType; 2] = [GgufType::F32, GgufType::Q8_0];
    /// As in model specs' `gguf:` lists and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            GgufType::F32 => "f32",
            GgufType::Q8_0 => "q8_0",
        }
    }
    pub fn parse(s: &str) -> Option<GgufType> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

/// The GGUF file of `spec` in this type.
pub fn gguf_path(spec: &ModelSpec, q: GgufType) -> std::path::PathBuf {
    spec.dir.join(format!("model.{}.gguf", q.as_str()))
}

pub struct GgufEngine {
    q: GgufType,
    name: String,
}

impl GgufEngine {
    pub fn new(q: GgufType) -> Self {
        GgufEngine { q, name: format!("candle-gguf-{}", q.as_str()) }
    }
}

impl Engine for GgufEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn implements(&self, class: &str) -> bool {
        class == "LlamaForCausalLM"
    }
    /// Only cases that name it: a quantized model needs tolerances of its own.
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, spec: &ModelSpec) -> Result<Box<dyn LoadedModel>> {
        let path = gguf_path(spec, self.q);
        let regen = format!("add `{}` to `gguf:` in the model spec and run tools/regen_goldens.py", self.q.as_str());
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, &e).hint(regen.clone()))?;
        let mut ct = gguf_file::Content::read(&mut f).map_err(|e| {
            Error::input(format!("cannot read GGUF: {}", harness_api::error::candle_message(&e))).file(&path)
        })?;
        let weights = spec.dir.join("model.safetensors");
        let want = harness_api::hash::sha256_file(&weights)?;
        let got = ct.metadata.get(SOURCE_SHA256).and_then(|v| v.to_string().ok()).cloned();
        if got.as_deref() != Some(want.as_str()) {
            return Err(Error::new(
                harness_api::error::ErrorKind::Stale,
                format!(
                    "the GGUF file was not converted from the current {}",
                    harness_api::error::display_path(&weights)
                ),
            )
            .file(&path)
            .hint("regenerate it: tools/.venv/bin/python tools/regen_goldens.py --all"));
        }
        // Depth bisection runs truncated specs: keep that many blocks of the file.
        if let Some(k) = harness_api::model::layer_count(&spec.config)? {
            let key = "llama.block_count";
            let full = ct.metadata.get(key).and_then(|v| v.to_u32().ok()).unwrap_or(0) as usize;
            if k < full {
                ct.metadata.insert(key.into(), gguf_file::Value::U32(k as u32));
            }
        }
        let model = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).map_err(|e| {
            Error::engine(format!("quantized_llama cannot load this GGUF: {}", harness_api::error::candle_message(&e)))
                .file(&path)
        })?;
        let note = format!(
            "{} ({}): quantized_llama reads architecture `llama` with interleaved RoPE pairs, so tools/ wrote q/k \
             rows permuted as llama.cpp's converter does",
            harness_api::error::display_path(&path),
            self.q.as_str()
        );
        Ok(Box::new(super::Noted::new(Box::new(Causal::gguf(model)), vec![note])))
    }
}
