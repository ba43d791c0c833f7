//! The decoder-only LMs of the Llama lineage (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3,
//! Phi-3), one forward parameterized by [`DecoderDims`], following each class's modeling file in
//! transformers 5 (eager attention, float32). Tap names are the HF module paths of the class.
//!
//! `run` is the full forward; `decode` feeds the prompt, then one token per step through a
//! [`KvCache`], positions continuing from the prompt length.

use candle_core::{D, Device, Tensor as CTensor};

use super::dims::decoder::{Act, DecoderDims, QkNorm};
use super::kv_cache::KvCache;
use super::ops::{
    apply_rope, apply_rope_interleaved, apply_rope_partial, attention_bias, ids_tensor, inv_freq, linear, repeat_kv,
    repeat_kv_tiled, rms_norm, rms_norm_plus_one, rope_tables_from, softcap, softmax_last,
};
use super::{Mutation, Recorder, Weights};
use harness_api::engine::{Block, LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::{IdMatrix, Inputs};
use harness_api::model::ModelSpec;
use harness_api::tensor::Tensor;

type Lin = (CTensor, Option<CTensor>);

struct Layer {
    in_norm: CTensor,
    /// q, k, v (split from Phi-3's fused `qkv_proj` at its rows, which is what HF does).
    qkv: QkvWeights,
    o: Lin,
    qk_norm: Option<(CTensor, CTensor)>,
    /// Llama's `post_attention_layernorm` (the MLP's input norm); Gemma's post-attention norm.
    post_norm: CTensor,
    /// Gemma: the MLP's input and output norms.
    ff_norms: Option<(CTensor, CTensor)>,
    mlp: MlpWeights,
}

enum QkvWeights {
    Split { q: Lin, k: Lin, v: Lin },
    Fused(Lin),
}

enum MlpWeights {
    Split { gate: Lin, up: Lin, down: Lin },
    Fused { gate_up: Lin, down: Lin },
}

pub struct Decoder {
    d: DecoderDims,
    embed: CTensor,
    layers: Vec<Layer>,
    norm: CTensor,
    lm_head: CTensor,
    mutation: Option<Mutation>,
}

fn lin(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Lin> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
    Ok((weight, b))
}

impl Decoder {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = DecoderDims::from_config(&spec.class, &spec.config)?;
        if mutation == Some(Mutation::AttentionScaleHeadDim) && d.attn_scale == (d.head_dim as f64).powf(-0.5) {
            return Err(Error::engine("the attention scale is 1/sqrt(head_dim) already: nothing to mutate"));
        }
        let (h, hd) = (d.hidden, d.head_dim);
        let (qo, kvo) = (d.heads * hd, d.kv_heads * hd);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("model.layers.{i}");
            let qk_norm = match d.qk_norm {
                Some(_) => Some((
                    w.get(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                    w.get(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                )),
                None => None,
            };
            let qkv = if d.fused {
                QkvWeights::Fused(lin(&w, &format!("{p}.self_attn.qkv_proj"), qo + 2 * kvo, h, d.qkv_bias)?)
            } else {
                QkvWeights::Split {
                    q: lin(&w, &format!("{p}.self_attn.q_proj"), qo, h, d.qkv_bias)?,
                    k: lin(&w, &format!("{p}.self_attn.k_proj"), kvo, h, d.qkv_bias)?,
                    v: lin(&w, &format!("{p}.self_attn.v_proj"), kvo, h, d.qkv_bias)?,
                }
            };
            let mlp = if d.fused {
                MlpWeights::Fused {
                    gate_up: lin(&w, &format!("{p}.mlp.gate_up_proj"), 2 * d.intermediate, h, d.mlp_bias)?,
                    down: lin(&w, &format!("{p}.mlp.down_proj"), h, d.intermediate, d.mlp_bias)?,
                }
            } else {
                MlpWeights::Split {
                    gate: lin(&w, &format!("{p}.mlp.gate_proj"), d.intermediate, h, d.mlp_bias)?,
                    up: lin(&w, &format!("{p}.mlp.up_proj"), d.intermediate, h, d.mlp_bias)?,
                    down: lin(&w, &format!("{p}.mlp.down_proj"), h, d.intermediate, d.mlp_bias)?,
                }
            };
            let ff_norms = if d.sandwich_norms {
                Some((
                    w.get(&format!("{p}.pre_feedforward_layernorm.weight"), &[h])?,
                    w.get(&format!("{p}.post_feedforward_layernorm.weight"), &[h])?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                in_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv,
                o: lin(&w, &format!("{p}.self_attn.o_proj"), h, qo, d.o_bias)?,
                qk_norm,
                post_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                ff_norms,
                mlp,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[d.vocab, h])?;
        let lm_head = match w.opt("lm_head.weight", &[d.vocab, h])? {
            Some(t) if !d.tie_embeddings => t,
            _ => embed.clone(),
        };
        Ok(Decoder { embed, layers, norm: w.get("model.norm.weight", &[h])?, lm_head, d, mutation })
    }

    fn mutated(&self, m: &Mutation) -> bool {
        self.mutation.as_ref() == Some(m)
    }

    fn norm(&self, x: &CTensor, w: &CTensor) -> Result<CTensor> {
        // Mutation: NormWeightNotPlusOne, Gemma's weights read as Llama's.
        if self.d.norm_plus_one && !self.mutated(&Mutation::NormWeightNotPlusOne) {
            rms_norm_plus_one(x, w, self.d.rms_eps)
        } else {
            rms_norm(x, w, self.d.rms_eps)
        }
    }

    fn act(&self, x: &CTensor) -> Result<CTensor> {
        Ok(match self.d.act {
            Act::Silu => x.silu()?,
            Act::GeluTanh => x.gelu()?,
            Act::Gelu => x.gelu_erf()?,
        })
    }

    /// One forward over `ids` (`[b, s]`). Without a cache the positions are `0..s`; with one they
    /// continue from the tokens it holds, and the new keys/values are appended to it. `mask`
    /// marks padding among the first `mask.seq` keys (1 = real token). With `start = (i, x)`,
    /// only layer i runs, on the given input (the error a block adds by itself).
    fn forward(
        &self,
        ids: &IdMatrix,
        mask: Option<&IdMatrix>,
        mut cache: Option<&mut KvCache>,
        start: Option<(usize, CTensor)>,
        rec: &mut Recorder,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let d = &self.d;
        let (b, s) = (ids.batch, ids.seq);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = past + s;

        let only = start.as_ref().map(|(i, _)| *i);
        let mut x = match start {
            Some((_, x)) => x,
            None => {
                let x = self.embed.embedding(&ids_tensor(&ids.data, b, s, &dev)?.flatten_all()?)?;
                let x = x.reshape((b, s, d.hidden))?;
                // Gemma's embedding module scales by sqrt(hidden) itself (in float32).
                let x = match d.embed_scale {
                    Some(scale) if !self.mutated(&Mutation::NoEmbedScale) => (x * scale as f64)?,
                    _ => x,
                };
                rec.tap("model.embed_tokens", &x);
                x
            }
        };

        // One table per distinct RoPE (Gemma 3: one per attention type).
        let pos: Vec<usize> = (past..total).collect();
        let mut tables: Vec<(super::dims::decoder::Rope, CTensor, CTensor)> = Vec::new();
        for r in &d.rope {
            if tables.iter().any(|(t, ..)| t == r) {
                continue;
            }
            // Mutation: RopeScalingIgnored, the unscaled base frequencies; PartialRotaryFull,
            // every dim of the head rotates.
            let mut eff = r.clone();
            if self.mutated(&Mutation::RopeScalingIgnored) {
                eff.scaling = super::dims::decoder::RopeScaling::Default;
            }
            if self.mutated(&Mutation::PartialRotaryFull) {
                eff.rotary_dim = d.head_dim;
            }
            let (cos, sin) = rope_tables_from(&pos, &inv_freq(&eff), &dev)?;
            tables.push((r.clone(), cos, sin));
        }
        if tables.len() == 1 {
            rec.tap("model.rotary_emb", &tables[0].1.unsqueeze(0)?);
        }

        let ignore_mask = self.mutated(&Mutation::IgnoreAttentionMask);
        let real = |bi: usize, j: usize| match mask {
            Some(m) if j < m.seq && !ignore_mask => m.data[bi * m.seq + j] != 0,
            _ => true,
        };
        // Mutation: NoCausalMask, later tokens are visible too.
        let causal = !self.mutated(&Mutation::NoCausalMask);
        let mut biases: Vec<(Option<usize>, CTensor)> = Vec::new();
        for w in &d.window {
            if biases.iter().any(|(x, _)| x == w) {
                continue;
            }
            // Mutation: NoSlidingWindow / WindowOffByOne, the window ignored or one key wider.
            let window = match w {
                Some(_) if self.mutated(&Mutation::NoSlidingWindow) => None,
                Some(n) if self.mutated(&Mutation::WindowOffByOne) => Some(n + 1),
                other => *other,
            };
            let allowed = |bi: usize, i: usize, j: usize| {
                let q = past + i;
                (!causal || j <= q) && window.is_none_or(|n| j + n > q) && real(bi, j)
            };
            biases.push((*w, attention_bias(allowed, b, s, total, &dev)?));
        }
        let scale = if self.mutated(&Mutation::NoAttentionScale) {
            1.0
        } else if self.mutated(&Mutation::AttentionScaleHeadDim) {
            (d.head_dim as f64).powf(-0.5)
        } else {
            d.attn_scale
        };
        let n_rep = d.heads / d.kv_heads;
        // Decode steps only (the prompt is written correctly): the new token lands one slot late.
        let cache_skew = usize::from(past > 0 && self.mutated(&Mutation::KvCacheWrongPosition));
        let (qo, kvo) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);

        for (i, l) in self.layers.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let p = format!("model.layers.{i}");
            let h = self.norm(&x, &l.in_norm)?;
            rec.tap(&format!("{p}.input_layernorm"), &h);

            // Mutation: NoQkvBias, the projections' biases dropped.
            let bias = |b: &Option<CTensor>| if self.mutated(&Mutation::NoQkvBias) { None } else { b.clone() };
            let (q, k, v) = match &l.qkv {
                QkvWeights::Fused((w, bb)) => {
                    let qkv = linear(&h, w, bias(bb).as_ref())?;
                    rec.tap(&format!("{p}.self_attn.qkv_proj"), &qkv);
                    (
                        qkv.narrow(D::Minus1, 0, qo)?,
                        qkv.narrow(D::Minus1, qo, kvo)?,
                        qkv.narrow(D::Minus1, qo + kvo, kvo)?,
                    )
                }
                QkvWeights::Split { q, k, v } => {
                    let qt = linear(&h, &q.0, bias(&q.1).as_ref())?;
                    rec.tap(&format!("{p}.self_attn.q_proj"), &qt);
                    let mut qt = qt.reshape((b, s, d.heads, d.head_dim))?;
                    if let (Some(QkNorm::BeforeTranspose), Some((qn, _))) = (d.qk_norm, &l.qk_norm) {
                        qt = self.norm(&qt, qn)?;
                        rec.tap(&format!("{p}.self_attn.q_norm"), &qt);
                    }
                    let kt = linear(&h, &k.0, bias(&k.1).as_ref())?;
                    rec.tap(&format!("{p}.self_attn.k_proj"), &kt);
                    let mut kt = kt.reshape((b, s, d.kv_heads, d.head_dim))?;
                    if let (Some(QkNorm::BeforeTranspose), Some((_, kn))) = (d.qk_norm, &l.qk_norm) {
                        kt = self.norm(&kt, kn)?;
                        rec.tap(&format!("{p}.self_attn.k_norm"), &kt);
                    }
                    let vt = linear(&h, &v.0, bias(&v.1).as_ref())?;
                    rec.tap(&format!("{p}.self_attn.v_proj"), &vt);
                    (qt, kt, vt)
                }
            };
            let mut q = q.reshape((b, s, d.heads, d.head_dim))?.transpose(1, 2)?;
            let mut k = k.reshape((b, s, d.kv_heads, d.head_dim))?.transpose(1, 2)?;
            let v = v.reshape((b, s, d.kv_heads, d.head_dim))?.transpose(1, 2)?;
            if let (Some(QkNorm::AfterTranspose), Some((qn, kn))) = (d.qk_norm, &l.qk_norm) {
                q = self.norm(&q.contiguous()?, qn)?;
                rec.tap(&format!("{p}.self_attn.q_norm"), &q);
                k = self.norm(&k.contiguous()?, kn)?;
                rec.tap(&format!("{p}.self_attn.k_norm"), &k);
            }
            let (_, cos, sin) = tables.iter().find(|(r, ..)| *r == d.rope[i]).expect("a table per rope");
            let rope = if self.mutated(&Mutation::RopeInterleaved) { apply_rope_interleaved } else { apply_rope };
            let q = apply_rope_partial(&q, cos, sin, rope)?;
            let k = apply_rope_partial(&k, cos, sin, rope)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.write_read(i, &k, &v, past + cache_skew)?,
                None => (k, v),
            };
            let repeat = if self.mutated(&Mutation::GqaWrongRepeat) { repeat_kv_tiled } else { repeat_kv };
            let (k, v) = (repeat(&k, n_rep)?, repeat(&v, n_rep)?);
            let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
            if let Some(cap) = d.attn_softcap
                && !self.mutated(&Mutation::NoSoftcap)
            {
                scores = softcap(&scores, cap)?;
            }
            let (_, bias_t) = biases.iter().find(|(w, _)| *w == d.window[i]).expect("a bias per window");
            let probs = softmax_last(&scores.broadcast_add(bias_t)?)?;
            let a = probs.matmul(&v.contiguous()?)?;
            let a = a.transpose(1, 2)?.reshape((b, s, d.heads * d.head_dim))?;
            let a = linear(&a, &l.o.0, l.o.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.o_proj"), &a);
            rec.tap(&format!("{p}.self_attn"), &a);
            rec.tap(&format!("{p}.resid_attn_dropout"), &a);
            let a = if d.sandwich_norms {
                let a = self.norm(&a, &l.post_norm)?;
                rec.tap(&format!("{p}.post_attention_layernorm"), &a);
                a
            } else {
                a
            };
            x = if self.mutated(&Mutation::NoResidual("attention")) { a } else { (x + a)? };

            let h = match &l.ff_norms {
                Some((pre, _)) => {
                    let h = self.norm(&x, pre)?;
                    rec.tap(&format!("{p}.pre_feedforward_layernorm"), &h);
                    h
                }
                None => {
                    let h = self.norm(&x, &l.post_norm)?;
                    rec.tap(&format!("{p}.post_attention_layernorm"), &h);
                    h
                }
            };
            let m = match &l.mlp {
                MlpWeights::Split { gate, up, down } => {
                    let g = linear(&h, &gate.0, gate.1.as_ref())?;
                    rec.tap(&format!("{p}.mlp.gate_proj"), &g);
                    let g = self.act(&g)?;
                    rec.tap(&format!("{p}.mlp.act_fn"), &g);
                    let u = linear(&h, &up.0, up.1.as_ref())?;
                    rec.tap(&format!("{p}.mlp.up_proj"), &u);
                    linear(&(g * u)?, &down.0, down.1.as_ref())?
                }
                MlpWeights::Fused { gate_up, down } => {
                    let gu = linear(&h, &gate_up.0, gate_up.1.as_ref())?;
                    rec.tap(&format!("{p}.mlp.gate_up_proj"), &gu);
                    let n = d.intermediate;
                    // Mutation: GegluSwapped, the fused halves split in the wrong order.
                    let (gi, ui) = if self.mutated(&Mutation::GegluSwapped) { (n, 0) } else { (0, n) };
                    let g = self.act(&gu.narrow(D::Minus1, gi, n)?)?;
                    rec.tap(&format!("{p}.mlp.activation_fn"), &g);
                    let u = gu.narrow(D::Minus1, ui, n)?;
                    linear(&(u * g)?, &down.0, down.1.as_ref())?
                }
            };
            rec.tap(&format!("{p}.mlp.down_proj"), &m);
            rec.tap(&format!("{p}.mlp"), &m);
            rec.tap(&format!("{p}.resid_mlp_dropout"), &m);
            let m = match &l.ff_norms {
                Some((_, post)) => {
                    let m = self.norm(&m, post)?;
                    rec.tap(&format!("{p}.post_feedforward_layernorm"), &m);
                    m
                }
                None => m,
            };
            x = if self.mutated(&Mutation::NoResidual("mlp")) { m } else { (x + m)? };
            rec.tap(&p, &x);
        }
        if only.is_some() {
            return Ok(());
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let x = if self.mutated(&Mutation::NoFinalNorm) { x } else { self.norm(&x, &self.norm)? };
        rec.tap("model.norm", &x);
        rec.tap("model", &x);
        rec.tap("last_hidden_state", &x);
        let logits = linear(&x, &self.lm_head, None)?;
        rec.tap("lm_head", &logits);
        let logits = match d.final_softcap {
            Some(cap) if !self.mutated(&Mutation::NoSoftcap) => softcap(&logits, cap)?,
            _ => logits,
        };
        rec.tap("logits", &logits);
        Ok(())
    }
}

impl LoadedModel for Decoder {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let mut rec = Recorder::new(taps);
        self.forward(&inputs.input_ids, inputs.attention_mask.as_ref(), None, None, &mut rec)?;
        rec.finish()
    }

    fn blocks(&self) -> Vec<Block> {
        (0..self.layers.len())
            .map(|i| Block {
                path: format!("model.layers.{i}"),
                input: if i == 0 { "model.embed_tokens".into() } else { format!("model.layers.{}", i - 1) },
            })
            .collect()
    }

    fn run_block(&self, inputs: &Inputs, block: &str, input: &Tensor, taps: &[&str]) -> Result<Outputs> {
        let i = block
            .strip_prefix("model.layers.")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < self.layers.len())
            .ok_or_else(|| Error::engine(format!("no block `{block}`")))?;
        let x = CTensor::from_slice(input.data(), input.shape(), &Device::Cpu)?;
        let mut rec = Recorder::new(taps);
        self.forward(&inputs.input_ids, inputs.attention_mask.as_ref(), None, Some((i, x)), &mut rec)?;
        rec.finish()
    }

    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        let b = prompt.input_ids.batch;
        if tokens.batch != b {
            return Err(Error::engine(format!("decode: {} rows of tokens for a batch of {b}", tokens.batch)));
        }
        // One spare slot so a cache written one slot late still fits (KvCacheWrongPosition).
        let capacity = prompt.input_ids.seq + tokens.seq + 1;
        let mut cache = KvCache::new(self.layers.len(), b, self.d.kv_heads, capacity, self.d.head_dim)?;
        let mut steps = Vec::with_capacity(tokens.seq + 1);
        let mut rec = Recorder::new(taps);
        self.forward(&prompt.input_ids, prompt.attention_mask.as_ref(), Some(&mut cache), None, &mut rec)?;
        steps.push(rec.finish()?);
        for k in 0..tokens.seq {
            let ids = IdMatrix { batch: b, seq: 1, data: (0..b).map(|r| tokens.row(r)[k]).collect() };
            let mut rec = Recorder::new(taps);
            self.forward(&ids, prompt.attention_mask.as_ref(), Some(&mut cache), None, &mut rec)?;
            steps.push(rec.finish()?);
        }
        Ok(steps)
    }
}
