//! The input as a proptest [`ValueTree`]: each `simplify` proposes a smaller input, in passes
//! of phases: drop batch rows, then runs of tokens (halving run lengths down to single tokens),
//! then move token ids toward a simple id, then token types to 0, then drop padding. A pass
//! that shrank anything is followed by another (a shorter input may let a row go).
//!
//! proptest's contract: after a failing `current()` the runner calls `simplify` (accept it and
//! propose the next), after a passing one `complicate` (go back and propose the next); when
//! either returns false, `current()` is the smallest failing input. A candidate that breaks the
//! [`Layout`] is skipped without being proposed.

use proptest::strategy::ValueTree;

use super::input::{Candidate, Layout};

#[derive(Debug, Clone, PartialEq)]
enum Move {
    DropRow(usize),
    /// Drop these positions from row `row`, or from every row (`None`, joint layouts).
    Drop {
        row: Option<usize>,
        at: Vec<usize>,
    },
    /// Keep the first `len` tokens of row `row`, or of every row.
    Truncate {
        row: Option<usize>,
        len: usize,
    },
    /// Move the prompt/decode boundary: the prompt keeps its first `m` tokens.
    Prompt(usize),
    AllSimple,
    SetId {
        row: usize,
        col: usize,
        id: i64,
    },
    ZeroTypes,
    Pad(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Rows {
        i: usize,
    },
    /// Runs of `k` deletable positions of `row` (index into the row list, or 0 for joint).
    Drop {
        row: usize,
        k: usize,
        i: usize,
    },
    /// Prefix layouts: cut `k` tokens off the end.
    Tail {
        row: usize,
        k: usize,
    },
    Prompt {
        k: usize,
    },
    AllSimple,
    /// Token (row, pos): first the simple id, then a binary search between `lo` (did not fail)
    /// and the current id.
    Ids {
        row: usize,
        pos: usize,
        lo: Option<i64>,
    },
    Types,
    Pad {
        k: usize,
    },
    End,
}

/// Deletable positions of `row` (or of every row: positions no row keeps).
fn deletable(c: &Candidate, row: Option<usize>) -> Vec<usize> {
    match row {
        Some(r) => c.rows[r].content().collect(),
        None => {
            let len = c.rows[0].ids.len();
            let head = c.rows.iter().any(|r| r.head);
            let tail = c.rows.iter().any(|r| r.tail);
            (usize::from(head)..len - usize::from(tail).min(len)).collect()
        }
    }
}

/// The fewest tokens row `r` (or every row) may keep when cut from the end.
fn min_tail_len(c: &Candidate, layout: &Layout, row: Option<usize>) -> usize {
    let rows: Vec<&super::input::Row> = match row {
        Some(r) => vec![&c.rows[r]],
        None => c.rows.iter().collect(),
    };
    let base = rows.iter().map(|r| r.min_len()).max().unwrap_or(1);
    match c.prompt {
        Some(_) => base.max(1 + layout.min_steps.max(1)),
        None => base,
    }
}

fn apply(base: &Candidate, m: &Move, layout: &Layout) -> Option<Candidate> {
    let mut c = base.clone();
    match m {
        Move::DropRow(i) => {
            c.rows.remove(*i);
        }
        Move::Drop { row, at } => {
            let rows: Vec<usize> = row.map_or_else(|| (0..c.rows.len()).collect(), |r| vec![r]);
            for r in rows {
                let row = &mut c.rows[r];
                let keep = |i: &usize| !at.contains(i);
                row.ids = row.ids.iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, v)| *v).collect();
                if let Some(t) = &mut row.types {
                    *t = t.iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, v)| *v).collect();
                }
            }
            if let Some(p) = c.prompt {
                c.prompt = Some(p - at.iter().filter(|&&i| i < p).count());
            }
        }
        Move::Truncate { row, len } => {
            let rows: Vec<usize> = row.map_or_else(|| (0..c.rows.len()).collect(), |r| vec![r]);
            for r in rows {
                let row = &mut c.rows[r];
                row.ids.truncate(*len);
                if let Some(t) = &mut row.types {
                    t.truncate(*len);
                }
                row.tail = false;
            }
            if let Some(p) = c.prompt {
                c.prompt = Some(p.min(len.saturating_sub(layout.min_steps)));
            }
        }
        Move::Prompt(m) => c.prompt = Some(*m),
        Move::AllSimple => {
            for row in &mut c.rows {
                for i in row.content() {
                    row.ids[i] = layout.simple_id;
                }
            }
        }
        Move::SetId { row, col, id } => c.rows[*row].ids[*col] = *id,
        Move::ZeroTypes => {
            for row in &mut c.rows {
                if let Some(t) = &mut row.types {
                    t.iter_mut().for_each(|v| *v = 0);
                }
            }
        }
        Move::Pad(p) => c.extra_pad = *p,
    }
    (c != *base && c.is_valid(layout)).then_some(c)
}

/// Where the current pass is, and what comes next.
#[derive(Debug, Clone)]
struct Cursor {
    phase: Phase,
}

impl Cursor {
    fn start() -> Cursor {
        Cursor { phase: Phase::Rows { i: 0 } }
    }

    /// The first phase after `Rows`.
    fn after_rows(base: &Candidate, layout: &Layout) -> Phase {
        if layout.prefix_only { Phase::Tail { row: 0, k: 0 } } else { Cursor::drop_start(base, layout, 0) }
    }

    fn drop_start(base: &Candidate, layout: &Layout, row: usize) -> Phase {
        let n = match layout.joint {
            true => deletable(base, None).len(),
            false if row < base.rows.len() => deletable(base, Some(row)).len(),
            false => 0,
        };
        Phase::Drop { row, k: n.max(1), i: 0 }
    }

    /// The next move to propose from `base`, or None at the end of the pass.
    fn next(&mut self, base: &Candidate, layout: &Layout) -> Option<Move> {
        loop {
            match self.phase.clone() {
                Phase::Rows { i } => {
                    if i < base.rows.len() && base.rows.len() > layout.min_rows {
                        return Some(Move::DropRow(i));
                    }
                    self.phase = Cursor::after_rows(base, layout);
                }
                Phase::Drop { row, k, i } => {
                    let rows = if layout.joint { 1 } else { base.rows.len() };
                    if row >= rows {
                        self.phase = Phase::AllSimple;
                        continue;
                    }
                    let which = (!layout.joint).then_some(row);
                    let d = deletable(base, which);
                    if i < d.len() {
                        return Some(Move::Drop { row: which, at: d[i..(i + k).min(d.len())].to_vec() });
                    }
                    self.phase = if k > 1 {
                        Phase::Drop { row, k: k.div_ceil(2), i: 0 }
                    } else {
                        Cursor::drop_start(base, layout, row + 1)
                    };
                }
                Phase::Tail { row, k } => {
                    let rows = if layout.joint { 1 } else { base.rows.len() };
                    if row >= rows {
                        self.phase = match base.prompt {
                            Some(m) => Phase::Prompt { k: m.saturating_sub(1) },
                            None => Phase::Pad { k: base.extra_pad.saturating_sub(layout.min_pad) },
                        };
                        continue;
                    }
                    let which = (!layout.joint).then_some(row);
                    let len = base.rows[row].ids.len();
                    let room = len.saturating_sub(min_tail_len(base, layout, which));
                    // k == 0 on entry: start with the largest cut.
                    let k = if k == 0 { room } else { k.min(room) };
                    if k == 0 {
                        self.phase = Phase::Tail { row: row + 1, k: 0 };
                        continue;
                    }
                    self.phase = Phase::Tail { row, k };
                    return Some(Move::Truncate { row: which, len: len - k });
                }
                Phase::Prompt { k } => {
                    let m = base.prompt.unwrap_or(1);
                    let k = k.min(m.saturating_sub(1));
                    if k == 0 {
                        self.phase = Phase::Pad { k: base.extra_pad.saturating_sub(layout.min_pad) };
                        continue;
                    }
                    self.phase = Phase::Prompt { k };
                    return Some(Move::Prompt(m - k));
                }
                Phase::AllSimple => {
                    self.phase = Phase::Ids { row: 0, pos: 0, lo: None };
                    if base.rows.iter().any(|r| r.content().filter(|&i| r.ids[i] != layout.simple_id).count() > 1) {
                        return Some(Move::AllSimple);
                    }
                }
                Phase::Ids { row, pos, lo } => {
                    let Some(r) = base.rows.get(row) else {
                        self.phase = Phase::Types;
                        continue;
                    };
                    let content = r.content();
                    if pos < content.start {
                        self.phase = Phase::Ids { row, pos: content.start, lo: None };
                        continue;
                    }
                    if pos >= content.end {
                        self.phase = Phase::Ids { row: row + 1, pos: 0, lo: None };
                        continue;
                    }
                    let hi = r.ids[pos];
                    let id = match lo {
                        None => layout.simple_id,
                        Some(lo) => lo + (hi - lo) / 2,
                    };
                    if id == hi || lo == Some(id) {
                        self.phase = Phase::Ids { row, pos: pos + 1, lo: None };
                        continue;
                    }
                    return Some(Move::SetId { row, col: pos, id });
                }
                Phase::Types => {
                    self.phase = Phase::Pad { k: base.extra_pad.saturating_sub(layout.min_pad) };
                    if base.rows.iter().any(|r| r.types.as_ref().is_some_and(|t| t.iter().any(|&v| v != 0))) {
                        return Some(Move::ZeroTypes);
                    }
                }
                Phase::Pad { k } => {
                    let k = k.min(base.extra_pad.saturating_sub(layout.min_pad));
                    if k == 0 {
                        self.phase = Phase::End;
                        continue;
                    }
                    self.phase = Phase::Pad { k };
                    return Some(Move::Pad(base.extra_pad - k));
                }
                Phase::End => return None,
            }
        }
    }

    /// The proposal `m` did not reproduce the failure (or was invalid).
    fn rejected(&mut self, m: &Move) {
        self.phase = match (self.phase.clone(), m) {
            (Phase::Rows { i }, _) => Phase::Rows { i: i + 1 },
            (Phase::Drop { row, k, i }, _) => Phase::Drop { row, k, i: i + k },
            (Phase::Tail { row, k }, _) => Phase::Tail { row, k: k / 2 }.fix_tail(row),
            (Phase::Prompt { k }, _) => Phase::Prompt { k: k / 2 },
            (Phase::Ids { row, pos, .. }, Move::SetId { id, .. }) => Phase::Ids { row, pos, lo: Some(*id) },
            (Phase::Pad { k }, _) => Phase::Pad { k: k / 2 },
            (p, _) => p,
        };
    }
}

impl Phase {
    /// A halved tail cut of 0 moves on to the next row (0 means "start" in `Tail`).
    fn fix_tail(self, row: usize) -> Phase {
        match self {
            Phase::Tail { k: 0, .. } => Phase::Tail { row: row + 1, k: 0 },
            p => p,
        }
    }
}

/// A case input being shrunk.
#[derive(Debug, Clone)]
pub struct InputTree {
    layout: Layout,
    base: Candidate,
    current: Candidate,
    pending: Option<Move>,
    cursor: Cursor,
    /// Some proposal was accepted in this pass.
    progressed: bool,
}

impl InputTree {
    pub fn new(input: Candidate, layout: Layout) -> InputTree {
        InputTree {
            layout,
            current: input.clone(),
            base: input,
            pending: None,
            cursor: Cursor::start(),
            progressed: false,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// What the proposal in `current()` changed, for progress lines.
    pub fn change(&self) -> String {
        let tokens = |n: usize| if n == 1 { "1 token".to_string() } else { format!("{n} tokens") };
        match &self.pending {
            None => "no change".into(),
            Some(Move::DropRow(i)) => format!("dropped row {i}"),
            Some(Move::Drop { row: None, at }) => format!("dropped {} from every row", tokens(at.len())),
            Some(Move::Drop { row: Some(r), at }) => format!("dropped {} from row {r}", tokens(at.len())),
            Some(Move::Truncate { row: None, len }) => format!("cut every row to {}", tokens(*len)),
            Some(Move::Truncate { row: Some(r), len }) => format!("cut row {r} to {}", tokens(*len)),
            Some(Move::Prompt(m)) => format!("prompt cut to {}, the rest decoded", tokens(*m)),
            Some(Move::AllSimple) => format!("every token id set to {}", self.layout.simple_id),
            Some(Move::SetId { row, col, id }) => format!("token {col} of row {row} set to id {id}"),
            Some(Move::ZeroTypes) => "token types set to 0".into(),
            Some(Move::Pad(p)) => format!("padding cut to {p}"),
        }
    }

    /// Propose the next valid move from `base`; false (with `current == base`) when a whole pass
    /// proposes nothing that was accepted.
    fn propose(&mut self) -> bool {
        loop {
            match self.cursor.next(&self.base, &self.layout) {
                Some(m) => match apply(&self.base, &m, &self.layout) {
                    Some(c) => {
                        self.current = c;
                        self.pending = Some(m);
                        return true;
                    }
                    None => self.cursor.rejected(&m),
                },
                None if self.progressed => {
                    self.progressed = false;
                    self.cursor = Cursor::start();
                }
                None => {
                    self.current = self.base.clone();
                    return false;
                }
            }
        }
    }
}

impl ValueTree for InputTree {
    type Value = Candidate;

    fn current(&self) -> Candidate {
        self.current.clone()
    }

    fn simplify(&mut self) -> bool {
        // Accepted: the cursor stays where it is (the next row, run or value slid into place).
        if self.pending.take().is_some() {
            self.base = self.current.clone();
            self.progressed = true;
        }
        self.propose()
    }

    fn complicate(&mut self) -> bool {
        if let Some(m) = self.pending.take() {
            self.current = self.base.clone();
            self.cursor.rejected(&m);
        }
        self.propose()
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::Row;
    use super::*;

    fn row(ids: &[i64], head: bool, tail: bool) -> Row {
        Row { origin: 0, ids: ids.to_vec(), types: None, left_pad: false, head, tail }
    }

    fn layout() -> Layout {
        Layout {
            vocab: 100,
            pad_id: 0,
            simple_id: 3,
            mask: false,
            joint: true,
            prefix_only: false,
            min_rows: 1,
            min_pad: 0,
            min_steps: 1,
        }
    }

    /// Drive the tree like proptest's runner with a predicate for "still fails"; returns the
    /// minimum and the number of evaluations.
    fn shrink(c: Candidate, l: Layout, fails: impl Fn(&Candidate) -> bool) -> (Candidate, usize) {
        let mut t = InputTree::new(c, l);
        let mut evals = 0;
        if t.simplify() {
            loop {
                evals += 1;
                let more = if fails(&t.current()) { t.simplify() } else { t.complicate() };
                if !more {
                    break;
                }
            }
        }
        (t.current(), evals)
    }

    #[test]
    fn shrinks_to_the_shortest_failing_length_keeping_specials() {
        let ids: Vec<i64> = std::iter::once(1).chain(10..56).chain(std::iter::once(2)).collect();
        let c = Candidate { rows: vec![row(&ids, true, true)], prompt: None, extra_pad: 0 };
        let (min, evals) = shrink(c, layout(), |c| c.rows[0].ids.len() >= 6);
        assert_eq!(min.rows[0].ids, vec![1, 3, 3, 3, 3, 2]);
        assert!(evals < 40, "{evals}");
    }

    #[test]
    fn keeps_one_token_between_cls_and_sep() {
        let c = Candidate { rows: vec![row(&[1, 40, 41, 42, 2], true, true)], prompt: None, extra_pad: 0 };
        let (min, _) = shrink(c, layout(), |_| true);
        assert_eq!(min.rows[0].ids, vec![1, 3, 2]);
    }

    #[test]
    fn drops_rows_then_binary_searches_an_id() {
        let rows = vec![row(&[50, 60], false, false), row(&[70, 80], false, false)];
        let c = Candidate { rows, prompt: None, extra_pad: 0 };
        // Fails while some token is >= 42.
        let (min, _) = shrink(c, layout(), |c| c.rows.iter().any(|r| r.ids.iter().any(|&v| v >= 42)));
        assert_eq!(min.rows.len(), 1);
        assert_eq!(min.rows[0].ids, vec![42]);
    }

    #[test]
    fn decode_inputs_keep_a_prompt_token_and_a_step() {
        let ids: Vec<i64> = (1..=18).collect();
        let c = Candidate { rows: vec![row(&ids, true, false)], prompt: Some(8), extra_pad: 0 };
        let (min, _) = shrink(c, layout(), |_| true);
        assert_eq!((min.prompt, min.rows[0].ids.clone()), (Some(1), vec![1, 3]));
    }

    #[test]
    fn prefix_layouts_only_cut_tails_and_move_the_prompt_boundary() {
        let ids: Vec<i64> = (1..=18).collect();
        let c = Candidate { rows: vec![row(&ids, true, false)], prompt: Some(8), extra_pad: 0 };
        let l = Layout { prefix_only: true, ..layout() };
        let (min, evals) = shrink(c, l, |_| true);
        assert_eq!((min.prompt, min.rows[0].ids.clone()), (Some(1), vec![1, 2]));
        assert!(evals < 10, "{evals}");
    }
}
