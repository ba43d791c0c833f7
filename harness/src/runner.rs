//! Cases x engines -> libtest-mimic trials, named `{engine}::{case}`.
//!
//! The runner registers every external engine declared in `cases/engines/`, discovers every
//! `cases/**/*.yaml` (except `cases/models/` and `cases/engines/`), loads and validates each
//! case, and makes one trial per engine that runs it. A case or engine file that fails to load
//! becomes one failing trial `load::{case}` / `load::engines/{name}` with the error, so a bad
//! file never hides the others. A trial whose engine is not installed here is ignored with the
//! reason (outside CI; in CI it fails). libtest-mimic gives filters, `--exact`, `--list`,
//! `--ignored`, `--format json` and nextest compatibility.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Conclusion, Failed, Trial};

use crate::case::{Case, ModelSpec, case_id, load_case, peek_absent};
use crate::engine::external;
use crate::engine::{Engine, LoadedModel, Registry};
use crate::error::{Error, ErrorKind, Pos, Result, did_you_mean, display_path};
use crate::expected::{EngineOutputs, Expected};
use crate::findings::Expectations;
use crate::golden::Store;
use crate::report::{TrialReport, Verdict, terminal};
use crate::timings::{self, Phase};

/// Sub-directories of `cases/` that hold specs or other kinds of cases, not golden cases.
pub const RESERVED_DIRS: &[&str] = &["models", "engines", crate::findings::DIR, crate::metamorphic::DIR];

type ModelSlot = Arc<OnceLock<std::result::Result<Arc<dyn LoadedModel>, Error>>>;
type ReferenceSlot = Arc<OnceLock<std::result::Result<Arc<EngineOutputs>, Error>>>;

pub struct Suite {
    pub root: PathBuf,
    /// The project's settings (harness.toml): directories, commands, default engines.
    pub project: Arc<crate::project::Project>,
    pub registry: Registry,
    pub store: Store,
    /// Engine files under `cases/engines/` that did not load: (name, file, error).
    pub engine_errors: Vec<(String, PathBuf, Error)>,
    models: Mutex<HashMap<(String, String), ModelSlot>>,
    /// Outputs of reference engines, per (engine, case), for cases with `reference: {engine}`.
    references: Mutex<HashMap<(String, String), ReferenceSlot>>,
    /// Reports of the trials run so far (for summaries and report files).
    pub reports: Mutex<Vec<TrialReport>>,
    /// `cases/expected/*.yaml`, read once.
    expectations: OnceLock<std::result::Result<Expectations, Error>>,
    /// Trials marked ignored because their model is absent, with why.
    pub ignored: Mutex<Vec<(String, Error)>>,
}

pub use crate::project::find_root;

/// Every case file under `root/cases`, sorted.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let cases = crate::project::cases_dir(root);
    let mut out = Vec::new();
    walk(&cases, &cases, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(Error::input("no cases found")
            .file(&cases)
            .hint("add a case as cases/<name>.yaml; see docs/cases-and-inputs.md"));
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

impl Suite {
    /// The command that reruns one trial (the project's `commands.rerun`, or the front-end's).
    pub fn rerun_command(&self, trial: &str) -> String {
        self.project.rerun_command(trial)
    }
}

/// Register the external engines of `root/cases/engines/` in `registry`; returns the files that
/// did not load (a name taken by a built-in engine is an error too).
pub fn add_external_engines(root: &Path, registry: &mut Registry) -> Vec<(String, PathBuf, Error)> {
    let found = match external::discover(root) {
        Ok(f) => f,
        Err(e) => return vec![("engines".into(), external::spec::engines_dir(root), e)],
    };
    let mut errors = Vec::new();
    for (name, file, engine) in found {
        match engine {
            Ok(_) if registry.get(&name).is_some() => {
                let e = Error::input(format!("engine name `{name}` is taken by a built-in engine"))
                    .file(&file)
                    .hint("rename the file: the engine's name is its file name");
                errors.push((name, file, e));
            }
            Ok(e) => registry.add(Arc::new(e)),
            Err(e) => errors.push((name, file, e)),
        }
    }
    errors
}

impl Suite {
    /// A suite over `root` with `registry` plus the external engines of `root/cases/engines/`.
    pub fn new(root: PathBuf, registry: Registry) -> Arc<Suite> {
        let project = crate::project::or_default(&root);
        Suite::with_project(project, registry)
    }

    /// A suite of `project` (its root, directories and commands) with `registry` plus its
    /// external engines.
    pub fn with_project(project: Arc<crate::project::Project>, mut registry: Registry) -> Arc<Suite> {
        let root = project.root.clone();
        let engine_errors = add_external_engines(&root, &mut registry);
        Arc::new(Suite {
            store: Store::new(&root),
            project,
            root,
            registry,
            engine_errors,
            models: Mutex::new(HashMap::new()),
            references: Mutex::new(HashMap::new()),
            reports: Mutex::new(Vec::new()),
            expectations: OnceLock::new(),
            ignored: Mutex::new(Vec::new()),
        })
    }

    /// A registered engine by name; an unknown one is an error located at `pos` in `file`.
    fn lookup(&self, name: &str, file: &Path, pos: Option<Pos>) -> Result<Arc<dyn Engine>> {
        if let Some(e) = self.registry.get(name) {
            return Ok(e.clone());
        }
        if let Some((_, efile, err)) = self.engine_errors.iter().find(|(n, ..)| n == name) {
            return Err(Error::input(format!(
                "engine `{name}` is declared in {}, which does not load: {}",
                display_path(efile),
                err.msg
            ))
            .file(file)
            .at(pos)
            .hint(format!("fix that file (the trial `load::engines/{name}` has the details)")));
        }
        let known = self.registry.names();
        let hint = match did_you_mean(name, known.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("known engines: {}", known.join(", ")),
        };
        Err(Error::input(format!("unknown engine `{name}`")).file(file).at(pos).hint(hint))
    }

    /// The engine a case with `reference: {engine}` is compared against.
    pub fn reference_engine(&self, case: &Case) -> Result<Option<Arc<dyn Engine>>> {
        let Some(r) = &case.reference else { return Ok(None) };
        self.lookup(&r.engine, &case.file, r.pos).map(Some)
    }

    /// Why `engine` cannot run `case` (it, or the case's reference engine, does not implement the
    /// model's class or config), if so: a capability, reported as an ignored trial with the reason.
    pub fn cannot_run(&self, case: &Case, engine: &Arc<dyn Engine>) -> Option<String> {
        if let Err(why) = engine.supports(&case.model) {
            return Some(format!(
                "engine `{}` cannot run model `{}` ({}): {why}",
                engine.name(),
                case.model.id,
                case.model.class
            ));
        }
        let reference = self.reference_engine(case).ok().flatten()?;
        reference.supports(&case.model).err().map(|why| {
            format!(
                "the case's reference engine `{}` cannot run model `{}` ({}): {why}",
                reference.name(),
                case.model.id,
                case.model.class
            )
        })
    }

    /// What `case` is compared against: its goldens, or its reference engine's outputs (run
    /// once per case and shared by its trials).
    pub fn expected(&self, case: &Case) -> Result<Arc<dyn Expected>> {
        let Some(engine) = self.reference_engine(case)? else {
            return Ok(Arc::new(timings::time(Phase::OpenGoldens, || self.store.open(case))?));
        };
        let slot = {
            let mut m = self.references.lock().unwrap();
            m.entry((engine.name().to_string(), case.id.clone())).or_default().clone()
        };
        let outputs = slot
            .get_or_init(|| {
                let model = timings::time(Phase::EngineLoad, || self.model(&engine, &case.model))?;
                // The reference engine's run is a forward pass, not harness overhead.
                timings::time(Phase::Forward, || crate::expected::from_engine(case, engine.name(), model.as_ref()))
                    .map(Arc::new)
            })
            .clone()?;
        Ok(outputs)
    }

    /// Why a trial of `case` on `engine` cannot run here (its engine or reference engine is not
    /// installed), if so.
    pub fn unavailable(&self, case: &Case, engine: &Arc<dyn Engine>) -> Option<String> {
        let reference = self.reference_engine(case).ok().flatten();
        engine.unavailable().or_else(|| reference.and_then(|r| r.unavailable()))
    }

    /// Load `spec` on `engine` once per run; concurrent trials wait for the first load.
    pub fn model(&self, engine: &Arc<dyn Engine>, spec: &ModelSpec) -> Result<Arc<dyn LoadedModel>> {
        let slot = {
            let mut m = self.models.lock().unwrap();
            m.entry((engine.name().to_string(), spec.id.clone())).or_default().clone()
        };
        slot.get_or_init(|| engine.load(spec).map(Arc::from)).clone()
    }

    /// Drop every loaded model: external engines get `shutdown`, their processes stop and their
    /// temporary files go. The end of a run calls it, because `harness run` ends with
    /// `process::exit`, which runs no destructors (each run left a directory in the temp dir).
    pub fn release_models(&self) {
        let slots: Vec<ModelSlot> = self.models.lock().unwrap().drain().map(|(_, s)| s).collect();
        drop(slots);
    }

    /// The engines that run `case`: its `engines:` list (each may still be unable to run the
    /// model: see [`Suite::cannot_run`]), else every default engine that runs the model (except
    /// the case's reference engine, if it has one).
    pub fn engines_for(&self, case: &Case) -> Result<Vec<Arc<dyn Engine>>> {
        let reference = self.reference_engine(case)?.map(|e| e.name().to_string());
        match &case.engines {
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let pos = case.engine_positions.get(i).copied().flatten();
                    let e = self.lookup(n, &case.file, pos)?;
                    if reference.as_deref() == Some(n.as_str()) {
                        return Err(Error::input(format!(
                            "engine `{n}` is this case's reference: it would be compared with itself"
                        ))
                        .file(&case.file)
                        .at(pos)
                        .hint("remove it from `engines:`, or name another `reference:`"));
                    }
                    Ok(e)
                })
                .collect(),
            None => Ok(self
                .registry
                .all()
                .iter()
                .filter(|e| self.default_engine(e.as_ref()) && e.supports(&case.model).is_ok())
                .filter(|e| reference.as_deref() != Some(e.name()))
                .cloned()
                .collect()),
        }
    }

    /// Whether `e` runs on cases that list no engines: the project's `engines.default` when it
    /// sets one, else the engine's own default.
    fn default_engine(&self, e: &dyn Engine) -> bool {
        match &self.project.default_engines {
            Some(names) => names.iter().any(|n| n == e.name()),
            None => e.default_enabled(),
        }
    }

    /// Why no default engine runs `case`, engine by engine.
    fn why_no_engine(&self, case: &Case) -> String {
        let reasons: Vec<String> = self
            .registry
            .all()
            .iter()
            .filter(|e| self.default_engine(e.as_ref()))
            .filter_map(|e| e.supports(&case.model).err().map(|why| format!("{}: {why}", e.name())))
            .collect();
        format!(
            "no engine here runs model `{}` ({}): {} (hint: list an engine that runs it under `engines:`, e.g. an external engine whose `families:` match)",
            case.model.id,
            case.model.class,
            reasons.join("; ")
        )
    }

    fn error_report(&self, trial: &str, engine: &str, case_id: &str, file: &Path, err: &Error) -> TrialReport {
        let mut r = TrialReport::new(trial.to_string(), engine, case_id, file.to_path_buf(), self.rerun_command(trial));
        r.verdict = Verdict::Error;
        r.error = Some(err.to_string());
        r
    }

    /// The expected findings of every engine (`cases/expected/`), read on first use.
    pub fn expectations(&self) -> std::result::Result<&Expectations, Error> {
        self.expectations
            .get_or_init(|| {
                let ids: Vec<String> =
                    discover(&self.root)?.iter().map(|f| case_id(&crate::project::cases_dir(&self.root), f)).collect();
                Expectations::load(&self.root, &self.registry.names(), &ids)
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Run one case on one engine and record the report.
    pub fn run_trial(&self, case: &Case, engine: &Arc<dyn Engine>) -> TrialReport {
        let trial = format!("{}::{}", engine.name(), case.id);
        // A reduced-precision engine is judged by its own tolerance, on every tap.
        let owned;
        let case = match engine.tolerance() {
            Some(t) => {
                let mut c = case.clone();
                c.tolerance = t.clone();
                for tap in &mut c.taps {
                    tap.tolerance = t.clone();
                }
                owned = c;
                &owned
            }
            None => case,
        };
        // An engine that panics fails its own trial with the panic message; the run goes on.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ready = match self.unavailable(case, engine) {
                Some(reason) => Err(Error::engine(reason).file(&case.file)),
                None => self
                    .expected(case)
                    .and_then(|g| Ok((g, timings::time(Phase::EngineLoad, || self.model(engine, &case.model))?))),
            };
            match ready {
                Ok((expected, model)) => {
                    let rerun = self.rerun_command(&trial);
                    let cache = crate::catalogue::ProbeCache::new(&case.model);
                    let probes = crate::catalogue::ReferenceProbes { cache: &cache, case };
                    let mut r =
                        crate::trial::run(case, engine.name(), model.as_ref(), expected.as_ref(), rerun, Some(&probes));
                    // Depth bisection needs the depth goldens: not for cases whose reference is an engine.
                    if model.taps().is_some()
                        && let Some(goldens) = expected.goldens()
                    {
                        r.bisection = timings::time(Phase::Diagnose, || {
                            crate::bisect::bisect(case, engine.as_ref(), goldens, &r)
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
            report.expected = Some(crate::findings::check(e, file, &report));
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
            let name = format!("load::{}", crate::findings::DIR);
            let report =
                self.error_report(&name, "load", crate::findings::DIR, e.file.as_deref().unwrap_or(&self.root), &e);
            let suite = self.clone();
            trials.push(Trial::test(name, move || {
                suite.reports.lock().unwrap().push(report);
                Err(Failed::from(format!("error: {e}")))
            }));
        }
        for (name, file, e) in &self.engine_errors {
            let trial = format!("load::engines/{name}");
            let report = self.error_report(&trial, "load", &format!("engines/{name}"), file, e);
            let suite = self.clone();
            let msg = format!("error: {e}");
            trials.push(Trial::test(trial, move || {
                suite.reports.lock().unwrap().push(report);
                Err(Failed::from(msg))
            }));
        }
        let ci = crate::golden::pending::ci_is_set();
        for file in files {
            let id = case_id(&crate::project::cases_dir(&self.root), &file);
            let loaded = load_case(&self.root, &file, &mut models).and_then(|c| {
                let engines = self.engines_for(&c)?;
                Ok((c, engines))
            });
            match loaded {
                Err(e) if e.kind == ErrorKind::ModelAbsent => {
                    // Ignored, never passed: `--ignored` / `--include-ignored` run them, and then
                    // they fail with this error.
                    let (class, listed) = peek_absent(&file, &models).unzip();
                    let engines: Vec<String> = match listed.flatten() {
                        Some(list) => list,
                        None => {
                            let named: Vec<String> = self
                                .registry
                                .all()
                                .iter()
                                .filter(|en| en.default_enabled() && class.as_ref().is_none_or(|c| en.implements(c)))
                                .map(|en| en.name().to_string())
                                .collect();
                            if named.is_empty() { vec!["load".to_string()] } else { named }
                        }
                    };
                    for engine in engines {
                        let name = format!("{engine}::{id}");
                        let report = self.error_report(&name, &engine, &id, &file, &e);
                        self.ignored.lock().unwrap().push((name.clone(), e.clone()));
                        let (suite, e) = (self.clone(), e.clone());
                        trials.push(
                            Trial::test(name, move || {
                                suite.reports.lock().unwrap().push(report);
                                Err(Failed::from(format!("error: {e}")))
                            })
                            .with_ignored_flag(true),
                        );
                    }
                }
                Err(e) => trials.push(self.load_failure(&id, &file, e)),
                Ok((case, engines)) => {
                    let case = Arc::new(case);
                    if engines.is_empty() {
                        // No engine here runs this class: said, never silently skipped.
                        let why = self.why_no_engine(&case);
                        trials.push(Trial::ignorable_test(format!("none::{}", case.id), move || {
                            Ok(Completion::ignored_with(why))
                        }));
                    }
                    for engine in engines {
                        let suite = self.clone();
                        let case = case.clone();
                        let name = format!("{}::{}", engine.name(), case.id);
                        trials.push(Trial::ignorable_test(name, move || {
                            // A capability the engine lacks: ignored with the reason, also in CI.
                            if let Some(reason) = suite.cannot_run(&case, &engine) {
                                return Ok(Completion::ignored_with(reason));
                            }
                            // In CI a missing engine fails (run_trial reports it); never silently.
                            if !ci && let Some(reason) = suite.unavailable(&case, &engine) {
                                return Ok(Completion::ignored_with(reason));
                            }
                            let r = suite.run_trial(&case, &engine);
                            if r.ok() { Ok(Completion::Completed) } else { Err(Failed::from(terminal::render(&r))) }
                        }));
                    }
                }
            }
        }
        trials.extend(self.metamorphic_trials());
        Ok(trials)
    }

    /// The failing `load::{id}` trial of a file that did not load, with its report.
    fn load_failure(self: &Arc<Self>, id: &str, file: &Path, e: Error) -> Trial {
        let name = format!("load::{id}");
        let report = self.error_report(&name, "load", id, file, &e);
        let suite = self.clone();
        Trial::test(name, move || {
            suite.reports.lock().unwrap().push(report);
            Err(Failed::from(format!("error: {e}")))
        })
    }

    /// One trial per metamorphic case (`cases/metamorphic/`) and engine.
    fn metamorphic_trials(self: &Arc<Self>) -> Vec<Trial> {
        let ci = crate::golden::pending::ci_is_set();
        let mut models = BTreeMap::new();
        let mut trials = Vec::new();
        for file in crate::metamorphic::discover(&self.root) {
            let id = case_id(&crate::project::cases_dir(&self.root), &file);
            let loaded = crate::metamorphic::load(&self.root, &file, &mut models).and_then(|m| {
                let engines = self.engines_for(&m.base)?;
                Ok((m, engines))
            });
            match loaded {
                Err(e) => trials.push(self.load_failure(&id, &file, e)),
                Ok((meta, engines)) => {
                    let meta = Arc::new(meta);
                    for engine in engines {
                        let (suite, meta) = (self.clone(), meta.clone());
                        trials.push(Trial::ignorable_test(format!("{}::{}", engine.name(), meta.id), move || {
                            if let Some(reason) = suite.cannot_run(&meta.base, &engine) {
                                return Ok(Completion::ignored_with(reason));
                            }
                            // As for golden trials: a missing engine is ignored with the reason
                            // outside CI, and fails in CI.
                            if !ci && let Some(reason) = suite.unavailable(&meta.base, &engine) {
                                return Ok(Completion::ignored_with(reason));
                            }
                            let model = suite.model(&engine, &meta.base.model);
                            let model = model.as_ref().map(|m| m.as_ref()).map_err(Clone::clone);
                            let rerun = suite.rerun_command(&format!("{}::{}", engine.name(), meta.id));
                            let (report, message) = crate::metamorphic::run_trial(&meta, engine.as_ref(), model, rerun);
                            let pass = report.verdict == Verdict::Pass;
                            suite.reports.lock().unwrap().push(report);
                            if pass { Ok(Completion::Completed) } else { Err(Failed::from(message)) }
                        }));
                    }
                }
            }
        }
        trials
    }
}

/// The case runner as a test binary's `main` (a `[[test]]` with `harness = false`):
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     harness::Harness::new().run()
/// }
/// ```
///
/// Add your own engines with [`Harness::engine`]; the project is found from the current
/// directory (cargo runs tests in the package's directory) unless [`Harness::root`] names it.
pub struct Harness {
    registry: Registry,
    root: Option<PathBuf>,
    report_dir: Option<PathBuf>,
    rerun: Option<String>,
    filters: Vec<String>,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// The built-in engines of this build (by cargo feature) and the project's external engines.
    pub fn new() -> Harness {
        Harness { registry: crate::engine::builtin(), root: None, report_dir: None, rerun: None, filters: vec![] }
    }
    /// No built-in engine: only yours and the project's external engines.
    pub fn without_builtin_engines(mut self) -> Harness {
        self.registry = Registry::default();
        self
    }
    /// Register an engine (replacing a built-in one of the same name).
    pub fn engine(mut self, engine: impl Engine + 'static) -> Harness {
        self.registry.add(Arc::new(engine));
        self
    }
    /// The project root (default: found from the current directory, or `$HARNESS_ROOT`).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Harness {
        self.root = Some(root.into());
        self
    }
    /// Write report.json, junit.xml and index.html there at the end (default: `$HARNESS_REPORT`).
    pub fn report_dir(mut self, dir: impl Into<PathBuf>) -> Harness {
        self.report_dir = Some(dir.into());
        self
    }
    /// The command printed to rerun one trial, with `{trial}` (default: the project's
    /// `commands.rerun`).
    pub fn rerun(mut self, template: impl Into<String>) -> Harness {
        self.rerun = Some(template.into());
        self
    }
    /// Run only the trials matching one of `filters` (substrings; whole names with `--exact`),
    /// beyond `args`' own filter: libtest's several positional filters ([`parse_args`]).
    pub fn filters(mut self, filters: Vec<String>) -> Harness {
        self.filters = filters;
        self
    }
    /// Run the trials `args` select; errors before any trial ran (no project, no case) are
    /// returned.
    pub fn run_with(self, args: &Arguments) -> Result<(Arc<Suite>, Conclusion)> {
        let root = match self.root {
            Some(r) => r,
            None => find_root()?,
        };
        let mut project = (*crate::project::for_root(&root)?).clone();
        if let Some(t) = &self.rerun {
            project = project.with_rerun(t);
        }
        run_project(args, Arc::new(project), self.registry, self.report_dir, &self.filters)
    }
    /// Parse libtest's arguments from the command line, run, and say how it went.
    pub fn run(self) -> std::process::ExitCode {
        let (args, filters) = parse_args(std::env::args());
        match self.filters(filters).run_with(&args) {
            Ok((_, conclusion)) => conclusion.exit_code(),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(2)
            }
        }
    }
}

/// libtest's command line, as `cargo test` passes it: like `Arguments::from_iter`, but with any
/// number of positional filters (libtest-mimic takes one). A trial runs when it matches any of
/// them (a substring, or the whole name with `--exact`). `--timings` is taken out too.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> (Arguments, Vec<String>) {
    // libtest flags that take a value: the next argument is that value, not a filter.
    const WITH_VALUE: &[&str] =
        &["--test-threads", "--logfile", "--skip", "--color", "--format", "-Z", "--report-time", "--shuffle-seed"];
    let args = crate::timings::take_flag(args);
    let mut kept = Vec::new();
    let mut filters = Vec::new();
    let mut it = args.into_iter();
    if let Some(bin) = it.next() {
        kept.push(bin);
    }
    while let Some(a) = it.next() {
        if a.starts_with('-') {
            let takes_value = WITH_VALUE.contains(&a.as_str());
            kept.push(a);
            if takes_value && let Some(v) = it.next() {
                kept.push(v);
            }
        } else {
            filters.push(a);
        }
    }
    if filters.len() == 1 {
        kept.push(filters.pop().unwrap());
    }
    (Arguments::from_iter(kept), filters)
}

/// Keep the trials that match any of `filters` (none: all).
fn keep_matching(trials: &mut Vec<Trial>, filters: &[String], exact: bool) {
    if filters.is_empty() {
        return;
    }
    trials.retain(|t| filters.iter().any(|f| if exact { t.name() == f } else { t.name().contains(f.as_str()) }));
}

/// Entry point shared by `tests/cases.rs` and older callers: [`Harness`] with `registry`.
pub fn main_with(args: &Arguments, registry: Registry) -> std::process::ExitCode {
    match (Harness { registry, root: None, report_dir: None, rerun: None, filters: vec![] }).run_with(args) {
        Ok((_, c)) => c.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Run the trials selected by `args` in the project found from the current directory; returns
/// the suite (with its reports) and the conclusion. Report files go to `$HARNESS_REPORT` when set.
pub fn run_suite(args: &Arguments, registry: Registry) -> Result<(Arc<Suite>, Conclusion)> {
    run_suite_with(args, registry, None)
}

/// [`run_suite`], writing report files into `report_dir` (else `$HARNESS_REPORT`) at the end.
pub fn run_suite_with(
    args: &Arguments,
    registry: Registry,
    report_dir: Option<PathBuf>,
) -> Result<(Arc<Suite>, Conclusion)> {
    Harness { registry, root: None, report_dir, rerun: None, filters: vec![] }.run_with(args)
}

fn run_project(
    args: &Arguments,
    project: Arc<crate::project::Project>,
    registry: Registry,
    report_dir: Option<PathBuf>,
    filters: &[String],
) -> Result<(Arc<Suite>, Conclusion)> {
    let start = std::time::Instant::now();
    let suite = Suite::with_project(project, registry);
    let mut trials = timings::time(Phase::Cases, || suite.trials())?;
    keep_matching(&mut trials, filters, args.exact);
    if !args.list && !args.ignored && !args.include_ignored {
        let note = ignored_note(&suite, &trials, args);
        if !note.is_empty() {
            eprint!("{note}");
        }
    }
    let conclusion = libtest_mimic::run(args, trials);
    suite.release_models();
    if timings::enabled() && !args.list {
        let threads = args.test_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        println!("\n{}", timings::render(start.elapsed(), threads));
    }
    if !args.list {
        crate::report::after_run(&suite.root, &suite.reports.lock().unwrap(), report_dir)?;
    }
    Ok((suite, conclusion))
}

/// Why the selected ignored trials are ignored (their model is absent), one paragraph per
/// model, with the command that provides it.
pub fn ignored_note(suite: &Suite, trials: &[Trial], args: &Arguments) -> String {
    let selected = |name: &str| trials.iter().any(|t| t.name() == name && !args.is_filtered_out(t));
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, e) in suite.ignored.lock().unwrap().iter() {
        if selected(name) {
            by_reason.entry(e.to_string()).or_default().push(name.clone());
        }
    }
    let mut s = String::new();
    for (why, names) in by_reason {
        s += &format!("note: {} ignored: {why}\n  {}\n", plural(names.len()), names.join(", "));
    }
    if !s.is_empty() {
        s += "  (they are not passed: `cargo test --test cases -- --include-ignored` runs them, and they fail while the model is absent)\n";
    }
    s
}

fn plural(n: usize) -> String {
    if n == 1 { "1 trial".into() } else { format!("{n} trials") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_filters_as_libtest_takes_them() {
        let a = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let (args, f) = a(&["bin", "llama/mha", "--test-threads", "1", "gqa", "--skip", "x", "--exact"]);
        assert_eq!(f, vec!["llama/mha", "gqa"]);
        assert_eq!(
            (args.filter, args.test_threads, args.skip, args.exact),
            (None, Some(1), vec!["x".to_string()], true)
        );
        let (args, f) = a(&["bin", "one"]);
        assert_eq!((args.filter.as_deref(), f.len()), (Some("one"), 0));
    }
}
