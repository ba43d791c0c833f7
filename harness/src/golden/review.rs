//! How pending goldens differ from the accepted ones: per tap max_abs, cosine and SQNR of the
//! new golden against the old (`metrics::compare`, the old one as reference), shape and dtype
//! changes, added and removed taps; and what changed in the provenance (generator versions,
//! case file, model spec, weights). Typical use: after a transformers upgrade, see which taps
//! moved and by how much before accepting.

use std::fmt::Write;

use super::pending::{Kind, MODEL_MARKER, Pending, SUFFIX};
use super::{Manifest, TapEntry};
use crate::error::Result;
use crate::metrics::{Metrics, compare};
use crate::report::terminal::num;
use crate::tensor::read_npy;
use crate::tolerance::{Observed, Tolerance};

#[derive(Debug, Clone)]
pub enum Change {
    /// Bit for bit the same file.
    Unchanged,
    Added {
        shape: Vec<usize>,
        dtype: String,
    },
    Removed,
    /// Shape or dtype changed: values are not comparable element by element.
    Reshaped {
        old_shape: Vec<usize>,
        new_shape: Vec<usize>,
        old_dtype: String,
        new_dtype: String,
    },
    /// Same shape, other values; `within` says whether the change is inside the tap's tolerance.
    Moved {
        metrics: Metrics,
        within: Option<bool>,
    },
}

#[derive(Debug, Clone)]
pub struct TapDelta {
    pub name: String,
    pub change: Change,
}

#[derive(Debug, Clone)]
pub struct Review {
    pub id: String,
    /// Provenance changes in words, e.g. `transformers 5.23.0 -> 5.24.0`.
    pub notes: Vec<String>,
    pub taps: Vec<TapDelta>,
}

impl Review {
    pub fn moved(&self) -> usize {
        self.taps.iter().filter(|t| !matches!(t.change, Change::Unchanged)).count()
    }
}

fn versions(m: &Manifest) -> [(&'static str, &str); 6] {
    let g = &m.generator;
    [
        ("python", &g.python),
        ("torch", &g.torch),
        ("transformers", &g.transformers),
        ("numpy", &g.numpy),
        ("dtype", &g.dtype),
        ("attn_implementation", &g.attn_implementation),
    ]
}

fn provenance_notes(old: Option<&Manifest>, new: &Manifest) -> Vec<String> {
    let Some(old) = old else { return vec!["new case: no accepted goldens yet".into()] };
    let mut notes = Vec::new();
    for ((k, a), (_, b)) in versions(old).into_iter().zip(versions(new)) {
        if a != b {
            notes.push(format!("{k} {a} -> {b}"));
        }
    }
    if old.case_digest != new.case_digest {
        notes.push("the case file changed".into());
    }
    if old.model.spec_digest != new.model.spec_digest {
        notes.push(format!("the model spec `{}` changed", new.model.id));
    }
    if old.model.weights_sha256 != new.model.weights_sha256 {
        notes.push(format!(
            "the weights changed (sha256 {} -> {})",
            &old.model.weights_sha256[..old.model.weights_sha256.len().min(12)],
            &new.model.weights_sha256[..new.model.weights_sha256.len().min(12)]
        ));
    }
    if old.module_order != new.module_order {
        notes.push("the modules ran in a different order".into());
    }
    let names = |m: &Manifest| m.taps.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let (a, b) = (names(old), names(new));
    let common_a: Vec<&String> = a.iter().filter(|n| b.contains(n)).collect();
    let common_b: Vec<&String> = b.iter().filter(|n| a.contains(n)).collect();
    if common_a != common_b {
        notes.push("the taps are in a different forward order".into());
    }
    notes
}

fn delta(p: &Pending, old: Option<&TapEntry>, new: &TapEntry, tol: Option<&Tolerance>) -> Result<Change> {
    let Some(old) = old else { return Ok(Change::Added { shape: new.shape.clone(), dtype: new.dtype.clone() }) };
    if old.sha256 == new.sha256 {
        return Ok(Change::Unchanged);
    }
    if old.shape != new.shape || old.dtype != new.dtype {
        return Ok(Change::Reshaped {
            old_shape: old.shape.clone(),
            new_shape: new.shape.clone(),
            old_dtype: old.dtype.clone(),
            new_dtype: new.dtype.clone(),
        });
    }
    let a = read_npy(&p.resolve(&new.file), Some(&new.dtype))?;
    let e = read_npy(&p.dir.join(&old.file), Some(&old.dtype))?;
    let t = tol.cloned().unwrap_or_default();
    let metrics = compare(a.data(), e.data(), t.allclose(), None);
    // Judged like a trial: the new golden as the engine, the old one as the golden.
    let logits = crate::logits::is_logits_tap(&new.name)
        .then(|| crate::logits::compute(a.data(), e.data(), &new.shape, t.allclose(), None));
    let observed =
        Observed { metrics: &metrics, logits: logits.as_ref(), noise_floor: old.noise.as_ref().map(|n| n.floor) };
    let within = tol.map(|t| t.check(observed).is_empty());
    Ok(Change::Moved { metrics, within })
}

/// Compare a pending case with its accepted goldens. `tolerance` gives a tap's tolerance in the
/// current case (when the case loads), to say whether a move is within it.
pub fn review(p: &Pending, tolerance: &dyn Fn(&str) -> Option<Tolerance>) -> Result<Review> {
    if p.kind == Kind::Model {
        return review_model(p);
    }
    let new = p.new_manifest()?;
    let old = p.old_manifest()?;
    let mut taps = Vec::new();
    for e in &new.taps {
        let o = old.as_ref().and_then(|m| m.taps.iter().find(|t| t.name == e.name));
        taps.push(TapDelta { name: e.name.clone(), change: delta(p, o, e, tolerance(&e.name).as_ref())? });
    }
    for o in old.iter().flat_map(|m| &m.taps) {
        if !new.taps.iter().any(|t| t.name == o.name) {
            taps.push(TapDelta { name: o.name.clone(), change: Change::Removed });
        }
    }
    Ok(Review { id: p.id.clone(), notes: provenance_notes(old.as_ref(), &new), taps })
}

fn review_model(p: &Pending) -> Result<Review> {
    let json = |path| -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(path).ok()?).ok() };
    let old = json(p.dir.join(MODEL_MARKER));
    let new = json(p.marker());
    let mut notes = Vec::new();
    let get = |v: &Option<serde_json::Value>, k: &str| v.as_ref().map(|v| v[k].clone()).unwrap_or_default();
    // Strings without quotes, hashes shortened.
    let word = |v: &serde_json::Value| {
        let s = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) { s[..12].to_string() } else { s }
    };
    for (k, what) in [
        ("spec_digest", "model spec digest"),
        ("weights_sha256", "weights sha256"),
        ("dtype", "dtype"),
        ("seed", "seed"),
    ] {
        let (a, b) = (get(&old, k), get(&new, k));
        if a != b {
            notes.push(format!("{what} {} -> {}", word(&a), word(&b)));
        }
    }
    let (ga, gb) = (get(&old, "generator"), get(&new, "generator"));
    if let Some(gb) = gb.as_object() {
        for (k, b) in gb {
            if ga.get(k) != Some(b) {
                notes.push(format!("{k} {} -> {}", word(&ga.get(k).cloned().unwrap_or_default()), word(b)));
            }
        }
    }
    for f in ["config.json", "model.safetensors"] {
        if p.dir.join(format!("{f}{SUFFIX}")).is_file() {
            notes.push(format!("{f} changed"));
        }
    }
    Ok(Review { id: p.id.clone(), notes, taps: vec![] })
}

/// The review in words: a header, provenance changes, one line per tap.
pub fn render(r: &Review) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "pending: {} ({} of {} taps changed)", r.id, r.moved(), r.taps.len());
    for n in &r.notes {
        let _ = writeln!(s, "  {n}");
    }
    if r.taps.is_empty() {
        return s;
    }
    let w = r.taps.iter().map(|t| t.name.len()).max().unwrap_or(3).max(3);
    let _ = writeln!(s, "   {:<w$}  {:>9} {:>10} {:>8}  change", "tap", "max_abs", "cosine", "sqnr_dB");
    for t in &r.taps {
        let line = match &t.change {
            Change::Unchanged => format!("{:>9} {:>10} {:>8}  unchanged", "", "", ""),
            Change::Added { shape, dtype } => format!("{:>9} {:>10} {:>8}  added {shape:?} {dtype}", "", "", ""),
            Change::Removed => format!("{:>9} {:>10} {:>8}  removed", "", "", ""),
            Change::Reshaped { old_shape, new_shape, old_dtype, new_dtype } => format!(
                "{:>9} {:>10} {:>8}  shape/dtype {old_shape:?} {old_dtype} -> {new_shape:?} {new_dtype}",
                "", "", ""
            ),
            Change::Moved { metrics: m, within } => {
                let db = if m.sqnr_db.is_infinite() { "inf".into() } else { format!("{:.1}", m.sqnr_db) };
                let verdict = match within {
                    Some(true) => "moved, within the tap's tolerance",
                    Some(false) => "MOVED beyond the tap's tolerance",
                    None => "moved",
                };
                format!("{:>9} {:>10.6} {db:>8}  {verdict}", num(m.max_abs), m.cosine)
            }
        };
        let mark = if matches!(t.change, Change::Unchanged) { " " } else { "*" };
        let _ = writeln!(s, " {mark} {:<w$}  {line}", t.name);
    }
    s
}
