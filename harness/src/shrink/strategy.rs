//! Generated inputs: a proptest [`Strategy`] whose trees are [`InputTree`]s, so a generated
//! input that fails a metamorphic property shrinks exactly like a failing case's input.

use std::ops::RangeInclusive;

use proptest::prelude::RngExt;
use proptest::strategy::{NewTree, Strategy};
use proptest::test_runner::TestRunner;

use super::input::{Candidate, Layout, Row};
use super::tree::InputTree;

/// The inputs a metamorphic property is checked on.
#[derive(Debug, Clone)]
pub struct InputSpace {
    pub layout: Layout,
    pub rows: RangeInclusive<usize>,
    /// Real tokens per row, specials included (the prompt, with `steps`).
    pub tokens: RangeInclusive<usize>,
    /// Padding after the longest row.
    pub pad: RangeInclusive<usize>,
    /// Decode steps (or appended tokens); the input then has a prompt and rows of one length.
    pub steps: Option<RangeInclusive<usize>>,
    /// The first token of every row (BOS/CLS), and the last (SEP), when the model has them.
    pub head: Option<i64>,
    pub tail: Option<i64>,
    /// Ids that are not special tokens.
    pub ids: Vec<i64>,
}

impl Strategy for InputSpace {
    type Tree = InputTree;
    type Value = Candidate;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let rng = runner.rng();
        let n_rows = rng.random_range(self.rows.clone());
        let steps = self.steps.clone().map(|s| rng.random_range(s));
        let joint = self.layout.joint || steps.is_some();
        let shared = rng.random_range(self.tokens.clone());
        let mut rows = Vec::with_capacity(n_rows);
        for b in 0..n_rows {
            let len = if joint { shared } else { rng.random_range(self.tokens.clone()) };
            let total = len + steps.unwrap_or(0);
            let (head, tail) = (self.head.is_some(), self.tail.is_some() && steps.is_none());
            let n_content = total.saturating_sub(usize::from(head) + usize::from(tail));
            let mut ids = Vec::with_capacity(total);
            ids.extend(self.head);
            ids.extend((0..n_content).map(|_| self.ids[rng.random_range(0..self.ids.len())]));
            if tail {
                ids.extend(self.tail);
            }
            rows.push(Row { origin: b, ids, types: None, left_pad: false, head, tail });
        }
        let extra_pad = rng.random_range(self.pad.clone());
        let prompt = steps.map(|_| shared);
        let cand = Candidate { rows, prompt, extra_pad };
        if !cand.is_valid(&self.layout) {
            return Err(format!("generated an invalid input {cand:?}: check the bounds").into());
        }
        Ok(InputTree::new(cand, self.layout.clone()))
    }
}
