//! What an engine is run on: the case's inputs as matrices.

/// Integer matrix (batch x seq), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub input_ids: IdMatrix,
    pub attention_mask: Option<IdMatrix>,
    pub token_type_ids: Option<IdMatrix>,
}

impl Inputs {
    /// True where the position holds a real token (mask 1, or no mask at all).
    pub fn is_real(&self, b: usize, s: usize) -> bool {
        self.attention_mask.as_ref().is_none_or(|m| m.data[b * m.seq + s] != 0)
    }
}
