//! Metrics that only make sense for logits: does the engine pick the same token?
//!
//! Rows are the last dimension's vectors (one per position, or per sequence for a classifier).
//! - argmax agreement is judged only on *clear* rows, where the golden's top-1 beats its top-2
//!   by more than twice what the tolerance allows on the top-1 value (`2 (atol + rtol |top1|)`):
//!   elsewhere a within-tolerance error could flip the argmax and agreement means nothing.
//! - top-k overlap: mean over rows of `|topk(engine) ∩ topk(golden)| / k`, k = min(5, vocab).
//! - KL divergence `KL(softmax(golden) || softmax(engine))` per row in nats (mean and max).

use serde::Serialize;

use crate::metrics::AllClose;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogitsMetrics {
    /// Rows compared.
    pub rows: usize,
    /// Rows whose golden top-1 margin is clear.
    pub clear: usize,
    /// Clear rows where the engine's argmax equals the golden's.
    pub argmax_agree: usize,
    /// First clear row (as an index without the vocab dimension) where they disagree.
    pub first_disagreement: Option<Vec<usize>>,
    pub topk: usize,
    pub topk_overlap: f64,
    pub kl_mean: f64,
    pub kl_max: f64,
}

impl LogitsMetrics {
    /// Fraction of clear rows whose argmax agrees (1 when no row is clear).
    pub fn argmax_fraction(&self) -> f64 {
        if self.clear == 0 { 1.0 } else { self.argmax_agree as f64 / self.clear as f64 }
    }
}

/// Whether a tap holds logits (named `logits`, also per decode step `logits@k`).
pub fn is_logits_tap(name: &str) -> bool {
    name.split('@').next() == Some("logits")
}

fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// `rows` selects which rows take part (None: all).
pub fn compute(actual: &[f32], golden: &[f32], shape: &[usize], tol: AllClose, rows: Option<&[bool]>) -> LogitsMetrics {
    let vocab = *shape.last().unwrap_or(&1);
    let n_rows = golden.len().checked_div(vocab).unwrap_or(0);
    let k = vocab.min(5);
    let mut m = LogitsMetrics {
        rows: 0,
        clear: 0,
        argmax_agree: 0,
        first_disagreement: None,
        topk: k,
        topk_overlap: 0.0,
        kl_mean: 0.0,
        kl_max: 0.0,
    };
    let mut overlap_sum = 0.0;
    let mut kl_sum = 0.0;
    for r in 0..n_rows {
        if rows.is_some_and(|sel| !sel.get(r).copied().unwrap_or(false)) {
            continue;
        }
        let g = &golden[r * vocab..(r + 1) * vocab];
        let a = &actual[r * vocab..(r + 1) * vocab];
        if a.iter().any(|x| !x.is_finite()) || g.iter().any(|x| !x.is_finite()) {
            continue; // counted as NaN/Inf by the main metrics
        }
        m.rows += 1;
        let tg = top_k(g, k.max(2).min(vocab));
        let mut tg_sorted = tg.clone();
        tg_sorted.sort_by(|&x, &y| g[y].total_cmp(&g[x]));
        let top1 = tg_sorted[0];
        let margin = if vocab > 1 { (g[top1] - g[tg_sorted[1]]) as f64 } else { f64::INFINITY };
        if margin > 2.0 * (tol.atol + tol.rtol * (g[top1] as f64).abs()) {
            m.clear += 1;
            let ta = top_k(a, 1)[0];
            if ta == top1 {
                m.argmax_agree += 1;
            } else if m.first_disagreement.is_none() {
                let mut ix = crate::metrics::unravel(r, &shape[..shape.len() - 1]);
                if ix.is_empty() {
                    ix.push(r);
                }
                m.first_disagreement = Some(ix);
            }
        }
        let ta_k = top_k(a, k);
        let tg_k = &tg_sorted[..k];
        overlap_sum += ta_k.iter().filter(|i| tg_k.contains(i)).count() as f64 / k.max(1) as f64;
        let (lg, la) = (log_softmax(g), log_softmax(a));
        let kl: f64 = lg.iter().zip(&la).map(|(&p, &q)| p.exp() * (p - q)).sum::<f64>().max(0.0);
        kl_sum += kl;
        m.kl_max = m.kl_max.max(kl);
    }
    if m.rows > 0 {
        m.topk_overlap = overlap_sum / m.rows as f64;
        m.kl_mean = kl_sum / m.rows as f64;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: AllClose = AllClose { atol: 1e-3, rtol: 0.0 };

    #[test]
    fn identical_logits_agree_fully() {
        let g = [0.1f32, 2.0, -1.0, 0.5, 3.0, 0.0, 0.2, 0.1];
        let m = compute(&g, &g, &[2, 4], TOL, None);
        assert_eq!((m.rows, m.clear, m.argmax_agree), (2, 2, 2));
        assert_eq!(m.topk_overlap, 1.0);
        assert!(m.kl_max.abs() < 1e-12);
    }

    #[test]
    fn flipped_argmax_is_found_and_unclear_rows_are_skipped() {
        // row 0: clear margin, engine picks another token; row 1: tie within tolerance
        let g = [0.0f32, 5.0, 1.0, 1.0, 1.0005, 0.0];
        let a = [6.0f32, 5.0, 1.0, 1.0005, 1.0, 0.0];
        let m = compute(&a, &g, &[1, 2, 3], TOL, None);
        assert_eq!((m.rows, m.clear, m.argmax_agree), (2, 1, 0));
        assert_eq!(m.first_disagreement, Some(vec![0, 0]));
        assert!(m.kl_mean > 0.5);
        assert_eq!(m.argmax_fraction(), 0.0);
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let g = [0.0f32, 0.0];
        let a = [0.0f32, 2.0f32.ln()];
        // p = (1/2, 1/2), q = (1/3, 2/3): KL = 1/2 ln(3/2) + 1/2 ln(3/4)
        let want = 0.5 * (1.5f64).ln() + 0.5 * (0.75f64).ln();
        let m = compute(&a, &g, &[1, 2], TOL, None);
        approx::assert_relative_eq!(m.kl_mean, want, max_relative = 1e-6);
    }

    #[test]
    fn names() {
        assert!(is_logits_tap("logits") && is_logits_tap("logits@3"));
        assert!(!is_logits_tap("lm_head") && !is_logits_tap("model.logits"));
    }
}
