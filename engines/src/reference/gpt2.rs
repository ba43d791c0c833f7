//! `GPT2LMHeadModel`, following transformers' modeling_gpt2.py (eager attention, float32):
//! token + learned position embeddings, pre-LayerNorm blocks with a fused `c_attn` (Conv1D:
//! `x @ W + b`, W stored `[in, out]`), `gelu_new` MLP, final LayerNorm, head tied to `wte`.

use candle_core::{D, Device, Tensor as CTensor};

use super::dims::gpt2::Gpt2Dims;
use super::kv_cache::KvCache;
use super::ops::{attention_bias, ids_tensor, layer_norm, softmax_last};
use super::{Mutation, Recorder, Weights};
use harness_api::engine::{Block, LoadedModel, Outputs};
use harness_api::error::{Error, Result};
use harness_api::inputs::{IdMatrix, Inputs};
use harness_api::model::ModelSpec;
use harness_api::tensor::Tensor;

type Conv = (CTensor, CTensor);

struct Layer {
    ln_1: (CTensor, CTensor),
    c_attn: Conv,
    c_proj: Conv,
    ln_2: (CTensor, CTensor),
    c_fc: Conv,
    mlp_proj: Conv,
}

pub struct Gpt2 {
    d: Gpt2Dims,
    wte: CTensor,
    wpe: CTensor,
    layers: Vec<Layer>,
    ln_f: (CTensor, CTensor),
    lm_head: CTensor,
    mutation: Option<Mutation>,
}

/// GPT-2's Conv1D: `x @ W + b`, W `[in, out]`.
fn conv1d(x: &CTensor, c: &Conv) -> Result<CTensor> {
    Ok(x.broadcast_matmul(&c.0)?.broadcast_add(&c.1)?)
}

impl Gpt2 {
    pub fn new(spec: &ModelSpec, w: Weights, mutation: Option<Mutation>) -> Result<Self> {
        let d = Gpt2Dims::from_config(&spec.config)?;
        let h = d.hidden;
        let conv = |name: &str, inp: usize, out: usize| -> Result<Conv> {
            Ok((w.get(&format!("{name}.weight"), &[inp, out])?, w.get(&format!("{name}.bias"), &[out])?))
        };
        let ln = |name: &str| -> Result<(CTensor, CTensor)> {
            Ok((w.get(&format!("{name}.weight"), &[h])?, w.get(&format!("{name}.bias"), &[h])?))
        };
        let mut layers = Vec::with_capacity(d.layers);
        for i in 0..d.layers {
            let p = format!("transformer.h.{i}");
            layers.push(Layer {
                ln_1: ln(&format!("{p}.ln_1"))?,
                c_attn: conv(&format!("{p}.attn.c_attn"), h, 3 * h)?,
                c_proj: conv(&format!("{p}.attn.c_proj"), h, h)?,
                ln_2: ln(&format!("{p}.ln_2"))?,
                c_fc: conv(&format!("{p}.mlp.c_fc"), h, d.inner)?,
                mlp_proj: conv(&format!("{p}.mlp.c_proj"), d.inner, h)?,
            });
        }
        let wte = w.get("transformer.wte.weight", &[d.vocab, h])?;
        let lm_head = w.opt("lm_head.weight", &[d.vocab, h])?.unwrap_or_else(|| wte.clone());
        Ok(Gpt2 {
            wpe: w.get("transformer.wpe.weight", &[d.positions, h])?,
            ln_f: ln("transformer.ln_f")?,
            wte,
            layers,
            lm_head,
            d,
            mutation,
        })
    }

    fn mutated(&self, m: &Mutation) -> bool {
        self.mutation.as_ref() == Some(m)
    }

    fn ln(&self, x: &CTensor, p: &(CTensor, CTensor)) -> Result<CTensor> {
        let eps = match &self.mutation {
            Some(Mutation::LayerNormEps(e)) => *e,
            _ => self.d.eps,
        };
        layer_norm(x, &p.0, Some(&p.1), eps)
    }

    fn forward(
        &self,
        inputs: &Inputs,
        ids: &IdMatrix,
        mut cache: Option<&mut KvCache>,
        start: Option<(usize, CTensor)>,
        rec: &mut Recorder,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let d = &self.d;
        let (b, s) = (ids.batch, ids.seq);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = past + s;
        if total > d.positions {
            return Err(Error::engine(format!("{total} positions, GPT-2 has {}", d.positions)));
        }
        let hd = d.hidden / d.heads;
        let only = start.as_ref().map(|(i, _)| *i);
        let mut x = match start {
            Some((_, x)) => x,
            None => {
                let tok = self
                    .wte
                    .embedding(&ids_tensor(&ids.data, b, s, &dev)?.flatten_all()?)?
                    .reshape((b, s, d.hidden))?;
                rec.tap("transformer.wte", &tok);
                let pos: Vec<u32> = (past as u32..total as u32).collect();
                let pe = self.wpe.embedding(&CTensor::from_vec(pos, s, &dev)?)?.unsqueeze(0)?;
                rec.tap("transformer.wpe", &pe);
                let mut x = tok.broadcast_add(&pe)?;
                if past == 0
                    && let Some(t) = &inputs.token_type_ids
                {
                    let te = self.wte.embedding(&ids_tensor(&t.data, b, s, &dev)?.flatten_all()?)?;
                    x = (x + te.reshape((b, s, d.hidden))?)?;
                }
                rec.tap("transformer.drop", &x);
                x
            }
        };
        let mask = inputs.attention_mask.as_ref();
        let ignore_mask = self.mutated(&Mutation::IgnoreAttentionMask);
        let causal = !self.mutated(&Mutation::NoCausalMask);
        let real = |bi: usize, j: usize| match mask {
            Some(m) if j < m.seq && !ignore_mask => m.data[bi * m.seq + j] != 0,
            _ => true,
        };
        let bias = attention_bias(|bi, i, j| (!causal || j <= past + i) && real(bi, j), b, s, total, &dev)?;
        let scale = if self.mutated(&Mutation::NoAttentionScale) { 1.0 } else { (hd as f64).powf(-0.5) };
        let cache_skew = usize::from(past > 0 && self.mutated(&Mutation::KvCacheWrongPosition));
        for (i, l) in self.layers.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let p = format!("transformer.h.{i}");
            let h = self.ln(&x, &l.ln_1)?;
            rec.tap(&format!("{p}.ln_1"), &h);
            let qkv = conv1d(&h, &l.c_attn)?;
            rec.tap(&format!("{p}.attn.c_attn"), &qkv);
            let heads = |t: CTensor| -> Result<CTensor> { Ok(t.reshape((b, s, d.heads, hd))?.transpose(1, 2)?) };
            let q = heads(qkv.narrow(D::Minus1, 0, d.hidden)?)?;
            let k = heads(qkv.narrow(D::Minus1, d.hidden, d.hidden)?)?;
            let v = heads(qkv.narrow(D::Minus1, 2 * d.hidden, d.hidden)?)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.write_read(i, &k, &v, past + cache_skew)?,
                None => (k, v),
            };
            let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
            let probs = softmax_last(&scores.broadcast_add(&bias)?)?;
            let a = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, s, d.hidden))?;
            let a = conv1d(&a, &l.c_proj)?;
            rec.tap(&format!("{p}.attn.c_proj"), &a);
            rec.tap(&format!("{p}.attn.resid_dropout"), &a);
            rec.tap(&format!("{p}.attn"), &a);
            x = if self.mutated(&Mutation::NoResidual("attention")) { a } else { (x + a)? };
            let h = self.ln(&x, &l.ln_2)?;
            rec.tap(&format!("{p}.ln_2"), &h);
            let f = conv1d(&h, &l.c_fc)?;
            rec.tap(&format!("{p}.mlp.c_fc"), &f);
            let f = if self.mutated(&Mutation::GeluErf) { f.gelu_erf()? } else { f.gelu()? };
            rec.tap(&format!("{p}.mlp.act"), &f);
            let m = conv1d(&f, &l.mlp_proj)?;
            rec.tap(&format!("{p}.mlp.c_proj"), &m);
            rec.tap(&format!("{p}.mlp.dropout"), &m);
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
        let x = if self.mutated(&Mutation::NoFinalNorm) { x } else { self.ln(&x, &self.ln_f)? };
        rec.tap("transformer.ln_f", &x);
        rec.tap("transformer", &x);
        rec.tap("last_hidden_state", &x);
        let logits = x.broadcast_matmul(&self.lm_head.t()?)?;
        rec.tap("lm_head", &logits);
        rec.tap("logits", &logits);
        Ok(())
    }
}

impl LoadedModel for Gpt2 {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> Result<Outputs> {
        let mut rec = Recorder::new(taps);
        self.forward(inputs, &inputs.input_ids, None, None, &mut rec)?;
        rec.finish()
    }

    fn blocks(&self) -> Vec<Block> {
        (0..self.layers.len())
            .map(|i| Block {
                path: format!("transformer.h.{i}"),
                input: if i == 0 { "transformer.drop".into() } else { format!("transformer.h.{}", i - 1) },
            })
            .collect()
    }

    fn run_block(&self, inputs: &Inputs, block: &str, input: &Tensor, taps: &[&str]) -> Result<Outputs> {
        let i = block
            .strip_prefix("transformer.h.")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < self.layers.len())
            .ok_or_else(|| Error::engine(format!("no block `{block}`")))?;
        let x = CTensor::from_slice(input.data(), input.shape(), &Device::Cpu)?;
        let mut rec = Recorder::new(taps);
        self.forward(inputs, &inputs.input_ids, None, Some((i, x)), &mut rec)?;
        rec.finish()
    }

    fn decode(&self, prompt: &Inputs, tokens: &IdMatrix, taps: &[&str]) -> Result<Vec<Outputs>> {
        let b = prompt.input_ids.batch;
        let capacity = prompt.input_ids.seq + tokens.seq + 1;
        let mut cache = KvCache::new(self.layers.len(), b, self.d.heads, capacity, self.d.hidden / self.d.heads)?;
        let mut steps = Vec::with_capacity(tokens.seq + 1);
        let mut rec = Recorder::new(taps);
        self.forward(prompt, &prompt.input_ids, Some(&mut cache), None, &mut rec)?;
        steps.push(rec.finish()?);
        for k in 0..tokens.seq {
            let ids = IdMatrix { batch: b, seq: 1, data: (0..b).map(|r| tokens.row(r)[k]).collect() };
            let mut rec = Recorder::new(taps);
            self.forward(prompt, &ids, Some(&mut cache), None, &mut rec)?;
            steps.push(rec.finish()?);
        }
        Ok(steps)
    }
}
