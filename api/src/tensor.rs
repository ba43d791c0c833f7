//! A dense float tensor (shape + f32 data) and `.npy` I/O.
//!
//! Goldens in float32, little-endian, C order are used in place: a large one stays a file that
//! the comparison streams ([`read_npy_deferred`]) and is mapped only when something asks for
//! its data; others are mapped. Every other supported dtype (f64, f16, bfloat16, integers,
//! bool) is converted to f32 once on load.
//! Fortran order and big-endian files are refused: `tools/` never writes them, so one in
//! `goldens/` was produced by something else.

use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use memmap2::Mmap;

#[cfg(feature = "npy")]
mod npy;
#[cfg(feature = "npy")]
pub use npy::{parse_npy_bytes, read_npy, read_npy_bytes, read_npy_deferred, read_npy_owned};

pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
    /// The dtype as stored on disk (`float32`, `float16`, `int64`, ...).
    pub source_dtype: String,
}

#[cfg_attr(not(feature = "npy"), allow(dead_code))]
enum Storage {
    Owned(Vec<f32>),
    Mapped {
        map: Mmap,
        offset: usize,
        len: usize,
    },
    /// float32 data at `offset` in `file`, mapped on the first call to `data()`.
    Deferred {
        file: std::fs::File,
        offset: usize,
        len: usize,
        map: OnceLock<Mmap>,
    },
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.source_dtype)
    }
}

impl Clone for Tensor {
    fn clone(&self) -> Self {
        Tensor {
            shape: self.shape.clone(),
            storage: Storage::Owned(self.data().to_vec()),
            source_dtype: self.source_dtype.clone(),
        }
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data().iter().zip(other.data()).all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n = numel(&shape).ok_or_else(|| Error::engine(format!("shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(Error::engine(format!("shape {shape:?} needs {n} values, got {}", data.len())));
        }
        Ok(Tensor { shape, storage: Storage::Owned(data), source_dtype: "float32".into() })
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        match &self.storage {
            Storage::Owned(v) => v.len(),
            Storage::Mapped { len, .. } | Storage::Deferred { len, .. } => *len,
        }
    }
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => bytemuck::cast_slice(&map[*offset..*offset + *len * 4]),
            Storage::Deferred { file, offset, len, map } => {
                let map = map.get_or_init(|| {
                    // SAFETY: as in `read_npy`. Mapping an open, checked, readable file only
                    // fails when the address space is exhausted.
                    unsafe { memmap2::MmapOptions::new().populate().map(file) }.expect("cannot map a golden")
                });
                bytemuck::cast_slice(&map[*offset..*offset + *len * 4])
            }
        }
    }
    /// Whether the data is read in place from its file (mapped, or to be) rather than copied.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. } | Storage::Deferred { .. })
    }
    /// The file and byte offset of float32 little-endian data not mapped yet (for streaming).
    pub fn unmapped_file(&self) -> Option<(&std::fs::File, u64)> {
        match &self.storage {
            Storage::Deferred { file, offset, map, .. } if map.get().is_none() => Some((file, *offset as u64)),
            _ => None,
        }
    }
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Owned(v) => v,
            _ => self.data().to_vec(),
        }
    }
    /// Same data, another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor> {
        if numel(&shape) != Some(self.numel()) {
            return Err(Error::engine(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        Ok(Tensor { shape, ..self })
    }
}

pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Permute `a` (row-major, `shape`) by `perm`: out[i_perm...] = a[i...]. Used by diagnosis
/// (transposed layouts) and by external engines' layout rules.
pub fn permute(a: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut out = vec![0.0; a.len()];
    let mut out_strides = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        out_strides[k] = out_strides[k + 1] * out_shape[k + 1];
    }
    for (i, &v) in a.iter().enumerate() {
        let idx = crate::metrics::unravel(i, shape);
        let o: usize = perm.iter().enumerate().map(|(k, &p)| idx[p] * out_strides[k]).sum();
        out[o] = v;
    }
    (out, out_shape)
}

/// Write `t` as a float32 little-endian C-order `.npy` (format 1.0, header padded to 64 bytes as
/// numpy writes it), for dumps and tests; goldens are written by tools/ only.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::io(path, &e);
    let shape = match t.shape() {
        [d] => format!("({d},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in t.data() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(&out).map_err(io)?;
    f.flush().map_err(io)
}
