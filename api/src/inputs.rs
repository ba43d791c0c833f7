//! What an engine is run on: the case's inputs as matrices, plus named tensors of any dtype
//! (`pixel_values`, `input_features`, `decoder_input_ids`, ...).

/// Integer matrix (batch x seq), row-major. A case without token ids (an image or audio model)
/// has `input_ids` of shape `[batch, 0]`: the batch is still known, there are no tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdMatrix {
    pub batch: usize,
    pub seq: usize,
    pub data: Vec<i64>,
}

impl IdMatrix {
    pub fn row(&self, b: usize) -> &[i64] {
        &self.data[b * self.seq..(b + 1) * self.seq]
    }
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }
}

/// The values of a named input, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl InputData {
    /// The dtype's name as in structure.json and numpy: `float32`, `int64`, `bool`.
    pub fn dtype(&self) -> &'static str {
        match self {
            InputData::F32(_) => "float32",
            InputData::I64(_) => "int64",
            InputData::Bool(_) => "bool",
        }
    }
    pub fn len(&self) -> usize {
        match self {
            InputData::F32(v) => v.len(),
            InputData::I64(v) => v.len(),
            InputData::Bool(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A forward input given by name, with its own dtype and shape (the first axis is the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: InputData,
}

impl NamedInput {
    /// Rows `rows` of the batch (the first axis), in that order.
    pub fn select_rows(&self, rows: &[usize]) -> NamedInput {
        let per = self.shape.iter().skip(1).product::<usize>();
        let pick = |n: usize| rows.iter().flat_map(move |&r| r * n..(r + 1) * n);
        let data = match &self.data {
            InputData::F32(v) => InputData::F32(pick(per).map(|i| v[i]).collect()),
            InputData::I64(v) => InputData::I64(pick(per).map(|i| v[i]).collect()),
            InputData::Bool(v) => InputData::Bool(pick(per).map(|i| v[i]).collect()),
        };
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        NamedInput { name: self.name.clone(), shape, data }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inputs {
    pub input_ids: IdMatrix,
    pub attention_mask: Option<IdMatrix>,
    pub token_type_ids: Option<IdMatrix>,
    /// Every other forward input the case gives, by name, in the case file's order.
    pub named: Vec<NamedInput>,
}

impl Inputs {
    /// True where the position holds a real token (mask 1, or no mask at all).
    pub fn is_real(&self, b: usize, s: usize) -> bool {
        // Positions past the mask (a decoder's, longer than the encoder's ids) have no padding.
        self.attention_mask.as_ref().is_none_or(|m| s >= m.seq || m.data[b * m.seq + s] != 0)
    }
    pub fn batch(&self) -> usize {
        self.input_ids.batch
    }
    /// Whether the case gives token ids (false for an image or audio model).
    pub fn has_ids(&self) -> bool {
        self.input_ids.seq > 0
    }
    pub fn named(&self, name: &str) -> Option<&NamedInput> {
        self.named.iter().find(|n| n.name == name)
    }
}

/// The seeded generator of `random:` inputs: splitmix64, one draw per element in C order. The
/// goldens tool implements the same (tools/harness_goldens/spec.py); docs/cases-and-inputs.md
/// gives the algorithm so anyone can reproduce an input elsewhere.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[low, high)`: computed in f64, rounded to f32.
    pub fn f32(&mut self, low: f64, high: f64) -> f32 {
        let u = (self.next() >> 40) as f64 / (1u64 << 24) as f64;
        (low + (high - low) * u) as f32
    }
    /// Uniform integer in `[low, high)`; `high > low`.
    pub fn i64(&mut self, low: i64, high: i64) -> i64 {
        let span = (high as i128 - low as i128) as u64;
        (low as i128 + (self.next() % span) as i128) as i64
    }
    pub fn bool(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same vectors are asserted in tools/tests (the Python implementation).
    #[test]
    fn splitmix_matches_the_python_generator() {
        let mut g = SplitMix64::new(7);
        let f: Vec<f32> = (0..4).map(|_| g.f32(-1.0, 1.0)).collect();
        assert_eq!(f, [-0.220_340_61_f32, -0.966_423_5, 0.801_521_3, 0.165_860_53]);
        let mut g = SplitMix64::new(7);
        let i: Vec<i64> = (0..4).map(|_| g.i64(3, 10)).collect();
        assert_eq!(i, [5, 6, 3, 6]);
    }

    #[test]
    fn select_rows_keeps_whole_rows() {
        let x = NamedInput { name: "x".into(), shape: vec![3, 2], data: InputData::I64(vec![0, 1, 2, 3, 4, 5]) };
        let y = x.select_rows(&[2, 0]);
        assert_eq!(y.shape, [2, 2]);
        assert_eq!(y.data, InputData::I64(vec![4, 5, 0, 1]));
    }
}
