//! The Llama-like decoder of `LlamaForCausalLM` and `Qwen3ForCausalLM`, following transformers'
//! modeling_llama.py and modeling_qwen3.py (eager attention, float32). Qwen3 differs only by the
//! per-head `q_norm` / `k_norm` before RoPE and its `head_dim` default (see `LlamaDims`).
//!
//! `run` is the full forward; `decode` feeds the prompt, then one token per step through a
//! [`KvCache`], positions continuing from the prompt length.

use candle_core::{Device, Tensor as CTensor};

use super::kv_cache::KvCache;
use super::ops::{
    apply_rope, apply_rope_interleaved, attention, attention_bias, ids_tensor, linear, repeat_kv, repeat_kv_tiled,
    rms_norm, rope_tables,
};
use super::{Mutation, Recorder, Weights};
use crate::case::{IdMatrix, Inputs, ModelSpec};
use crate::engine::{Block, LoadedModel, Outputs};
use crate::error::{Error, Result};
use crate::family::llama::LlamaDims;
use crate::tensor::Tensor;

pub const CLASS: &str = "LlamaForCausalLM";
pub const QWEN3_CLASS: &str = "Qwen3ForCausalLM";

struct Layer {
    in_norm: CTensor,
    q: (CTensor, Option<CTensor>),
    k: (CTensor, Option<CTensor>),
    v: (CTensor, Option<CTensor>),
    o: (CTensor, Option<CTensor>),
    /// Qwen3's q_norm and k_norm weights (`[head_dim]`).
    qk_norm: Option<(CTensor, CTensor)>,
    post_norm: CTensor,
    gate: (CTensor, Option<CTensor>),
    up: (CTensor, Option<CTensor>),
    down: (CTensor, Option<CTensor>),
}

pub struct Llama {
    d: LlamaDims,
    embed: CTensor,
    layers: Vec<Layer>,
    norm: CTensor,
    lm_head: CTensor,
    mutation: Option<Mutation>,
}

fn lin(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<(CTensor, Option<CTensor>)> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
    Ok((weight, b))
}

impl Llama {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = match spec.family.class {
            QWEN3_CLASS => LlamaDims::qwen3(&spec.config)?,
            _ => LlamaDims::from_config(&spec.config)?,
        };
        let (h, hd) = (d.hidden, d.head_dim);
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("model.layers.{i}");
            let qk_norm = if d.qk_norm {
                Some((
                    w.get(&format!("{p}.self_attn.q_norm.weight"), &[hd])?,
                    w.get(&format!("{p}.self_attn.k_norm.weight"), &[hd])?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                in_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: lin(&w, &format!("{p}.self_attn.q_proj"), d.heads * hd, h, d.attention_bias)?,
                k: lin(&w, &format!("{p}.self_attn.k_proj"), d.kv_heads * hd, h, d.attention_bias)?,
                v: lin(&w, &format!("{p}.self_attn.v_proj"), d.kv_heads * hd, h, d.attention_bias)?,
                o: lin(&w, &format!("{p}.self_attn.o_proj"), h, d.heads * hd, d.attention_bias)?,
                qk_norm,
                post_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: lin(&w, &format!("{p}.mlp.gate_proj"), d.intermediate, h, d.mlp_bias)?,
                up: lin(&w, &format!("{p}.mlp.up_proj"), d.intermediate, h, d.mlp_bias)?,
                down: lin(&w, &format!("{p}.mlp.down_proj"), h, d.intermediate, d.mlp_bias)?,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[d.vocab, h])?;
        let lm_head = match w.opt("lm_head.weight", &[d.vocab, h])? {
            Some(t) if !d.tie_embeddings => t,
            _ => embed.clone(),
        };
        Ok(Llama { embed, layers, norm: w.get("model.norm.weight", &[h])?, lm_head, d, mutation })
    }

    fn mutated(&self, m: &Mutation) -> bool {
        self.mutation.as_ref() == Some(m)
    }

    /// One forward over `ids` (`[b, s]`). Without a cache the positions are `0..s`; with one they
    /// continue from the tokens it holds, and the new keys/values are appended to it. `mask`
    /// marks padding among the first `mask.seq` keys (1 = real token).
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

        // With `start = (i, x)`, only layer i runs, on the given input (error-added probes).
        let only = start.as_ref().map(|(i, _)| *i);
        let mut x = match start {
            Some((_, x)) => x,
            None => {
                let x = self.embed.embedding(&ids_tensor(&ids.data, b, s, &dev)?.flatten_all()?)?;
                let x = x.reshape((b, s, d.hidden))?;
                rec.tap("model.embed_tokens", &x);
                x
            }
        };

        let pos: Vec<usize> = (past..total).collect();
        let (cos, sin) = rope_tables(&pos, d.head_dim, d.rope_theta, &dev)?;
        rec.tap("model.rotary_emb", &cos.unsqueeze(0)?);

        // Causal over all `total` keys, and keys that are padding are never attended to.
        let ignore_mask = self.mutated(&Mutation::IgnoreAttentionMask);
        let real = |bi: usize, j: usize| match mask {
            Some(m) if j < m.seq && !ignore_mask => m.data[bi * m.seq + j] != 0,
            _ => true,
        };
        // Mutation: NoCausalMask, later tokens are visible too.
        let causal = !self.mutated(&Mutation::NoCausalMask);
        let bias = attention_bias(|bi, i, j| (!causal || j <= past + i) && real(bi, j), b, s, total, &dev)?;
        let scale = if self.mutated(&Mutation::NoAttentionScale) { 1.0 } else { 1.0 / (d.head_dim as f64).sqrt() };
        let n_rep = d.heads / d.kv_heads;
        // Decode steps only (the prompt is written correctly): the new token lands one slot late.
        let cache_skew = usize::from(past > 0 && self.mutated(&Mutation::KvCacheWrongPosition));

        for (i, l) in self.layers.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let p = format!("model.layers.{i}");
            let h = rms_norm(&x, &l.in_norm, d.rms_eps)?;
            rec.tap(&format!("{p}.input_layernorm"), &h);

            let q = linear(&h, &l.q.0, l.q.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.q_proj"), &q);
            let mut q = q.reshape((b, s, d.heads, d.head_dim))?;
            if let Some((qn, _)) = &l.qk_norm {
                q = rms_norm(&q, qn, d.rms_eps)?;
                rec.tap(&format!("{p}.self_attn.q_norm"), &q);
            }
            let k = linear(&h, &l.k.0, l.k.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.k_proj"), &k);
            let mut k = k.reshape((b, s, d.kv_heads, d.head_dim))?;
            if let Some((_, kn)) = &l.qk_norm {
                k = rms_norm(&k, kn, d.rms_eps)?;
                rec.tap(&format!("{p}.self_attn.k_norm"), &k);
            }
            let v = linear(&h, &l.v.0, l.v.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.v_proj"), &v);

            let q = q.transpose(1, 2)?;
            let k = k.transpose(1, 2)?;
            let v = v.reshape((b, s, d.kv_heads, d.head_dim))?.transpose(1, 2)?;
            let rope = if self.mutated(&Mutation::RopeInterleaved) { apply_rope_interleaved } else { apply_rope };
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.write_read(i, &k, &v, past + cache_skew)?,
                None => (k, v),
            };
            let repeat = if self.mutated(&Mutation::GqaWrongRepeat) { repeat_kv_tiled } else { repeat_kv };
            let a = attention(&q, &repeat(&k, n_rep)?, &repeat(&v, n_rep)?, scale, &bias)?;
            let a = a.transpose(1, 2)?.reshape((b, s, d.heads * d.head_dim))?;
            let a = linear(&a, &l.o.0, l.o.1.as_ref())?;
            rec.tap(&format!("{p}.self_attn.o_proj"), &a);
            rec.tap(&format!("{p}.self_attn"), &a);
            x = if self.mutated(&Mutation::NoResidual("attention")) { a } else { (x + a)? };

            let h = rms_norm(&x, &l.post_norm, d.rms_eps)?;
            rec.tap(&format!("{p}.post_attention_layernorm"), &h);
            let g = linear(&h, &l.gate.0, l.gate.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.gate_proj"), &g);
            let g = g.silu()?;
            rec.tap(&format!("{p}.mlp.act_fn"), &g);
            let u = linear(&h, &l.up.0, l.up.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.up_proj"), &u);
            let m = linear(&(g * u)?, &l.down.0, l.down.1.as_ref())?;
            rec.tap(&format!("{p}.mlp.down_proj"), &m);
            rec.tap(&format!("{p}.mlp"), &m);
            x = if self.mutated(&Mutation::NoResidual("mlp")) { m } else { (x + m)? };
            rec.tap(&p, &x);
        }
        if only.is_some() {
            return Ok(());
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let x = if self.mutated(&Mutation::NoFinalNorm) { x } else { rms_norm(&x, &self.norm, d.rms_eps)? };
        rec.tap("model.norm", &x);
        rec.tap("last_hidden_state", &x);
        let logits = linear(&x, &self.lm_head, None)?;
        rec.tap("lm_head", &logits);
        rec.tap("logits", &logits);
        Ok(())
    }
}

impl LoadedModel for Llama {
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
