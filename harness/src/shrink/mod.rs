//! Shrinking a failing input to a minimal one that fails the same way.
//!
//! A failure on a 300-token batch of 3 is hard to debug; the same failure on 9 tokens, one row,
//! is easy. The input is a proptest [`ValueTree`](proptest::strategy::ValueTree)
//! ([`tree::InputTree`]) that proposes smaller inputs (rows, runs of tokens, single tokens,
//! simpler ids, less padding); each candidate is run on the engine under test and compared with
//! an [`oracle`] (another engine, a live HF process, or the goldens' own prefixes), diagnosed,
//! and kept only when it fails with the original's [`signature::Signature`]. The result is
//! written as a new case under `cases/regressions/` ([`regression`]) whose goldens
//! `tools/regen_goldens.py` produces like any other case's.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::strategy::ValueTree;

use crate::case::{Case, Decode, per_step};
use crate::catalogue::{ProbeCache, ReferenceProbes};
use crate::diagnose::probes::Variants;
use crate::engine::{Engine, LoadedModel};
use crate::error::{Error, Result};
use crate::report::TrialReport;

pub mod hf;
pub mod input;
pub mod oracle;
pub mod regression;
pub mod rows;
pub mod signature;
pub mod strategy;
pub mod tree;

use input::{Candidate, Layout, Size};
use oracle::Oracle;
use signature::Signature;
use tree::InputTree;

/// Evaluations a shrink may use when neither `--budget` nor `PROPTEST_MAX_SHRINK_ITERS` says.
pub const DEFAULT_BUDGET: u32 = 300;

/// How much a shrink may spend: evaluations (the original's included) and wall time.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub evaluations: u32,
    pub time: Option<Duration>,
}

impl Budget {
    /// `budget` (else [`DEFAULT_BUDGET`]), capped by `PROPTEST_MAX_SHRINK_ITERS`; the time limit
    /// is `PROPTEST_MAX_SHRINK_TIME` (milliseconds), as proptest reads them.
    pub fn from_env(budget: Option<u32>) -> Budget {
        let cfg = proptest::test_runner::Config::default();
        let mut evaluations = budget.unwrap_or(DEFAULT_BUDGET);
        // u32::MAX is proptest's "not set".
        if cfg.max_shrink_iters != u32::MAX {
            evaluations = evaluations.min(cfg.max_shrink_iters.saturating_add(1));
        }
        let time = (cfg.max_shrink_time > 0).then(|| Duration::from_millis(cfg.max_shrink_time.into()));
        Budget { evaluations: evaluations.max(1), time }
    }
}

/// The case `orig` with `cand` as its input: same model, taps and tolerances; a decode case's
/// taps re-expanded for the candidate's number of steps.
pub fn candidate_case(orig: &Case, cand: &Candidate, layout: &Layout) -> Case {
    let (inputs, tokens) = cand.materialize(layout);
    let mut case = orig.clone();
    case.inputs = inputs;
    // A candidate's ids are no longer a tokenization of the case's text.
    case.text = None;
    case.decode = tokens.map(|tokens| Decode { tokens });
    if let Some(d) = &case.decode {
        let base: Vec<_> = orig
            .taps
            .iter()
            .filter(|t| t.step.is_none_or(|s| s == 0))
            .map(|t| {
                let mut t = t.clone();
                t.name = t.module.path.clone();
                t.step = None;
                t
            })
            .collect();
        case.taps = per_step(&base, d.steps());
    }
    case
}

/// What one candidate did.
pub struct Evaluation {
    /// None: it passed, or could not be judged.
    pub signature: Option<Signature>,
    pub report: Option<TrialReport>,
}

/// Everything a shrink needs.
pub struct Shrinker<'a> {
    pub case: &'a Case,
    pub engine: &'a str,
    pub model: &'a dyn LoadedModel,
    pub oracle: &'a mut dyn Oracle,
    pub probes: &'a ProbeCache,
    pub layout: Layout,
    pub budget: Budget,
    /// Print progress lines on stderr.
    pub progress: bool,
}

/// The result of a shrink.
pub struct Shrunk {
    pub signature: Signature,
    pub original: Candidate,
    pub minimal: Candidate,
    pub original_size: Size,
    pub minimal_size: Size,
    /// The minimal input as a case, and its report against the oracle.
    pub case: Case,
    pub report: TrialReport,
    pub evaluations: u32,
    pub elapsed: Duration,
    /// Why shrinking stopped before it could not shrink further (budget, time).
    pub stopped_early: Option<String>,
    pub oracle: String,
}

impl Shrinker<'_> {
    /// Run one candidate and compare it with the oracle; `probes`: diagnose with the zoo's
    /// variants too (the `known_bug` hints; a dozen reference runs).
    pub fn evaluate(&mut self, cand: &Candidate, probes: bool) -> Result<Evaluation> {
        let case = candidate_case(self.case, cand, &self.layout);
        let Some(goldens) = self.oracle.expected(&case, cand)? else {
            return Ok(Evaluation { signature: None, report: None });
        };
        let cached = ReferenceProbes { cache: self.probes, case: &case };
        let variants: Option<&dyn Variants> = if probes { Some(&cached) } else { None };
        let (report, _) = crate::trial::assess(&case, self.engine, self.model, &goldens, String::new(), variants);
        Ok(Evaluation { signature: Signature::of(&report), report: Some(report) })
    }

    fn say(&self, msg: String) {
        if self.progress {
            let _ = writeln!(std::io::stderr(), "shrink: {msg}");
        }
    }

    /// Shrink the case's input. Errors when the case does not fail against the oracle.
    pub fn run(mut self) -> Result<Shrunk> {
        let start = Instant::now();
        let original = Candidate::from_case(self.case);
        let first = self.evaluate(&original, true)?;
        let mut evaluations = 1u32;
        let (signature, mut best_report) = match (first.signature, first.report) {
            (Some(s), Some(r)) => (s, r),
            (_, report) => {
                let why = match report.as_ref().and_then(|r| r.error.clone()) {
                    Some(e) => format!("it could not be judged: {e}"),
                    None if report.is_none() => "the oracle cannot judge it".to_string(),
                    None => "it passes".to_string(),
                };
                return Err(Error::input(format!(
                    "nothing to shrink: case `{}` on engine `{}` against oracle `{}`: {why}",
                    self.case.id,
                    self.engine,
                    self.oracle.name()
                ))
                .file(&self.case.file)
                .hint("shrink a case that fails; check the engine and the oracle"));
            }
        };
        let oracle = self.oracle.name();
        // Candidates need the zoo's re-runs only to find a `known_bug` hint the signature asks for.
        let probes = signature.hint == Some(crate::diagnose::HintKind::KnownBug);
        let original_size = original.size();
        self.say(format!("{}: {original_size} fails on `{}` against {oracle}: {signature}", self.case.id, self.engine));
        let mut tree = InputTree::new(original.clone(), self.layout.clone());
        let mut stopped_early = None;
        if tree.simplify() {
            loop {
                if evaluations >= self.budget.evaluations {
                    stopped_early = Some(format!("the budget of {} evaluations is used up", self.budget.evaluations));
                } else if let Some(t) = self.budget.time.filter(|t| start.elapsed() > *t) {
                    stopped_early = Some(format!("the time limit of {} ms is reached", t.as_millis()));
                }
                if stopped_early.is_some() {
                    // Back to the smallest failing input.
                    while tree.complicate() {}
                    break;
                }
                let cand = tree.current();
                let eval = self.evaluate(&cand, probes)?;
                evaluations += 1;
                let same = eval.signature.as_ref().is_some_and(|s| signature.matches(s));
                let more = if same {
                    best_report = eval.report.expect("a signature comes with a report");
                    self.say(format!("eval {evaluations}: {} ({}): fails the same way", cand.size(), tree.change()));
                    tree.simplify()
                } else {
                    tree.complicate()
                };
                if !more {
                    break;
                }
            }
        }
        let minimal = tree.current();
        if !probes && minimal != original {
            // The minimal input's report with every hint (not an evaluation of the search).
            if let Some(r) = self.evaluate(&minimal, true)?.report {
                best_report = r;
            }
        }
        let minimal_size = minimal.size();
        let case = candidate_case(self.case, &minimal, &self.layout);
        let elapsed = start.elapsed();
        self.say(format!(
            "{evaluations} evaluations in {:.1} s: {original_size} -> {minimal_size}",
            elapsed.as_secs_f64()
        ));
        Ok(Shrunk {
            signature,
            original,
            minimal,
            original_size,
            minimal_size,
            case,
            report: best_report,
            evaluations,
            elapsed,
            stopped_early,
            oracle,
        })
    }
}

pub use crate::case::OracleChoice;

/// The oracle when the command line gives none: the case's `shrink.oracle`; else the reference
/// engine for any other engine it can check; for the reference engine itself, the goldens'
/// prefixes on causal models, else a live HF process.
pub fn default_oracle(case: &Case, engine: &str, registry: &crate::engine::Registry) -> OracleChoice {
    if let Some(o) = case.shrink.as_ref().and_then(|s| s.oracle.clone()) {
        return o;
    }
    let reference = registry.get("reference");
    if engine != "reference" && reference.is_some_and(|r| r.supports(&case.model).is_ok()) {
        OracleChoice::Engine("reference".to_string())
    } else if case.model.structure.causal {
        OracleChoice::Prefix
    } else {
        OracleChoice::Hf
    }
}

/// Shrink `case` on engine `engine` of `suite` against `oracle`.
pub fn shrink_case(
    suite: &crate::runner::Suite,
    case: &Case,
    engine: &Arc<dyn Engine>,
    oracle: &OracleChoice,
    budget: Budget,
    progress: bool,
) -> Result<Shrunk> {
    let model = suite.model(engine, &case.model)?;
    if let Some(n) = case.inputs.named.first() {
        return Err(Error::input(format!(
            "case `{}` gives `{}` (a named input): shrinking token ids does not apply",
            case.id, n.name
        ))
        .file(&case.file)
        .hint("named inputs shrink by batch rows: `shrink::rows::shrink_rows` (what `harness shrink` runs)"));
    }
    if case.taps.iter().any(|t| t.tolerance.noise.is_some()) && *oracle != OracleChoice::Prefix {
        return Err(Error::input(format!(
            "case `{}` has `noise:` tolerances, which need the goldens' noise floors; the oracle `{oracle}` has none",
            case.id
        ))
        .file(&case.file)
        .hint("use `--oracle prefix` (causal models), or tolerances in atol/rtol/cosine/sqnr_db"));
    }
    let mut boxed: Box<dyn Oracle> = match oracle {
        OracleChoice::Engine(name) => {
            let e = suite.registry.get(name).ok_or_else(|| {
                Error::input(format!("unknown oracle engine `{name}`"))
                    .hint(format!("engines: {}", suite.registry.names().join(", ")))
            })?;
            if let Err(why) = e.supports(&case.model) {
                return Err(Error::input(format!("oracle engine `{name}` cannot run {}: {why}", case.model.class))
                    .hint("choose another oracle"));
            }
            Box::new(oracle::EngineOracle { engine: name.clone(), model: suite.model(e, &case.model)? })
        }
        OracleChoice::Prefix => Box::new(oracle::PrefixOracle::new(case, suite.store.open(case)?)?),
        OracleChoice::Hf => Box::new(hf::HfOracle::start(&suite.root)?),
    };
    let probes = ProbeCache::new(&case.model);
    Shrinker {
        case,
        engine: engine.name(),
        model: model.as_ref(),
        oracle: boxed.as_mut(),
        probes: &probes,
        layout: Layout::for_case(case, *oracle == OracleChoice::Prefix),
        budget,
        progress,
    }
    .run()
}
