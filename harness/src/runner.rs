//! Cases x engines -> libtest-mimic trials, named `{engine}::{case}`.
//!
//! The runner discovers every `cases/**/*.yaml` (except `cases/models/` and `cases/engines/`),
//! loads and validates each case, and makes one trial per engine that runs it. A case that fails
//! to load becomes one failing trial `load::{case}` with the error, so a bad file never hides the
//! others. libtest-mimic gives filters, `--exact`, `--list`, `--ignored`, `--format json` and
//! nextest compatibility.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};

use crate::case::{Case, ModelSpec, case_id, load_case};
use crate::engine::{Engine, LoadedModel, Registry};
use crate::engines::reference::ReferenceProbe;
use crate::error::{Error, Result, did_you_mean};
use crate::expect::Expectations;
use crate::golden::Store;
use crate::report::{TrialReport, Verdict, terminal};
use crate::timings::{self, Phase};

/// Sub-directories of `cases/` that hold specs, not cases.
pub const RESERVED_DIRS: &[&str] = &["models", "engines", crate::expect::DIR];

type ModelSlot = Arc<OnceLock<std::result::Result<Arc<dyn LoadedModel>, Error>>>;

pub struct Suite {
    pub root: PathBuf,
    pub registry: Registry,
    pub store: Store,
    models: Mutex<HashMap<(String, String), ModelSlot>>,
    /// Reports of the trials run so far (for summaries and report files).
    pub reports: Mutex<Vec<TrialReport>>,
    /// `cases/expected/*.yaml`, read once.
    expectations: OnceLock<std::result::Result<Expectations, Error>>,
}

/// The repository root: `$HARNESS_ROOT`, else the nearest ancestor of the current directory
/// that has a `cases/` directory.
pub fn find_root() -> Result<PathBuf> {
    if let Ok(r) = std::env::var("HARNESS_ROOT") {
        let p = PathBuf::from(r);
        if !p.join("cases").is_dir() {
            return Err(Error::input("HARNESS_ROOT has no cases/ directory").file(&p));
        }
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), &e))?;
    cwd.ancestors().find(|p| p.join("cases").is_dir() && p.join("goldens").is_dir()).map(Path::to_path_buf).ok_or_else(
        || {
            Error::input("no cases/ and goldens/ directories here or above")
                .file(&cwd)
                .hint("run from the repository, or set HARNESS_ROOT")
        },
    )
}

/// Every case file under `root/cases`, sorted.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let cases = root.join("cases");
    let mut out = Vec::new();
    walk(&cases, &cases, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(Error::input("no cases found").file(&cases).hint("add a case as cases/<name>.yaml; see README.md"));
    }
    Ok(out)
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, &e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, &e))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io(&p, &e))?;
        if ft.is_dir() {
            let top_reserved = dir == base && RESERVED_DIRS.iter().any(|r| p.file_name().is_some_and(|n| n == *r));
            if !top_reserved {
                walk(base, &p, out)?;
            }
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// `cargo test` command that reruns one trial.
pub fn rerun_command(trial: &str) -> String {
    format!("cargo test -p harness --test cases -- --exact '{trial}'")
}

impl Suite {
    pub fn new(root: PathBuf, registry: Registry) -> Arc<Suite> {
        Arc::new(Suite {
            store: Store::new(&root),
            root,
            registry,
            models: Mutex::new(HashMap::new()),
            reports: Mutex::new(Vec::new()),
            expectations: OnceLock::new(),
        })
    }

    /// Load `spec` on `engine` once per run; concurrent trials wait for the first load.
    pub fn model(&self, engine: &Arc<dyn Engine>, spec: &ModelSpec) -> Result<Arc<dyn LoadedModel>> {
        let slot = {
            let mut m = self.models.lock().unwrap();
            m.entry((engine.name().to_string(), spec.id.clone())).or_default().clone()
        };
        slot.get_or_init(|| engine.load(spec).map(Arc::from)).clone()
    }

    /// The engines that run `case`: its `engines:` list, else every default engine for the family.
    pub fn engines_for(&self, case: &Case) -> Result<Vec<Arc<dyn Engine>>> {
        match &case.engines {
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let pos = case.engine_positions.get(i).copied().flatten();
                    let e = self.registry.get(n).ok_or_else(|| {
                        let known = self.registry.names();
                        let hint = match did_you_mean(n, known.iter().copied()) {
                            Some(k) => format!("did you mean `{k}`?"),
                            None => format!("known engines: {}", known.join(", ")),
                        };
                        Error::input(format!("unknown engine `{n}`")).file(&case.file).at(pos).hint(hint)
                    })?;
                    if !e.supports(case.model.family) {
                        return Err(Error::input(format!("engine `{n}` does not support {}", case.model.family.class))
                            .file(&case.file)
                            .at(pos)
                            .hint("remove it from `engines:`"));
                    }
                    Ok(e.clone())
                })
                .collect(),
            None => Ok(self
                .registry
                .all()
                .iter()
                .filter(|e| e.default_enabled() && e.supports(case.model.family))
                .cloned()
                .collect()),
        }
    }

    fn error_report(&self, trial: &str, engine: &str, case_id: &str, file: &Path, err: &Error) -> TrialReport {
        TrialReport {
            trial: trial.to_string(),
            engine: engine.to_string(),
            case: case_id.to_string(),
            case_file: file.to_path_buf(),
            verdict: Verdict::Error,
            taps: vec![],
            first_divergence: None,
            hints: vec![],
            error: Some(err.to_string()),
            rerun: rerun_command(trial),
            notes: vec![],
            bisection: None,
            expected: None,
        }
    }

    /// The expected findings of every engine (`cases/expected/`), read on first use.
    pub fn expectations(&self) -> std::result::Result<&Expectations, Error> {
        self.expectations
            .get_or_init(|| {
                let ids: Vec<String> =
                    discover(&self.root)?.iter().map(|f| case_id(&self.root.join("cases"), f)).collect();
                Expectations::load(&self.root, &self.registry.names(), &ids)
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Run one case on one engine and record the report.
    pub fn run_trial(&self, case: &Case, engine: &Arc<dyn Engine>) -> TrialReport {
        let trial = format!("{}::{}", engine.name(), case.id);
        // An engine that panics fails its own trial with the panic message; the run goes on.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let opened = timings::time(Phase::OpenGoldens, || self.store.open(case));
            match opened.and_then(|g| Ok((g, timings::time(Phase::EngineLoad, || self.model(engine, &case.model))?))) {
                Ok((goldens, model)) => {
                    let probe = ReferenceProbe { case };
                    let mut r = crate::trial::run(
                        case,
                        engine.name(),
                        model.as_ref(),
                        &goldens,
                        rerun_command(&trial),
                        Some(&probe),
                    );
                    if model.taps().is_some() {
                        r.bisection = timings::time(Phase::Diagnose, || {
                            crate::bisect::bisect(case, engine.as_ref(), &goldens, &r)
                        });
                    }
                    r
                }
                Err(e) => self.error_report(&trial, engine.name(), &case.id, &case.file, &e),
            }
        }));
        let mut report = run.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            let e = Error::engine(format!("engine `{}` panicked: {what}", engine.name()))
                .hint("a bug in the engine (or in the harness if the engine is built in); the other trials still ran");
            self.error_report(&trial, engine.name(), &case.id, &case.file, &e)
        });
        if let Ok(exp) = self.expectations()
            && let Some((e, file)) = exp.get(engine.name(), &case.id)
        {
            report.expected = Some(crate::expect::judge(e, file, &report));
        }
        self.reports.lock().unwrap().push(report.clone());
        report
    }

    /// All trials of the suite.
    pub fn trials(self: &Arc<Self>) -> Result<Vec<Trial>> {
        let files = discover(&self.root)?;
        let mut models: BTreeMap<String, Result<ModelSpec>> = BTreeMap::new();
        let mut trials = Vec::new();
        if let Err(e) = self.expectations() {
            let name = format!("load::{}", crate::expect::DIR);
            let report =
                self.error_report(&name, "load", crate::expect::DIR, e.file.as_deref().unwrap_or(&self.root), &e);
            let suite = self.clone();
            trials.push(Trial::test(name, move || {
                suite.reports.lock().unwrap().push(report);
                Err(Failed::from(format!("error: {e}")))
            }));
        }
        for file in files {
            let id = case_id(&self.root.join("cases"), &file);
            let loaded = load_case(&self.root, &file, &mut models).and_then(|c| {
                let engines = self.engines_for(&c)?;
                Ok((c, engines))
            });
            match loaded {
                Err(e) => {
                    let name = format!("load::{id}");
                    let report = self.error_report(&name, "load", &id, &file, &e);
                    let suite = self.clone();
                    trials.push(Trial::test(name, move || {
                        suite.reports.lock().unwrap().push(report);
                        Err(Failed::from(format!("error: {e}")))
                    }));
                }
                Ok((case, engines)) => {
                    let case = Arc::new(case);
                    for engine in engines {
                        let suite = self.clone();
                        let case = case.clone();
                        let name = format!("{}::{}", engine.name(), case.id);
                        trials.push(Trial::test(name, move || {
                            let r = suite.run_trial(&case, &engine);
                            if r.ok() { Ok(()) } else { Err(Failed::from(terminal::render(&r))) }
                        }));
                    }
                }
            }
        }
        Ok(trials)
    }
}

/// Entry point shared by `tests/cases.rs` and `harness run`.
pub fn main_with(args: &Arguments, registry: Registry) -> Conclusion {
    run_suite(args, registry).1
}

/// Run the trials selected by `args`; returns the suite (with its reports) and the conclusion.
/// Report files go to `$HARNESS_REPORT` when it is set.
pub fn run_suite(args: &Arguments, registry: Registry) -> (Arc<Suite>, Conclusion) {
    run_suite_with(args, registry, None)
}

/// [`run_suite`], writing report files into `report_dir` (else `$HARNESS_REPORT`) at the end.
pub fn run_suite_with(args: &Arguments, registry: Registry, report_dir: Option<PathBuf>) -> (Arc<Suite>, Conclusion) {
    let root = match find_root() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let start = std::time::Instant::now();
    let suite = Suite::new(root, registry);
    let trials = match timings::time(Phase::Cases, || suite.trials()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let conclusion = libtest_mimic::run(args, trials);
    if timings::enabled() && !args.list {
        let threads = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        println!("\n{}", timings::render(start.elapsed(), threads));
    }
    if !args.list
        && let Err(e) = crate::report::after_run(&suite.root, &suite.reports.lock().unwrap(), report_dir)
    {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    (suite, conclusion)
}
