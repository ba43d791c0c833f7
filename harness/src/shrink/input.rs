//! A case's input as shrinking sees it: rows of real tokens, the padding around them and, for
//! decode cases, where the prompt ends; plus what must stay fixed for a smaller input to remain
//! valid for the model ([`Layout`]).

use std::fmt;

use crate::case::{Case, IdMatrix, Inputs};
use crate::config::Config;

/// Config keys that name special token ids; the simple id shrinking moves toward is none of them.
const SPECIAL_KEYS: &[&str] =
    &["pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "unk_token_id", "mask_token_id"];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row {
    /// The row of the case this one was cut from.
    pub origin: usize,
    /// Real tokens in order (decode cases: the prompt, then the decode tokens).
    pub ids: Vec<i64>,
    /// Token types of the real tokens, when the case gives them.
    pub types: Option<Vec<i64>>,
    /// Padding goes before the real tokens rather than after.
    pub left_pad: bool,
    /// The first token is a BOS/CLS the row keeps.
    pub head: bool,
    /// The last token is a SEP the row keeps (encoders).
    pub tail: bool,
}

impl Row {
    /// The fewest real tokens the row may keep: one, or CLS, one token and SEP (the shortest
    /// input a tokenizer makes from non-empty text).
    pub fn min_len(&self) -> usize {
        if self.head && self.tail { 3 } else { 1 }
    }
    /// Positions that shrinking may drop or change: all but the kept specials.
    pub fn content(&self) -> std::ops::Range<usize> {
        let start = usize::from(self.head);
        start..(self.ids.len() - usize::from(self.tail)).max(start)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub rows: Vec<Row>,
    /// Decode cases: the first `prompt` tokens of every row are the prompt, the rest are fed one
    /// per step. Metamorphic `prefix` inputs use it for the prefix and the appended tokens.
    pub prompt: Option<usize>,
    /// Padding positions beyond the longest row.
    pub extra_pad: usize,
}

/// What stays fixed while an input shrinks.
#[derive(Debug, Clone)]
pub struct Layout {
    pub vocab: usize,
    pub pad_id: i64,
    /// The id token ids move toward: the smallest id that is not a special token of the config.
    pub simple_id: i64,
    /// Write an attention_mask even without padding (the case gives one).
    pub mask: bool,
    /// Rows keep one length, columns are dropped from every row at once: decode cases and cases
    /// without padding (dropping from one row would add padding the case never had).
    pub joint: bool,
    /// Only drop rows and cut tails, never change an id: every candidate stays a prefix of the
    /// case's rows (the prefix oracle's goldens are exact only for those).
    pub prefix_only: bool,
    pub min_rows: usize,
    pub min_pad: usize,
    /// Decode steps (or appended tokens) to keep at least.
    pub min_steps: usize,
}

/// Special token ids from the config: (ids a row may start with, ids it may end with, all).
pub fn specials(config: &Config, causal: bool) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let id = |k: &str| config.get(k).and_then(|v| v.as_i64());
    let head: Vec<i64> = ["cls_token_id", "bos_token_id"].iter().filter_map(|k| id(k)).collect();
    // Causal models end where generation stops, so only encoders keep a closing SEP.
    let tail: Vec<i64> = if causal { vec![] } else { ["sep_token_id"].iter().filter_map(|k| id(k)).collect() };
    let all = SPECIAL_KEYS.iter().filter_map(|k| id(k)).collect();
    (head, tail, all)
}

impl Layout {
    pub fn for_case(case: &Case, prefix_only: bool) -> Layout {
        let config = &case.model.config;
        let (_, _, all) = specials(config, case.model.structure.causal);
        let mask = case.inputs.attention_mask.as_ref();
        let padded = mask.is_some_and(|m| m.data.contains(&0));
        Layout {
            vocab: config.usize("vocab_size").unwrap_or(1),
            pad_id: config.get("pad_token_id").and_then(|v| v.as_i64()).unwrap_or(0),
            simple_id: (0..).find(|i| !all.contains(i)).unwrap_or(0),
            mask: mask.is_some(),
            joint: case.decode.is_some() || !padded,
            prefix_only,
            min_rows: 1,
            min_pad: 0,
            min_steps: 1,
        }
    }
}

impl Candidate {
    /// The case's own input.
    pub fn from_case(case: &Case) -> Candidate {
        let ids = &case.inputs.input_ids;
        let (head, tail, _) = specials(&case.model.config, case.model.structure.causal);
        let mut rows = Vec::with_capacity(ids.batch);
        let mut longest = 0;
        for b in 0..ids.batch {
            let real: Vec<usize> = (0..ids.seq).filter(|&s| case.inputs.is_real(b, s)).collect();
            let mut row_ids: Vec<i64> = real.iter().map(|&s| ids.row(b)[s]).collect();
            let types = case.inputs.token_type_ids.as_ref().map(|t| real.iter().map(|&s| t.row(b)[s]).collect());
            if let Some(d) = &case.decode {
                row_ids.extend_from_slice(d.tokens.row(b));
            }
            let n = real.len();
            longest = longest.max(n);
            let first = row_ids.first().copied();
            let last = row_ids.get(n.wrapping_sub(1)).copied();
            rows.push(Row {
                origin: b,
                head: first.is_some_and(|f| head.contains(&f)),
                tail: case.decode.is_none() && n >= 2 && last.is_some_and(|l| tail.contains(&l)),
                left_pad: real.first().is_some_and(|&s| s > 0),
                ids: row_ids,
                types,
            });
        }
        Candidate {
            rows,
            prompt: case.decode.as_ref().map(|_| ids.seq),
            extra_pad: ids.seq.saturating_sub(if case.decode.is_some() { ids.seq } else { longest }),
        }
    }

    /// Real tokens of row `r` that go through the prompt forward.
    pub fn prompt_len(&self, r: usize) -> usize {
        self.prompt.unwrap_or(self.rows[r].ids.len())
    }

    pub fn steps(&self) -> usize {
        match self.prompt {
            Some(m) => self.rows.first().map_or(0, |r| r.ids.len() - m),
            None => 0,
        }
    }

    /// Is this a valid input under `layout`?
    pub fn is_valid(&self, layout: &Layout) -> bool {
        if self.rows.len() < layout.min_rows.max(1) || self.extra_pad < layout.min_pad {
            return false;
        }
        let len0 = self.rows[0].ids.len();
        if layout.joint && self.rows.iter().any(|r| r.ids.len() != len0) {
            return false;
        }
        match self.prompt {
            Some(m) => m >= 1 && self.rows.iter().all(|r| r.ids.len() >= m) && self.steps() >= layout.min_steps,
            None => self.rows.iter().all(|r| r.ids.len() >= r.min_len()),
        }
    }

    /// The prompt as a case's inputs, and the decode tokens (batch x steps) if any.
    pub fn materialize(&self, layout: &Layout) -> (Inputs, Option<IdMatrix>) {
        let batch = self.rows.len();
        let lens: Vec<usize> = (0..batch).map(|r| self.prompt_len(r)).collect();
        let seq = lens.iter().copied().max().unwrap_or(0) + self.extra_pad;
        let padded = lens.iter().any(|&l| l < seq);
        let with_types = self.rows.iter().any(|r| r.types.is_some());
        let (mut ids, mut mask, mut types) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &n) in self.rows.iter().zip(&lens) {
            let pad = seq - n;
            let (before, after) = if row.left_pad { (pad, 0) } else { (0, pad) };
            ids.extend(std::iter::repeat_n(layout.pad_id, before));
            ids.extend_from_slice(&row.ids[..n]);
            ids.extend(std::iter::repeat_n(layout.pad_id, after));
            mask.extend(
                std::iter::repeat_n(0, before).chain(std::iter::repeat_n(1, n)).chain(std::iter::repeat_n(0, after)),
            );
            if with_types {
                let t = row.types.as_ref();
                types.extend(std::iter::repeat_n(0, before));
                types.extend((0..n).map(|i| t.map_or(0, |t| t[i])));
                types.extend(std::iter::repeat_n(0, after));
            }
        }
        let m = |data| IdMatrix { batch, seq, data };
        let inputs = Inputs {
            input_ids: m(ids),
            attention_mask: (layout.mask || padded).then(|| m(mask)),
            token_type_ids: with_types.then(|| m(types)),
            named: vec![],
        };
        let decode = self.prompt.map(|p| {
            let steps = self.steps();
            let data = self.rows.iter().flat_map(|r| r.ids[p..].iter().copied()).collect();
            IdMatrix { batch, seq: steps, data }
        });
        (inputs, decode)
    }

    pub fn size(&self) -> Size {
        let (inputs, _) = self.materialize(&Layout::loose());
        Size {
            rows: self.rows.len(),
            seq: inputs.input_ids.seq,
            real: (0..self.rows.len()).map(|r| self.prompt_len(r)).sum(),
            steps: self.steps(),
        }
    }
}

impl Layout {
    /// A layout that only materializes (no constraints).
    fn loose() -> Layout {
        Layout {
            vocab: usize::MAX,
            pad_id: 0,
            simple_id: 0,
            mask: false,
            joint: false,
            prefix_only: false,
            min_rows: 1,
            min_pad: 0,
            min_steps: 0,
        }
    }
}

/// How big an input is, for progress and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Size {
    pub rows: usize,
    /// Positions per row, padding included.
    pub seq: usize,
    /// Real tokens over all rows (the prompt, for decode cases).
    pub real: usize,
    /// Decode steps.
    pub steps: usize,
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = if self.rows == 1 { "1 row".to_string() } else { format!("{} rows", self.rows) };
        let tokens = if self.seq == 1 { "1 token".to_string() } else { format!("{} tokens", self.seq) };
        write!(f, "{rows} x {tokens}")?;
        if self.real != self.rows * self.seq {
            write!(f, " ({} real)", self.real)?;
        }
        if self.steps > 0 {
            write!(f, " + {} decode step{}", self.steps, if self.steps == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}
