//! Building blocks shared by the bidirectional encoder families (BERT, DistilBERT, ModernBERT),
//! and where the mutations that apply to all of them take effect.

use candle_core::{D, DType, Device, Tensor as CTensor};

use super::ops::{attention_bias, layer_norm, linear, softmax_last};
use super::{Mutation, Recorder, Weights};
use harness_api::error::Result;
use harness_api::inputs::Inputs;
use harness_api::sentence::{Pipeline, PoolMode, SENTENCE_EMBEDDING};

/// Sentence-embedding taps of encoder models, computed from `last_hidden_state` as
/// sentence-transformers does: CLS (first real token) and mean over real tokens, each optionally
/// L2-normalized. Shape `[batch, hidden]`.
pub const POOLED_TAPS: [&str; 4] = ["pooled.cls", "pooled.mean", "pooled.cls.normalized", "pooled.mean.normalized"];

/// The bug a run injects (if any), asked about by the encoder forwards. Every use is one small
/// branch marked `// Mutation:`.
#[derive(Debug, Clone, Default)]
pub struct Bugs(pub Option<Mutation>);

impl Bugs {
    pub fn is(&self, m: &Mutation) -> bool {
        self.0.as_ref() == Some(m)
    }

    pub fn ln_eps(&self, eps: f64) -> f64 {
        match self.0 {
            // Mutation: LayerNormEps, every LayerNorm uses the wrong epsilon.
            Some(Mutation::LayerNormEps(e)) => e,
            _ => eps,
        }
    }

    /// GELU with erf (HF `gelu`).
    pub fn gelu(&self, x: &CTensor) -> Result<CTensor> {
        // Mutation: GeluTanh, the tanh approximation instead of erf.
        Ok(if self.is(&Mutation::GeluTanh) { x.gelu()? } else { x.gelu_erf()? })
    }

    /// Identity at inference; inverted dropout with a fresh random mask under `DropoutOn(p)`.
    pub fn dropout(&self, x: &CTensor) -> Result<CTensor> {
        // Mutation: DropoutOn, dropout left on (a different mask every run).
        let Some(Mutation::DropoutOn(p)) = self.0 else { return Ok(x.clone()) };
        let keep = x.rand_like(0.0, 1.0)?.ge(p)?.to_dtype(DType::F32)?;
        Ok(((x * keep)? / (1.0 - p))?)
    }

    /// `head_dim ** -0.5`.
    pub fn attention_scale(&self, head_dim: usize) -> f64 {
        // Mutation: NoAttentionScale.
        if self.is(&Mutation::NoAttentionScale) { 1.0 } else { (head_dim as f64).powf(-0.5) }
    }

    /// `x + y`, the residual around sublayer `which` (`attention` or `mlp`).
    pub fn residual(&self, which: &str, x: &CTensor, y: &CTensor) -> Result<CTensor> {
        // Mutation: NoResidual, the sublayer output replaces the stream.
        if matches!(&self.0, Some(Mutation::NoResidual(w)) if *w == which) {
            return Ok(y.clone());
        }
        Ok((y + x)?)
    }
}

/// A torch.nn.Linear.
pub struct Lin {
    w: CTensor,
    b: Option<CTensor>,
}

impl Lin {
    pub fn load(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Lin> {
        let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
        Ok(Lin { w: weight, b })
    }
    pub fn fwd(&self, x: &CTensor) -> Result<CTensor> {
        linear(x, &self.w, self.b.as_ref())
    }
}

/// A torch.nn.LayerNorm over the last dimension.
pub struct Norm {
    w: CTensor,
    b: Option<CTensor>,
    eps: f64,
}

impl Norm {
    pub fn load(w: &Weights, name: &str, dim: usize, bias: bool, eps: f64) -> Result<Norm> {
        let b = if bias { Some(w.get(&format!("{name}.bias"), &[dim])?) } else { None };
        Ok(Norm { w: w.get(&format!("{name}.weight"), &[dim])?, b, eps })
    }
    pub fn fwd(&self, x: &CTensor, bugs: &Bugs) -> Result<CTensor> {
        layer_norm(x, &self.w, self.b.as_ref(), bugs.ln_eps(self.eps))
    }
}

/// `[b, s, heads * hd]` -> `[b, heads, s, hd]`.
pub fn split_heads(x: &CTensor, heads: usize, head_dim: usize) -> Result<CTensor> {
    let (b, s, _) = x.dims3()?;
    Ok(x.reshape((b, s, heads, head_dim))?.transpose(1, 2)?)
}

/// Additive bias `[b, 1, s, s]` of bidirectional attention: key j is visible to query i when it
/// is a real token and, on sliding-window layers, `|i - j| <= window` (HF's eager masks).
pub fn encoder_bias(inputs: &Inputs, window: Option<usize>, bugs: &Bugs) -> Result<CTensor> {
    let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
    // Mutation: IgnoreAttentionMask, padding keys are attended to.
    let ignore = bugs.is(&Mutation::IgnoreAttentionMask);
    attention_bias(
        |bi, i, j| (ignore || inputs.is_real(bi, j)) && window.is_none_or(|w| i.abs_diff(j) <= w),
        b,
        s,
        s,
        &Device::Cpu,
    )
}

/// Eager attention on `[b, heads, s, hd]` q, k, v: `softmax(q k^T * scale + bias) v`, dropout on
/// the probabilities (training only, so only under `DropoutOn`), heads merged back to
/// `[b, s, heads * hd]`.
pub fn attend(q: &CTensor, k: &CTensor, v: &CTensor, bias: &CTensor, bugs: &Bugs) -> Result<CTensor> {
    let (b, h, s, d) = q.dims4()?;
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * bugs.attention_scale(d))?;
    let p = bugs.dropout(&softmax_last(&scores.broadcast_add(bias)?)?)?;
    Ok(p.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, s, h * d))?)
}

/// Word (or position / token-type) embedding lookup of an id matrix: `[b, s, dim]`.
pub fn embed(table: &CTensor, ids: &[i64], b: usize, s: usize) -> Result<CTensor> {
    let idx: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let idx = CTensor::from_vec(idx, b * s, &Device::Cpu)?;
    Ok(table.embedding(&idx)?.reshape((b, s, table.dim(1)?))?)
}

/// The token each sequence is pooled from: `first_real` picks the first real token
/// (sentence-transformers' CLS), otherwise token 0 (HF's `hidden_states[:, 0]`).
pub fn pool_rows(inputs: &Inputs, bugs: &Bugs, first_real: bool) -> Vec<usize> {
    let (b, s) = (inputs.input_ids.batch, inputs.input_ids.seq);
    (0..b)
        .map(|bi| {
            // Mutation: PoolLastToken, the last real token instead of the first.
            if bugs.is(&Mutation::PoolLastToken) {
                (0..s).rev().find(|&j| inputs.is_real(bi, j)).unwrap_or(s - 1)
            } else if first_real {
                (0..s).find(|&j| inputs.is_real(bi, j)).unwrap_or(0)
            } else {
                0
            }
        })
        .collect()
}

/// Row `rows[i]` of sequence i: `[b, s, d]` -> `[b, d]`.
pub fn select_rows(h: &CTensor, rows: &[usize]) -> Result<CTensor> {
    let picked: Vec<CTensor> =
        rows.iter().enumerate().map(|(bi, &r)| h.get(bi)?.narrow(0, r, 1)).collect::<Result<_, _>>()?;
    Ok(CTensor::cat(&picked, 0)?)
}

/// `x / max(|x|_2, 1e-12)` per row (torch.nn.functional.normalize, p=2, dim=1).
fn l2_normalize(x: &CTensor) -> Result<CTensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&n)?)
}

/// The named pooled taps (`pooled.cls`, `pooled.mean` and their `.normalized` forms) from the
/// final hidden states `[b, s, d]`, as sentence-transformers computes them.
/// `[b, s, 1]`: 1 for real tokens, 0 for padding.
fn real_mask(inputs: &Inputs, b: usize, s: usize) -> Result<CTensor> {
    let mask: Vec<f32> =
        (0..b).flat_map(|bi| (0..s).map(move |j| (bi, j))).map(|(bi, j)| inputs.is_real(bi, j) as u8 as f32).collect();
    Ok(CTensor::from_vec(mask, (b, s, 1), &Device::Cpu)?)
}

/// `sum(h * mask)` over the sequence and `clamp(sum(mask), 1e-9)`.
fn masked_sum(h: &CTensor, mask: &CTensor) -> Result<(CTensor, CTensor)> {
    Ok((h.broadcast_mul(mask)?.sum(1)?, mask.sum(1)?.clamp(1e-9f32, f32::MAX)?))
}

/// `sentence_embedding`: the sentence-transformers pipeline of the checkpoint (pooling modes
/// concatenated, then optional L2 normalization), as its `Pooling` and `Normalize` compute it.
pub fn sentence_embedding(rec: &mut Recorder, h: &CTensor, inputs: &Inputs, bugs: &Bugs, p: &Pipeline) -> Result<()> {
    if !rec.wants(SENTENCE_EMBEDDING) {
        return Ok(());
    }
    let (b, s, _) = h.dims3()?;
    let mask = real_mask(inputs, b, s)?;
    let mut parts = Vec::new();
    for mode in &p.pooling {
        parts.push(match mode {
            PoolMode::Cls => select_rows(h, &pool_rows(inputs, bugs, true))?,
            PoolMode::LastToken => {
                let last: Vec<usize> =
                    (0..b).map(|bi| (0..s).rev().find(|&j| inputs.is_real(bi, j)).unwrap_or(s - 1)).collect();
                select_rows(h, &last)?
            }
            PoolMode::Max => {
                let keep = mask.ne(0f32)?.broadcast_as(h.shape())?;
                let neg = CTensor::full(f32::NEG_INFINITY, h.shape(), &Device::Cpu)?;
                keep.where_cond(h, &neg)?.max(1)?
            }
            PoolMode::Mean => {
                let (sum, count) = masked_sum(h, &mask)?;
                sum.broadcast_div(&count)?
            }
            PoolMode::MeanSqrtLen => {
                let (sum, count) = masked_sum(h, &mask)?;
                sum.broadcast_div(&count.sqrt()?)?
            }
        });
    }
    let e = CTensor::cat(&parts, 1)?;
    let e = if p.normalize { l2_normalize(&e)? } else { e };
    rec.tap(SENTENCE_EMBEDDING, &e);
    Ok(())
}

pub fn pooled_taps(
    rec: &mut Recorder,
    h: &CTensor,
    inputs: &Inputs,
    bugs: &Bugs,
    sentence: Option<&Pipeline>,
) -> Result<()> {
    if let Some(p) = sentence {
        sentence_embedding(rec, h, inputs, bugs, p)?;
    }
    if !POOLED_TAPS.iter().any(|n| rec.wants(n)) {
        return Ok(());
    }
    let cls = select_rows(h, &pool_rows(inputs, bugs, true))?;
    let (b, s, _) = h.dims3()?;
    let mask = real_mask(inputs, b, s)?;
    let (sum, count) = masked_sum(h, &mask)?;
    let mean = sum.broadcast_div(&count)?;
    rec.tap("pooled.cls", &cls);
    rec.tap("pooled.mean", &mean);
    rec.tap("pooled.cls.normalized", &l2_normalize(&cls)?);
    rec.tap("pooled.mean.normalized", &l2_normalize(&mean)?);
    Ok(())
}
