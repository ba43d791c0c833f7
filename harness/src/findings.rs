//! Expected findings: trials of an engine under test that are known to fail against HF, and how.
//!
//! `cases/expected/<engine>.yaml` maps case ids to the documented finding:
//!
//! ```yaml
//! distilbert/sequence:
//!   finding: candle-transformers' DistilBERT uses the tanh GELU; HF's `gelu` is erf
//!   first_divergence: last_hidden_state      # optional: the first divergent tap
//!   first_divergent_layer: distilbert.transformer.layer.0   # optional: from depth bisection
//!   hint: known_bug                          # optional: a hint kind that must be among the hints
//! ```
//!
//! Such a trial is green while it fails exactly that way, and red when it starts to pass (fixed
//! upstream: delete the entry) or fails differently (a new bug, or the old one moved). The
//! report keeps the real verdict; only the test outcome changes. The file is about the engine,
//! not the reference, so editing it never makes goldens stale.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, did_you_mean};
use crate::report::{TrialReport, Verdict};
use crate::yaml::Doc;

pub use harness_api::report::Outcome;

/// Directory under `cases/` holding one file per engine.
pub const DIR: &str = "expected";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVerdict {
    #[default]
    Fail,
    Error,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// What the engine gets wrong, in words.
    pub finding: String,
    #[serde(default)]
    pub verdict: ExpectedVerdict,
    #[serde(default)]
    pub first_divergence: Option<String>,
    #[serde(default)]
    pub first_divergent_layer: Option<String>,
    /// A hint kind (as in report.json, e.g. `known_bug`) that must be among the trial's hints.
    #[serde(default)]
    pub hint: Option<String>,
}

/// Every engine's expectations, keyed by (engine, case id).
#[derive(Debug, Default)]
pub struct Expectations {
    entries: BTreeMap<(String, String), (Expectation, PathBuf)>,
}

impl Expectations {
    /// Read `cases/expected/*.yaml`; `engines` are the registered engine names, `cases` the ids
    /// of every case file.
    pub fn load(root: &Path, engines: &[&str], cases: &[String]) -> Result<Expectations> {
        let dir = crate::project::cases_dir(root).join(DIR);
        let mut out = Expectations::default();
        let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(out) };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for file in files {
            let engine = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let mut doc = Doc::read(&file)?;
            if !engines.contains(&engine.as_str()) {
                let hint = match did_you_mean(&engine, engines.iter().copied()) {
                    Some(e) => format!("did you mean `{e}.yaml`?"),
                    None => format!("name the file after an engine: {}", engines.join(", ")),
                };
                return Err(crate::Error::input(format!("no engine `{engine}` for this expectations file"))
                    .file(&file)
                    .hint(hint));
            }
            let map: BTreeMap<String, Expectation> = doc.parse()?;
            for (case, e) in map {
                if !cases.contains(&case) {
                    let hint = match did_you_mean(&case, cases.iter().map(|c| c.as_str())) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => "keys are case ids: paths under cases/ without .yaml".into(),
                    };
                    return Err(doc.err(&case, format!("no case `{case}`")).hint(hint));
                }
                out.entries.insert((engine.clone(), case), (e, file.clone()));
            }
        }
        Ok(out)
    }

    pub fn get(&self, engine: &str, case: &str) -> Option<(&Expectation, &Path)> {
        self.entries.get(&(engine.to_string(), case.to_string())).map(|(e, f)| (e, f.as_path()))
    }
}

/// Compare a trial with its expectation.
pub fn check(e: &Expectation, file: &Path, r: &TrialReport) -> Outcome {
    let mut diffs = Vec::new();
    let want = match e.verdict {
        ExpectedVerdict::Fail => Verdict::Fail,
        ExpectedVerdict::Error => Verdict::Error,
    };
    if r.verdict == Verdict::Pass {
        diffs.push("it passes now: the finding may be fixed; remove its entry".to_string());
    } else if r.verdict != want {
        diffs.push(format!("verdict is {:?}, expected {:?}", r.verdict, e.verdict).to_lowercase());
    } else {
        let first = r.first_divergent_tap().map(|t| t.name.as_str());
        if let Some(tap) = &e.first_divergence
            && first != Some(tap.as_str())
        {
            diffs.push(format!("first divergence is {}, expected `{tap}`", quoted(first)));
        }
        if let Some(layer) = &e.first_divergent_layer {
            let got = r.bisection.as_ref().and_then(|b| b.first_divergent_layer.as_deref());
            if got != Some(layer.as_str()) {
                diffs.push(format!("bisection's first divergent layer is {}, expected `{layer}`", quoted(got)));
            }
        }
        if let Some(kind) = &e.hint {
            let kinds: Vec<String> = r
                .hints
                .iter()
                .filter_map(|h| serde_json::to_value(h.kind).ok().and_then(|v| v.as_str().map(String::from)))
                .collect();
            if !kinds.contains(kind) {
                diffs.push(format!(
                    "no `{kind}` hint (hints: {})",
                    if kinds.is_empty() { "none".into() } else { kinds.join(", ") }
                ));
            }
        }
    }
    Outcome {
        finding: e.finding.clone(),
        file: file.to_path_buf(),
        mismatch: (!diffs.is_empty()).then(|| diffs.join("; ")),
    }
}

fn quoted(s: Option<&str>) -> String {
    s.map_or("none".into(), |s| format!("`{s}`"))
}
