//! Building blocks of the reference forward passes, written to follow HF's float32 eager math
//! step by step (same operation order where it matters for rounding).

use candle_core::{D, DType, Device, Tensor};

use super::dims::decoder::{Rope, RopeScaling};
use harness_api::error::Result;

/// `x @ w^T + b` over the last dimension (torch.nn.Linear).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// LlamaRMSNorm: `w * (x * rsqrt(mean(x^2) + eps))`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xs = x.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(xs.broadcast_mul(w)?)
}

/// torch.nn.LayerNorm over the last dimension (biased variance).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Softmax over the last dimension, max-subtracted like torch's.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// RoPE tables for positions `pos` (HF default rope): `cos, sin` of shape `[n_pos, head_dim]`,
/// with the frequencies repeated over both halves (`cat(freqs, freqs)`), in float32 like HF.
pub fn rope_tables(pos: &[usize], head_dim: usize, theta: f64, dev: &Device) -> Result<(Tensor, Tensor)> {
    rope_tables_from(pos, &default_inv_freq(head_dim, theta), dev)
}

/// HF's default inverse frequencies: `1 / base ** (arange(0, dim, 2).float() / dim)`, float32.
pub fn default_inv_freq(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2).map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / dim as f32)).collect()
}

/// The inverse frequencies of a (possibly scaled, possibly partial) RoPE, in float32 as
/// transformers' `ROPE_INIT_FUNCTIONS` compute them.
pub fn inv_freq(rope: &Rope) -> Vec<f32> {
    let inv = default_inv_freq(rope.rotary_dim, rope.theta);
    match rope.scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
            let (factor, low, high, old) =
                (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_max as f32);
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    // HF: ~(wavelen < high) * ~(wavelen > low); wavelengths are finite, so >= and <= say it.
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// `cos, sin` `[n_pos, 2 * inv.len()]` for positions `pos`: `cat(freqs, freqs)` as HF builds them.
pub fn rope_tables_from(pos: &[usize], inv: &[f32], dev: &Device) -> Result<(Tensor, Tensor)> {
    let head_dim = 2 * inv.len();
    let mut freqs = Vec::with_capacity(pos.len() * head_dim);
    for &p in pos {
        let row: Vec<f32> = inv.iter().map(|f| f * p as f32).collect();
        freqs.extend_from_slice(&row);
        freqs.extend_from_slice(&row);
    }
    let f = Tensor::from_vec(freqs, (pos.len(), head_dim), dev)?;
    Ok((f.cos()?, f.sin()?))
}

/// `x * cos + rotate_half(x) * sin`, x: `[b, heads, seq, head_dim]`, tables `[seq, head_dim]`
/// (or `[b, 1, seq, head_dim]`).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// RoPE on the first `cos.dim(-1)` dims of each head, the rest passed through (Phi-3's partial
/// rotary); the whole head when the tables are as wide as it.
pub fn apply_rope_partial(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rope: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (d, r) = (x.dim(D::Minus1)?, cos.dim(D::Minus1)?);
    if r == d {
        return rope(x, cos, sin);
    }
    let rotated = rope(&x.narrow(D::Minus1, 0, r)?.contiguous()?, cos, sin)?;
    Ok(Tensor::cat(&[&rotated, &x.narrow(D::Minus1, r, d - r)?], D::Minus1)?)
}

/// Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)`.
pub fn rms_norm_plus_one(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm(x, &(w + 1.0)?, eps)
}

/// Soft-capping: `tanh(x / cap) * cap`.
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}

/// RoPE over adjacent pairs `(2i, 2i+1)` with pair i's frequency (GPT-J / ggml "normal" style):
/// the wrong pairing for HF checkpoints, used by the `RopeInterleaved` mutation. Same tables as
/// [`apply_rope`].
pub fn apply_rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = x.dim(D::Minus1)?;
    let mut pairs = dims.clone();
    pairs.pop();
    pairs.extend([d / 2, 2]);
    let xp = x.reshape(pairs)?;
    let x0 = xp.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = xp.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let (c, s) = (cos.narrow(D::Minus1, 0, d / 2)?, sin.narrow(D::Minus1, 0, d / 2)?);
    let y0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
    let y1 = (x1.broadcast_mul(&c)? + x0.broadcast_mul(&s)?)?;
    Ok(Tensor::stack(&[&y0, &y1], D::Minus1)?.reshape(dims)?)
}

/// `[b, kv_heads, s, d]` -> `[b, kv_heads * n_rep, s, d]`, each kv head repeated n_rep times in a
/// row (HF repeat_kv: query head h reads kv head h / n_rep).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, h, n_rep, s, d))?.reshape((b, h * n_rep, s, d))?)
}

/// Like [`repeat_kv`] but tiled: query head h reads kv head `h % kv_heads` (the `GqaWrongRepeat`
/// mutation; `torch.repeat` where HF means `repeat_interleave`).
pub fn repeat_kv_tiled(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    Ok(x.unsqueeze(1)?.broadcast_as((b, n_rep, h, s, d))?.reshape((b, h * n_rep, s, d))?)
}

/// Additive attention bias `[b, 1, q, k]`: 0 where query i may attend key j, f32::MIN elsewhere.
pub fn attention_bias(
    allowed: impl Fn(usize, usize, usize) -> bool,
    b: usize,
    q: usize,
    k: usize,
    dev: &Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(b * q * k);
    for bi in 0..b {
        for i in 0..q {
            for j in 0..k {
                v.push(if allowed(bi, i, j) { 0.0f32 } else { f32::MIN });
            }
        }
    }
    Ok(Tensor::from_vec(v, (b, 1, q, k), dev)?)
}

/// Eager attention: `softmax(q k^T * scale + bias) v`; q `[b,h,q,d]`, k/v `[b,h,k,d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores.broadcast_add(bias)?;
    let p = softmax_last(&scores)?;
    Ok(p.matmul(&v.contiguous()?)?)
}

pub fn ids_tensor(ids: &[i64], b: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    Ok(Tensor::from_vec(v, (b, s), dev)?)
}

pub fn to_f32(t: Tensor) -> Result<Tensor> {
    Ok(if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? })
}
