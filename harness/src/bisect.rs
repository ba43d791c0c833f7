//! Depth bisection: where an outputs-only engine first diverges.
//!
//! An engine that returns only `last_hidden_state` or `logits` cannot say which layer went wrong.
//! For a case with `bisect: true`, tools/regen_goldens.py also runs HF on the model truncated to
//! k = 1..L layers (config `num_hidden_layers = k`, the weights of the first k layers; the
//! embeddings, final norm and head unchanged) and writes its outputs as `depth.{k}.{tap}`. After a
//! failing trial, the engine is loaded on the same truncated specs and binary-searched for the
//! smallest k whose output diverges: layer k-1 is the first divergent layer (assuming, as for
//! any bug in a layer's code or weights, that once a depth diverges every deeper one does).

use crate::case::Case;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::golden::Goldens;
use crate::report::{TrialReport, Verdict};
use crate::structure::layer_of;
use crate::trial::{compare_tap, run_case};

/// The golden of `tap` for the model truncated to `k` layers.
pub fn depth_tap(k: usize, tap: &str) -> String {
    format!("depth.{k}.{tap}")
}

pub use harness_api::model::{layer_count, truncate_config, truncated};
pub use harness_api::report::{Bisection, DepthProbe};

/// The module of layer `i` (`model.layers.1`, `encoder.layer.1`, ...), from the recorded
/// structure.
fn layer_module(case: &Case, i: usize) -> Option<String> {
    case.model.structure.layer_module(i).or_else(|| {
        case.model
            .structure
            .modules
            .iter()
            .map(|m| m.path.clone())
            .filter(|p| layer_of(p) == Some(i) && p.ends_with(&format!(".{i}")))
            .min_by_key(|p| p.len())
    })
}

/// Bisect a failed trial of an outputs-only engine, when the case has depth goldens.
pub fn bisect(case: &Case, engine: &dyn Engine, goldens: &Goldens, report: &TrialReport) -> Option<Bisection> {
    if !case.bisect || report.verdict != Verdict::Fail {
        return None;
    }
    // The first divergent output if it has depth goldens, else any compared output that has.
    let first = report.first_divergent_tap().map(|t| t.name.clone());
    let compared = first.into_iter().chain(report.taps.iter().map(|t| t.name.clone()));
    let name = compared.into_iter().find(|n| goldens.entry(&depth_tap(1, n)).is_some())?;
    let tap = case.taps.iter().find(|t| t.name == name)?;
    let layers = match layer_count(&case.model.config) {
        Ok(Some(l)) => l,
        _ => return None,
    };
    let mut b = Bisection {
        tap: name.clone(),
        layers,
        probes: vec![],
        first_divergent_depth: None,
        first_divergent_layer: None,
        error: None,
    };
    let mut diverges = |k: usize| -> Result<bool> {
        let spec = truncated(&case.model, k);
        let model = engine.load(&spec)?;
        let sub = Case { model: spec, ..case.clone() };
        let out = run_case(&sub, model.as_ref(), &[name.as_str()])?;
        let golden_name = depth_tap(k, &name);
        let entry = goldens.entry(&golden_name).ok_or_else(|| {
            Error::golden(format!("no golden `{golden_name}`"))
                .file(goldens.dir.join(crate::golden::MANIFEST))
                .hint(crate::golden::regen_command(&goldens.root, &case.id))
        })?;
        let floor = entry.noise.as_ref().map(|n| n.floor);
        let file = goldens.dir.join(&entry.file);
        let rep = compare_tap(case, tap, out.get(&name), goldens.load(&golden_name), floor, Some(&file));
        if let crate::report::TapStatus::Error { message } = &rep.status {
            return Err(Error::golden(message.clone()));
        }
        let pass = rep.status.is_pass();
        let m = rep.metrics.as_ref();
        b.probes.push(DepthProbe { depth: k, pass, max_abs: m.map(|m| m.max_abs), cosine: m.map(|m| m.cosine) });
        Ok(!pass)
    };
    // lo: deepest depth known to match (0: none yet); hi: shallowest known to diverge.
    let (mut lo, mut hi) = (0, layers);
    let result = (|| -> Result<bool> {
        if !diverges(layers)? {
            return Ok(false);
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if diverges(mid)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(true)
    })();
    match result {
        Ok(true) => {
            b.first_divergent_depth = Some(hi);
            b.first_divergent_layer = layer_module(case, hi - 1);
        }
        Ok(false) => {}
        Err(e) => b.error = Some(e.to_string()),
    }
    Some(b)
}
