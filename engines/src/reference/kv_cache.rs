//! A preallocated key/value cache for incremental decoding, laid out like most ports': one
//! `[batch, kv_heads, capacity, head_dim]` buffer per layer, written in place at a slot offset.

use candle_core::{DType, Device, Tensor as CTensor};

use harness_api::error::{Error, Result};

pub struct KvCache {
    k: Vec<CTensor>,
    v: Vec<CTensor>,
    /// Tokens seen so far: the next token's position.
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Zeroed buffers for `layers` layers of `[batch, kv_heads, capacity, head_dim]`.
    pub fn new(layers: usize, batch: usize, kv_heads: usize, capacity: usize, head_dim: usize) -> Result<Self> {
        let zeros = || CTensor::zeros((batch, kv_heads, capacity, head_dim), DType::F32, &Device::Cpu);
        let k = (0..layers).map(|_| zeros()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = (0..layers).map(|_| zeros()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { k, v, len: 0, capacity })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write `k`, `v` (`[b, kv_heads, s, d]`) of layer `layer` into slots `at..at + s`, then return
    /// the keys and values of slots `0..len + s` (what attention reads after this write).
    pub fn write_read(&mut self, layer: usize, k: &CTensor, v: &CTensor, at: usize) -> Result<(CTensor, CTensor)> {
        let s = k.dim(2)?;
        if at + s > self.capacity {
            return Err(Error::engine(format!(
                "kv cache overflow: writing {s} slots at {at}, capacity {}",
                self.capacity
            )));
        }
        self.k[layer].slice_set(&k.contiguous()?, 2, at)?;
        self.v[layer].slice_set(&v.contiguous()?, 2, at)?;
        let n = self.len + s;
        Ok((self.k[layer].narrow(2, 0, n)?, self.v[layer].narrow(2, 0, n)?))
    }

    /// Account for `s` new tokens once every layer has written them.
    pub fn advance(&mut self, s: usize) {
        self.len += s;
    }
}
