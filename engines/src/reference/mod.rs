//! The reference engine: the supported families written on candle-core, following HF's float32
//! eager forward, exposing every module's output under its HF name.
//!
//! It is the harness's own known-good engine (every case must pass on it), the oracle for
//! shrinking ports, and, with a [`Mutation`], the source of the mutant zoo: the same engine
//! with one real-world port bug injected.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor as CTensor};

use harness_api::engine::{Engine, LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::Inputs;
use harness_api::model::ModelSpec;
use harness_api::tensor::Tensor;

pub mod bert;
pub mod decoder;
pub mod dims;
pub mod distilbert;
pub mod encoder;
pub mod gpt2;
pub mod kv_cache;
pub mod modernbert;
pub mod ops;

/// The HF classes the reference engine implements.
pub fn classes() -> Vec<&'static str> {
    let mut v = dims::decoder::CLASSES.to_vec();
    v.extend([bert::CLASS, distilbert::CLASS, modernbert::CLASS, dims::gpt2::CLASS]);
    v
}

/// Whether the reference engine implements `class` with this config; Err says why not.
pub fn check(class: &str, config: &harness_api::config::Config) -> std::result::Result<(), String> {
    let r = match class {
        c if dims::decoder::CLASSES.contains(&c) => dims::decoder::check(c, config),
        bert::CLASS => dims::bert::check(config),
        distilbert::CLASS => dims::distilbert::check(config),
        modernbert::CLASS => dims::modernbert::check(config),
        dims::gpt2::CLASS => dims::gpt2::check(config),
        other => {
            return Err(format!(
                "the reference engine does not implement `{other}` (it implements {})",
                classes().join(", ")
            ));
        }
    };
    r.map_err(|e| e.msg)
}

/// A bug injected into the reference engine: the mutant zoo. Each variant is a bug a real port
/// made (from port-debugging logs); families implement the ones that apply to them and ignore the
/// rest. Mutant engines are never in [`harness_api::engine::Registry::builtin`]; tests and
/// `Registry::with_zoo` register them.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Add `delta` to one element of a weight, to show a failure is localized to its first use.
    PerturbWeight { name: String, index: usize, delta: f32 },
    /// Sentence pooling takes the last token instead of CLS (ModernBERT port, seed 001).
    PoolLastToken,
    /// Local-attention layers attend to every token (sliding window not applied).
    NoSlidingWindow,
    /// The global RoPE theta is used on local layers too.
    GlobalRopeOnLocal,
    /// The two halves of a fused gated-MLP input projection (ModernBERT `Wi`) are swapped.
    GegluSwapped,
    /// The final norm before the outputs is skipped.
    NoFinalNorm,
    /// LayerNorm epsilon replaced (e.g. 1e-5 where the config says 1e-12).
    LayerNormEps(f64),
    /// GELU with the tanh approximation where the model uses erf.
    GeluTanh,
    /// Dropout left on at inference, with this probability (random every run).
    DropoutOn(f64),
    /// The attention mask is ignored (padding is attended to).
    IgnoreAttentionMask,
    /// RoPE rotates adjacent pairs (2i, 2i+1) instead of HF's half-split pairs (i, i + d/2).
    RopeInterleaved,
    /// GQA: query head h reads kv head h % kv_heads instead of h / (heads / kv_heads).
    GqaWrongRepeat,
    /// KV cache: the new token's key/value are written one slot off (decode only).
    KvCacheWrongPosition,
    /// One projection weight used transposed (named by its weight, e.g.
    /// `model.layers.0.self_attn.o_proj.weight`; must be square).
    TransposedWeight(String),
    /// Attention scores not scaled by 1/sqrt(head_dim).
    NoAttentionScale,
    /// The residual connection around this sublayer (`attention` or `mlp`) of every layer is
    /// missing.
    NoResidual(&'static str),
    /// Decoder attention without the causal mask: tokens attend to later tokens.
    NoCausalMask,
    /// Sliding-window layers let one more key in (`j >= i - window` instead of `j > i - window`).
    WindowOffByOne,
    /// Gemma's norms multiply by `w` instead of `1 + w` (weights read as Llama's).
    NormWeightNotPlusOne,
    /// Gemma's embeddings are not scaled by sqrt(hidden).
    NoEmbedScale,
    /// RoPE scaling (`linear`, `llama3`) is not applied: the base frequencies are used.
    RopeScalingIgnored,
    /// Partial rotary (Phi-3) applied to the whole head.
    PartialRotaryFull,
    /// The q/k/v projections' biases are dropped (Qwen2 has them).
    NoQkvBias,
    /// Attention and final-logit soft-capping (Gemma 2) are skipped.
    NoSoftcap,
    /// GELU with erf where the model uses the tanh approximation (`gelu_new`).
    GeluErf,
    /// Attention scaled by 1/sqrt(head_dim) where the config sets another scale (Gemma's
    /// `query_pre_attn_scalar`). Only loads where the two differ.
    AttentionScaleHeadDim,
}

impl Mutation {
    /// What a port with this bug does, for hints and the zoo scorecard.
    pub fn describe(&self) -> String {
        match self {
            Mutation::PerturbWeight { name, index, delta } => format!("weight `{name}`[{index}] off by {delta}"),
            Mutation::PoolLastToken => "CLS pooling takes the last token instead of token 0".into(),
            Mutation::NoSlidingWindow => "local-attention layers attend to every token (no sliding window)".into(),
            Mutation::GlobalRopeOnLocal => "the global RoPE theta is used on local-attention layers".into(),
            Mutation::GegluSwapped => "the gated MLP's fused input projection is split in the wrong order".into(),
            Mutation::NoFinalNorm => "the final norm is skipped".into(),
            Mutation::LayerNormEps(e) => format!("LayerNorm epsilon {e:e} instead of the config's"),
            Mutation::GeluTanh => "GELU uses the tanh approximation instead of erf".into(),
            Mutation::DropoutOn(p) => format!("dropout p={p} left on at inference"),
            Mutation::IgnoreAttentionMask => "the attention mask is ignored".into(),
            Mutation::RopeInterleaved => {
                "RoPE rotates interleaved pairs (2i, 2i+1) instead of halves (i, i+d/2)".into()
            }
            Mutation::GqaWrongRepeat => "grouped-query heads map to kv head h % kv_heads instead of h / group".into(),
            Mutation::KvCacheWrongPosition => "the KV cache is written one slot off".into(),
            Mutation::TransposedWeight(w) => format!("weight `{w}` is used transposed"),
            Mutation::NoAttentionScale => "attention scores are not scaled by 1/sqrt(head_dim)".into(),
            Mutation::NoResidual(which) => format!("the residual connection around each {which} block is missing"),
            Mutation::NoCausalMask => "the causal mask is missing: tokens attend to later tokens".into(),
            Mutation::WindowOffByOne => "the sliding window lets one key too many in (off by one)".into(),
            Mutation::NormWeightNotPlusOne => "RMSNorm multiplies by w instead of Gemma's (1 + w)".into(),
            Mutation::NoEmbedScale => "the embeddings are not scaled by sqrt(hidden_size)".into(),
            Mutation::RopeScalingIgnored => "the RoPE scaling of the config is not applied".into(),
            Mutation::PartialRotaryFull => "RoPE rotates the whole head instead of the partial rotary dims".into(),
            Mutation::NoQkvBias => "the q/k/v projection biases are dropped".into(),
            Mutation::NoSoftcap => "attention / final logit soft-capping is skipped".into(),
            Mutation::GeluErf => "GELU uses erf instead of the tanh approximation".into(),
            Mutation::AttentionScaleHeadDim => {
                "attention scores are scaled by 1/sqrt(head_dim) instead of the config's scale \
                 (query_pre_attn_scalar^-0.5)"
                    .into()
            }
        }
    }

    /// The variants diagnosis re-runs the reference with, for a failure first seen at `tap`.
    pub fn probes(tap: &str) -> Vec<Mutation> {
        let mut v = vec![
            Mutation::PoolLastToken,
            Mutation::NoSlidingWindow,
            Mutation::GlobalRopeOnLocal,
            Mutation::GegluSwapped,
            Mutation::NoFinalNorm,
            Mutation::LayerNormEps(1e-5),
            Mutation::LayerNormEps(1e-6),
            Mutation::GeluTanh,
            Mutation::IgnoreAttentionMask,
            Mutation::RopeInterleaved,
            Mutation::GqaWrongRepeat,
            Mutation::KvCacheWrongPosition,
            Mutation::NoAttentionScale,
            Mutation::NoResidual("attention"),
            Mutation::NoResidual("mlp"),
            Mutation::NoCausalMask,
            Mutation::WindowOffByOne,
            Mutation::NormWeightNotPlusOne,
            Mutation::NoEmbedScale,
            Mutation::RopeScalingIgnored,
            Mutation::PartialRotaryFull,
            Mutation::NoQkvBias,
            Mutation::NoSoftcap,
            Mutation::GeluErf,
            Mutation::AttentionScaleHeadDim,
        ];
        let module = tap.split('@').next().unwrap_or(tap);
        v.push(Mutation::TransposedWeight(format!("{module}.weight")));
        v
    }
}

pub struct ReferenceEngine {
    name: String,
    mutation: Option<Mutation>,
}

impl ReferenceEngine {
    pub fn new() -> Self {
        ReferenceEngine { name: "reference".into(), mutation: None }
    }
    /// A reference engine with a bug injected, registered under `name`.
    pub fn mutant(name: impl Into<String>, m: Mutation) -> Self {
        ReferenceEngine { name: name.into(), mutation: Some(m) }
    }
}

impl Default for ReferenceEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine for ReferenceEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn implements(&self, class: &str) -> bool {
        classes().contains(&class)
    }
    fn supports(&self, model: &ModelSpec) -> std::result::Result<(), String> {
        check(&model.class, &model.config)
    }
    fn default_enabled(&self) -> bool {
        self.mutation.is_none()
    }
    fn load(&self, spec: &ModelSpec) -> Result<Box<dyn LoadedModel>> {
        let mut w = Weights::load(&spec.dir)?;
        if let Some(Mutation::PerturbWeight { name, index, delta }) = &self.mutation {
            w.perturb(name, *index, *delta)?;
        }
        if let Some(Mutation::TransposedWeight(name)) = &self.mutation {
            w.transpose(name)?;
        }
        let m = self.mutation.clone();
        if m == Some(Mutation::AttentionScaleHeadDim) && !dims::decoder::CLASSES.contains(&spec.class.as_str()) {
            return Err(Error::engine("the attention scale is 1/sqrt(head_dim) already: nothing to mutate"));
        }
        match spec.class.as_str() {
            c if dims::decoder::CLASSES.contains(&c) => Ok(Box::new(decoder::Decoder::new(spec, w, m)?)),
            bert::CLASS => Ok(Box::new(bert::Bert::new(spec, w, m)?)),
            distilbert::CLASS => Ok(Box::new(distilbert::DistilBert::new(spec, w, m)?)),
            modernbert::CLASS => Ok(Box::new(modernbert::ModernBert::new(spec, w, m)?)),
            dims::gpt2::CLASS => Ok(Box::new(gpt2::Gpt2::new(spec, w, m)?)),
            other => Err(Error::engine(format!("the reference engine does not implement `{other}`"))),
        }
    }
}

/// Named weights of one checkpoint, converted to f32 on load.
pub struct Weights {
    map: HashMap<String, CTensor>,
    file: std::path::PathBuf,
}

impl Weights {
    /// Load `model.safetensors` from a checkpoint dir; pickled checkpoints are refused.
    pub fn load(dir: &Path) -> Result<Weights> {
        let file = dir.join("model.safetensors");
        if !file.exists() {
            let pickle = harness_api::model::PICKLES.iter().find(|n| dir.join(n).exists());
            return Err(match pickle {
                Some(p) => Error::input(format!(
                    "only a pickled checkpoint `{p}` is present; pickles are refused (they can run code)"
                ))
                .file(dir.join(p))
                .hint("convert it to model.safetensors (safetensors.torch.save_file)"),
                None => Error::golden("model weights are missing")
                    .file(&file)
                    .hint("generate the model with `tools/.venv/bin/python tools/regen_goldens.py`"),
            });
        }
        let raw = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| {
            Error::input(format!("cannot read safetensors: {}", harness_api::error::lowercase_first(&e.to_string())))
                .file(&file)
        })?;
        let mut map = HashMap::with_capacity(raw.len());
        for (k, v) in raw {
            map.insert(k, ops::to_f32(v)?);
        }
        Ok(Weights { map, file })
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A weight that must exist with this shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<CTensor> {
        let t = self.map.get(name).ok_or_else(|| {
            Error::input(format!("weight `{name}` is missing"))
                .file(&self.file)
                .hint("the checkpoint does not match the model config")
        })?;
        if t.dims() != shape {
            return Err(Error::input(format!(
                "weight `{name}` has shape {:?}, the config implies {shape:?}",
                t.dims()
            ))
            .file(&self.file));
        }
        Ok(t.clone())
    }

    pub fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<CTensor>> {
        if self.has(name) { self.get(name, shape).map(Some) } else { Ok(None) }
    }

    fn perturb(&mut self, name: &str, index: usize, delta: f32) -> Result<()> {
        let t = self.map.get(name).ok_or_else(|| Error::engine(format!("no weight `{name}` to perturb")))?;
        let shape = t.dims().to_vec();
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        let slot = v.get_mut(index).ok_or_else(|| Error::engine(format!("index {index} out of range for `{name}`")))?;
        *slot += delta;
        self.map.insert(name.to_string(), CTensor::from_vec(v, shape, &Device::Cpu)?);
        Ok(())
    }

    /// Replace a square matrix by its transpose (a weight read in the wrong layout).
    fn transpose(&mut self, name: &str) -> Result<()> {
        let t = self.map.get(name).ok_or_else(|| Error::engine(format!("no weight `{name}` to transpose")))?;
        match t.dims() {
            [r, c] if r == c => {}
            dims => return Err(Error::engine(format!("weight `{name}` of shape {dims:?} is not a square matrix"))),
        }
        let tt = t.t()?.contiguous()?;
        self.map.insert(name.to_string(), tt);
        Ok(())
    }
}

/// Collects the tensors of the taps a run asked for.
pub struct Recorder {
    want: Option<BTreeSet<String>>,
    out: Vec<(String, CTensor)>,
}

impl Recorder {
    /// Record `taps`; an empty list records everything.
    pub fn new(taps: &[&str]) -> Self {
        let want = (!taps.is_empty()).then(|| taps.iter().map(|s| s.to_string()).collect());
        Recorder { want, out: Vec::new() }
    }
    pub fn wants(&self, name: &str) -> bool {
        self.want.as_ref().is_none_or(|w| w.contains(name))
    }
    pub fn tap(&mut self, name: &str, t: &CTensor) {
        if self.wants(name) {
            self.out.push((name.to_string(), t.clone()));
        }
    }
    pub fn finish(self) -> Result<Outputs> {
        let mut out = Outputs::new();
        for (name, t) in self.out {
            let shape = t.dims().to_vec();
            let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            out.insert(name, Tensor::new(shape, data)?);
        }
        Ok(out)
    }
}

/// Shared input handling: ids as a `[b, s]` u32 tensor.
pub fn input_ids(inputs: &Inputs) -> Result<CTensor> {
    let ids = &inputs.input_ids;
    ops::ids_tensor(&ids.data, ids.batch, ids.seq, &Device::Cpu)
}
