//! `harness diff A B`: compare two `.npy` files, or two directories of them (a `harness dump`, a
//! goldens directory, another engine's dump), with the metrics, first divergence and report of a
//! trial. A is the reference, B the engine under test.
//!
//! Names and layouts of B go through a [`Mapping`] onto A's (HF) names: the identity by default;
//! an external engine's rules (reversed ggml dims, its own tensor names) plug in here.

use std::path::{Path, PathBuf};

use crate::dump::{DUMP_MANIFEST, DumpManifest};
use crate::error::{Error, Result, display_path};
use crate::golden::{MANIFEST, Manifest};
use crate::report::{TrialReport, Verdict};
use crate::tensor::read_npy;
use crate::tolerance::Tolerance;

pub use crate::engine::{Identity, Mapping};

/// One side of a diff: named `.npy` files, in forward order when the directory says so.
#[derive(Debug, Clone)]
pub struct Side {
    pub path: PathBuf,
    pub taps: Vec<(String, PathBuf)>,
    /// Where the order came from (`manifest.json`, `dump.json`), None when sorted by name.
    pub order_from: Option<&'static str>,
}

/// Natural order: `layers.2` before `layers.10`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    s.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}

pub fn open_side(path: &Path) -> Result<Side> {
    if path.is_file() {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Side { path: path.to_path_buf(), taps: vec![(name, path.to_path_buf())], order_from: Some("file") });
    }
    if !path.is_dir() {
        return Err(Error::input("no such file or directory")
            .file(path)
            .hint("give two .npy files or two directories of .npy files"));
    }
    let read = |f: &str| std::fs::read(path.join(f)).ok();
    if let Some(m) = read(MANIFEST).and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()) {
        let taps = m.taps.iter().map(|t| (t.name.clone(), path.join(&t.file))).collect();
        return Ok(Side { path: path.to_path_buf(), taps, order_from: Some(MANIFEST) });
    }
    if let Some(m) = read(DUMP_MANIFEST).and_then(|b| serde_json::from_slice::<DumpManifest>(&b).ok()) {
        let taps = m.taps.iter().map(|t| (t.name.clone(), path.join(&t.file))).collect();
        return Ok(Side { path: path.to_path_buf(), taps, order_from: Some(DUMP_MANIFEST) });
    }
    let mut taps: Vec<(String, PathBuf)> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, &e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .map(|p| (p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), p))
        .collect();
    if taps.is_empty() {
        return Err(Error::input("no .npy files here").file(path).hint("dump an engine with `harness dump`"));
    }
    taps.sort_by_key(|(n, _)| natural_key(n));
    Ok(Side { path: path.to_path_buf(), taps, order_from: None })
}

/// The result of a diff: the trial-shaped report and notes for the reader.
pub struct Diff {
    pub report: TrialReport,
    /// Taps only in B, and how the order was chosen.
    pub notes: Vec<String>,
}

/// Compare B against A under `tolerance`.
pub fn diff(a: &Path, b: &Path, tolerance: &Tolerance, mapping: &dyn Mapping) -> Result<Diff> {
    diff_masked(a, b, tolerance, mapping, None)
}

/// [`diff`], comparing only the real tokens of `mask` (`[batch, seq]`, 0 = padding) in tensors
/// whose leading axes are `[batch, seq]`, as a trial does (`harness diff --mask`, `--case`).
pub fn diff_masked(
    a: &Path,
    b: &Path,
    tolerance: &Tolerance,
    mapping: &dyn Mapping,
    mask: Option<&crate::case::IdMatrix>,
) -> Result<Diff> {
    let rows = |shape: &[usize]| -> Option<Vec<bool>> {
        let m = mask?;
        (shape.len() >= 3 && shape[0] == m.batch && shape[1] == m.seq && m.data.contains(&0))
            .then(|| m.data.iter().map(|&v| v != 0).collect())
    };
    let sa = open_side(a)?;
    let sb = open_side(b)?;
    if a.is_file() != b.is_file() {
        return Err(Error::input("cannot compare a file with a directory")
            .file(b)
            .hint("give two .npy files or two directories"));
    }
    let mut notes = Vec::new();
    // B's files under A's names (with B's own name, for layout rules). Two single files compare
    // whatever their names.
    let b_taps: Vec<(String, PathBuf, String)> = if a.is_file() {
        vec![(sa.taps[0].0.clone(), sb.taps[0].1.clone(), sb.taps[0].0.clone())]
    } else {
        sb.taps.iter().filter_map(|(n, p)| mapping.name(n).map(|m| (m, p.clone(), n.clone()))).collect()
    };
    // Forward order: A's if it knows it, else B's, else by name.
    let mut order: Vec<String> = sa.taps.iter().map(|(n, _)| n.clone()).collect();
    if let (None, Some(from)) = (sa.order_from, sb.order_from) {
        let pos = |n: &String| b_taps.iter().position(|(m, ..)| m == n).unwrap_or(usize::MAX);
        order.sort_by_key(pos);
        notes.push(format!("forward order taken from {}", display_path(&sb.path.join(from))));
    } else if sa.order_from.is_none() {
        notes.push("no manifest.json or dump.json: taps are in name order, not forward order".into());
    }
    let only_b: Vec<&str> = b_taps.iter().filter(|(n, ..)| !order.contains(n)).map(|(n, ..)| n.as_str()).collect();
    if !only_b.is_empty() {
        notes.push(format!("only in {}: {}", display_path(b), only_b.join(", ")));
    }
    if let Some(m) = mask {
        let padded = m.data.iter().filter(|&&v| v == 0).count();
        notes.push(format!("{padded} padding position(s) of the {}x{} mask are not compared", m.batch, m.seq));
    }
    let mut report = TrialReport::new(
        "diff".into(),
        &display_path(b),
        &display_path(a),
        a.to_path_buf(),
        format!("harness diff {} {}", display_path(a), display_path(b)),
    );
    let a_path = |n: &str| sa.taps.iter().find(|(m, _)| m == n).map(|(_, p)| p.clone());
    for name in &order {
        let golden = read_npy(&a_path(name).unwrap_or_default(), None);
        let actual = b_taps.iter().find(|(m, ..)| m == name).map(|(_, p, b_name)| {
            read_npy(p, None).and_then(|t| {
                let expected = golden.as_ref().map(|g| g.shape().to_vec()).unwrap_or_default();
                mapping.layout(b_name, name, t, &expected)
            })
        });
        let actual = match actual {
            Some(Err(e)) => {
                let mut t = crate::trial::compare_tensors(name, tolerance, None, Err(e), &|_| None, None, None);
                t.shape = golden.as_ref().map(|g| g.shape().to_vec()).unwrap_or_default();
                report.taps.push(t);
                continue;
            }
            Some(Ok(t)) => Some(t),
            None => None,
        };
        // The golden is read again for the detail pass (compare_tensors takes it by value).
        let golden_path = a_path(name).unwrap_or_default();
        let mut t =
            crate::trial::compare_tensors(name, tolerance, actual.as_ref(), golden, &rows, None, Some(&golden_path));
        if let (Some(x), Ok(g)) = (&actual, read_npy(&golden_path, None)) {
            // `[batch, seq, ...]` is assumed for 3-d and larger tensors (per-token detail).
            crate::trial::detail(&mut t, g.shape().len() >= 3, None, x, &g);
        }
        report.taps.push(t);
    }
    report.first_divergence = crate::diagnose::first_divergence(&report.taps);
    if report.taps.iter().any(|t| matches!(t.status, crate::report::TapStatus::Error { .. })) {
        report.verdict = Verdict::Error;
    } else if report.first_divergence.is_some() {
        report.verdict = Verdict::Fail;
    }
    Ok(Diff { report, notes })
}
