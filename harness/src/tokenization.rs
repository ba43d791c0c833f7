//! The tokenizer's goldens: the harness's tokenization (crate::text) compared with HF's
//! `tokenizer.*` goldens, first in a text case's trial, and the hint when they differ.

use crate::case::IdMatrix;
use crate::golden::Goldens;
use crate::report::{Hint, HintKind, TapReport, TapStatus, TokenAt};
use crate::text::{TOKENIZER_TAPS, TextCase};
use crate::tolerance::Tolerance;

fn exact() -> Tolerance {
    Tolerance { atol: Some(0.0), rtol: Some(0.0), ..Tolerance::default() }
}

/// Compare the harness's tokenization with HF's (the `tokenizer.*` goldens): one report per
/// golden, first in the trial. `input_ids` and `attention_mask` goldens must exist.
pub fn compare(text: &TextCase, goldens: &Goldens) -> Vec<TapReport> {
    let e = &text.encoded;
    let mut out = Vec::new();
    for (name, mine, required) in [
        (TOKENIZER_TAPS[0], &e.input_ids, true),
        (TOKENIZER_TAPS[1], &e.attention_mask, true),
        (TOKENIZER_TAPS[2], &e.token_type_ids, false),
    ] {
        if goldens.entry(name).is_none() && !required {
            continue;
        }
        let mut rep = TapReport::new(name, exact());
        match goldens.load(name) {
            Err(err) => rep.status = TapStatus::Error { message: err.to_string() },
            Ok(g) => {
                rep.shape = g.shape().to_vec();
                if let Some(at) = first_difference(mine, g.shape(), g.data()) {
                    let tok = |v: Option<i64>| {
                        v.map(|id| TokenAt { id, token: (name == TOKENIZER_TAPS[0]).then(|| text.tokenizer.token(id)) })
                    };
                    rep.first_mismatch_index = Some(vec![at.0, at.1]);
                    rep.status = TapStatus::Tokenizer {
                        at: vec![at.0, at.1],
                        harness: tok(at.2),
                        hf: tok(at.3),
                        harness_shape: vec![mine.batch, mine.seq],
                    };
                }
            }
        }
        out.push(rep);
    }
    out
}

/// The hint of a trial whose first divergence is a tokenizer tap: what to look at.
pub fn divergence_hint(t: &TapReport) -> Option<Hint> {
    let TapStatus::Tokenizer { at, harness, hf, harness_shape } = &t.status else { return None };
    let look = if at.get(1) == Some(&0) {
        "it starts at the first token: check `add_special_tokens` and the post-processor template".to_string()
    } else if harness_shape.get(1) != t.shape.get(1) || harness.is_none() || hf.is_none() {
        format!(
            "the rows have {} tokens in the harness and {} in HF: check `truncation`, `max_length` and `padding` \
             (tokenizer.json carries its own truncation/padding, which HF's tokenizer and sentence-transformers \
             override)",
            harness_shape.get(1).copied().unwrap_or(0),
            t.shape.get(1).copied().unwrap_or(0)
        )
    } else if t.name != TOKENIZER_TAPS[0] {
        format!("the ids agree but `{}` differs: check padding and the pair template", t.name)
    } else {
        "check the normalizer (lowercasing, accent stripping, unicode normalization), the pre-tokenizer and the \
         vocabulary"
            .into()
    };
    Some(Hint {
        kind: HintKind::TokenizerDivergence,
        tap: t.name.clone(),
        score: 1.0,
        message: format!(
            "the harness's tokenization differs from HF's tokenizer, so every activation is computed on other \
             tokens (the model ran on the harness's tokenization); {look}"
        ),
    })
}

/// The first `(row, position, harness value, HF value)` where the harness's matrix and the
/// golden `[batch, seq]` differ, in row-major order; a value is None past the end of its row.
fn first_difference(
    mine: &IdMatrix,
    shape: &[usize],
    golden: &[f32],
) -> Option<(usize, usize, Option<i64>, Option<i64>)> {
    let (gb, gs) = match shape {
        [b, s] => (*b, *s),
        _ => (0, 0),
    };
    for b in 0..mine.batch.max(gb) {
        for s in 0..mine.seq.max(gs) {
            let a = (b < mine.batch && s < mine.seq).then(|| mine.data[b * mine.seq + s]);
            let g = (b < gb && s < gs).then(|| golden[b * gs + s] as i64);
            if a != g {
                return Some((b, s, a, g));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_value_and_length_changes() {
        let m = IdMatrix { batch: 2, seq: 3, data: vec![101, 7, 102, 101, 8, 102] };
        assert_eq!(first_difference(&m, &[2, 3], &[101.0, 7.0, 102.0, 101.0, 8.0, 102.0]), None);
        assert_eq!(
            first_difference(&m, &[2, 3], &[101.0, 7.0, 102.0, 101.0, 9.0, 102.0]),
            Some((1, 1, Some(8), Some(9)))
        );
        assert_eq!(
            first_difference(&m, &[2, 4], &[101.0, 7.0, 102.0, 0.0, 101.0, 8.0, 102.0, 0.0]),
            Some((0, 3, None, Some(0)))
        );
    }
}
