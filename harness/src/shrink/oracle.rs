//! Oracles: what a candidate input *should* produce, when it has no goldens.
//!
//! - [`EngineOracle`]: another engine (the reference engine, when the engine under test is a
//!   port: the usual case, and how the mutant zoo is shrunk).
//! - [`PrefixOracle`]: for causal models, the case's own goldens cut down: a candidate whose rows
//!   are prefixes of the case's rows (prompt and decode tokens as one sequence) has its goldens
//!   in the rows and positions of the existing ones (position t never sees later tokens), up to
//!   float32 rounding. No Python, no second engine; shrinking is then limited to dropping rows
//!   and cutting tails.
//! - [`super::hf::HfOracle`]: a live HF transformers process (`tools/hf_oracle.py`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::input::Candidate;
use crate::case::Case;
use crate::engine::LoadedModel;
use crate::error::{Error, Result};
use crate::golden::Goldens;
use crate::structure::TapKind;
use crate::tensor::Tensor;
use crate::trial::run_case;

pub trait Oracle {
    /// For messages and the regression file: `engine reference`, `hf`, `prefix of goldens`.
    fn name(&self) -> String;
    /// The expected outputs of `case` (a candidate's inputs, decode steps and taps; `cand` is
    /// the same input in shrinking's terms). `Ok(None)`: this oracle cannot judge this
    /// candidate (it is skipped); `Err`: the oracle is broken (shrinking stops).
    fn expected(&mut self, case: &Case, cand: &Candidate) -> Result<Option<Goldens>>;
}

/// Another engine's outputs are the expected ones.
pub struct EngineOracle {
    pub engine: String,
    pub model: Arc<dyn LoadedModel>,
}

impl Oracle for EngineOracle {
    fn name(&self) -> String {
        format!("engine {}", self.engine)
    }

    fn expected(&mut self, case: &Case, _cand: &Candidate) -> Result<Option<Goldens>> {
        let names: Vec<&str> = case.taps.iter().map(|t| t.name.as_str()).collect();
        let mut out = run_case(case, self.model.as_ref(), &names)
            .map_err(|e| Error::engine(format!("the oracle engine `{}` failed: {e}", self.engine)))?;
        let mut taps = Vec::with_capacity(names.len());
        for n in names {
            let t = out.remove(n).ok_or_else(|| {
                Error::engine(format!("the oracle engine `{}` did not return `{n}`", self.engine))
                    .hint("choose an oracle engine that exposes every tap of the case")
            })?;
            taps.push((n.to_string(), t, None));
        }
        Ok(Some(Goldens::in_memory(case, &self.name(), taps)))
    }
}

/// The case's goldens, cut to a candidate that is a prefix of the case (causal models only).
pub struct PrefixOracle {
    case: Case,
    goldens: Goldens,
    loaded: BTreeMap<String, Tensor>,
}

impl PrefixOracle {
    pub fn new(case: &Case, goldens: Goldens) -> Result<PrefixOracle> {
        if !case.model.structure.causal {
            return Err(Error::input(format!(
                "the prefix oracle needs a causal model; `{}` attends to later tokens, so a prefix changes every position",
                case.model.class
            ))
            .file(&case.file)
            .hint("use `--oracle engine:reference` or `--oracle hf`"));
        }
        Ok(PrefixOracle { case: case.clone(), goldens, loaded: BTreeMap::new() })
    }

    fn golden(&mut self, name: &str) -> Result<&Tensor> {
        if !self.loaded.contains_key(name) {
            let t = self.goldens.load(name)?;
            self.loaded.insert(name.to_string(), t);
        }
        Ok(&self.loaded[name])
    }

    /// The golden tap holding position `t` of row `o` of the case's full sequence (prompt then
    /// decode tokens), and the (row, position) inside it.
    fn locate(&self, base: &str, o: usize, t: usize) -> (String, usize, usize) {
        let p = self.case.inputs.input_ids.seq;
        match &self.case.decode {
            None => (base.to_string(), o, t),
            Some(_) if t < p => (format!("{base}@0"), o, t),
            Some(_) => (format!("{base}@{}", t - p + 1), o, 0),
        }
    }

    fn floor(&self, name: &str) -> Option<f64> {
        self.goldens.entry(name).and_then(|e| e.noise.as_ref()).map(|n| n.floor)
    }
}

impl Oracle for PrefixOracle {
    fn name(&self) -> String {
        "prefix of goldens".into()
    }

    fn expected(&mut self, case: &Case, cand: &Candidate) -> Result<Option<Goldens>> {
        let orig = &self.case;
        let full = Candidate::from_case(orig);
        // Every row must be a prefix of its origin with its real tokens at the same positions
        // (a left-padded row keeps its padding).
        let offset = |inputs: &crate::case::Inputs, b: usize| (0..inputs.input_ids.seq).find(|&s| inputs.is_real(b, s));
        for (r, row) in cand.rows.iter().enumerate() {
            let src = &full.rows[row.origin].ids;
            if row.ids.len() > src.len() || row.ids[..] != src[..row.ids.len()] {
                return Ok(None);
            }
            if offset(&case.inputs, r) != offset(&orig.inputs, row.origin) {
                return Ok(None);
            }
        }
        let seq = case.inputs.input_ids.seq;
        let mut taps = Vec::with_capacity(case.taps.len());
        for tap in &case.taps {
            let (base, step) = match tap.step {
                Some(k) => (tap.name.rsplit_once('@').map_or(tap.name.as_str(), |(b, _)| b), k),
                None => (tap.name.as_str(), 0),
            };
            let positions: Vec<usize> = if step == 0 { (0..seq).collect() } else { vec![seq + step - 1] };
            let rows: Vec<usize> = match tap.module.kind {
                TapKind::Tokens => (0..cand.rows.len()).collect(),
                TapKind::Positions => vec![0],
                // One row per sequence, or no known axes: a prefix changes it.
                TapKind::Rows | TapKind::Whole => return Ok(None),
            };
            let (mut data, mut feat_shape, mut floor) = (Vec::new(), None, None::<f64>);
            for &r in &rows {
                let o = cand.rows[r].origin;
                for &s in &positions {
                    // Padding positions are never compared: any value of the right size.
                    let real = tap.module.kind == TapKind::Positions || step > 0 || case.inputs.is_real(r, s);
                    let (name, gi, gs) = self.locate(base, o, s);
                    let gi = if tap.module.kind == TapKind::Positions { 0 } else { gi };
                    if let Some(f) = self.floor(&name) {
                        floor = Some(floor.map_or(f, |g| g.max(f)));
                    }
                    let g = self.golden(&name)?;
                    let gshape = g.shape();
                    if gshape.len() < 2 || gi >= gshape[0] || gs >= gshape[1] {
                        return Ok(None);
                    }
                    let feat: usize = gshape[2..].iter().product();
                    feat_shape.get_or_insert_with(|| gshape[2..].to_vec());
                    if real {
                        let at = (gi * gshape[1] + gs) * feat;
                        data.extend_from_slice(&g.data()[at..at + feat]);
                    } else {
                        data.extend(std::iter::repeat_n(0.0, feat));
                    }
                }
            }
            let mut shape = vec![rows.len(), positions.len()];
            shape.extend(feat_shape.unwrap_or_default());
            taps.push((tap.name.clone(), Tensor::new(shape, data)?, floor));
        }
        Ok(Some(Goldens::in_memory(case, &self.name(), taps)))
    }
}
