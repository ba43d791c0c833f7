//! Metamorphic cases: properties every correct engine has, checked on generated inputs, with no
//! goldens. A file under `cases/metamorphic/` names a model, the properties, the bounds of the
//! generated inputs and the taps to compare:
//!
//! ```yaml
//! model: llama-tiny-gqa
//! metamorphic: [determinism, batch, padding, prefix, cache]
//! generate: {cases: 4, seed: 1, rows: [1, 3], tokens: [1, 10], padding: [1, 3], steps: [1, 3]}
//! taps: [model.layers.*, logits]
//! tolerance: {atol: 1.0e-4, rtol: 1.0e-3}
//! ```
//!
//! Each property runs as a proptest test over [`crate::shrink::strategy::InputSpace`]; a
//! failing input shrinks with the same [`crate::shrink::tree::InputTree`] as a failing case's
//! input, and its seed is persisted next to the case file
//! (`<name>.proptest-regressions`, replayed first on every run).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner};
use serde::Deserialize;

use crate::case::{Case, IdMatrix, Inputs, ModelSpec, TapSpec, expand_taps, load_model_spec};
use crate::engine::{Engine, LoadedModel};
use crate::error::{Result, did_you_mean};
use crate::report::{TrialReport, Verdict, terminal};
use crate::shrink::input::{Candidate, Layout, specials};
use crate::shrink::strategy::InputSpace;
use crate::tolerance::Tolerance;
use crate::yaml::Doc;
use harness_api::inputs::NamedInput;

pub mod properties;

pub use properties::{Property, Violation};

/// The directory under `cases/` that holds metamorphic cases.
pub const DIR: &str = "metamorphic";

/// Extension of the persisted failing seeds, next to the case file.
pub const REGRESSIONS_EXT: &str = "proptest-regressions";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    #[serde(default)]
    description: Option<String>,
    model: String,
    metamorphic: Vec<String>,
    #[serde(default)]
    generate: GenerateFile,
    taps: Vec<TapSpec>,
    #[serde(default)]
    tolerance: Option<Tolerance>,
    #[serde(default)]
    engines: Option<Vec<String>>,
    /// Named inputs (a model without token ids: an image, a spectrogram), as in a case; each
    /// `random:` input is drawn again with seed + k for generated input k.
    #[serde(default)]
    inputs: BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateFile {
    #[serde(default)]
    cases: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    rows: Option<[usize; 2]>,
    #[serde(default)]
    tokens: Option<[usize; 2]>,
    #[serde(default)]
    padding: Option<[usize; 2]>,
    #[serde(default)]
    steps: Option<[usize; 2]>,
}

/// Bounds of the generated inputs (inclusive ranges).
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    pub cases: u32,
    pub seed: u64,
    pub rows: [usize; 2],
    pub tokens: [usize; 2],
    pub padding: [usize; 2],
    pub steps: [usize; 2],
}

/// A loaded metamorphic case.
#[derive(Debug, Clone)]
pub struct MetaCase {
    /// `metamorphic/<name>`.
    pub id: String,
    pub file: PathBuf,
    pub properties: Vec<Property>,
    pub generate: Generate,
    /// The model, taps, tolerance and engines as a case (its inputs are placeholders): what
    /// generated inputs are run through.
    pub base: Case,
    /// A case with named inputs (`inputs:`): one set per generated input (`generate.cases`);
    /// empty when token inputs are generated.
    pub named: Vec<Vec<NamedInput>>,
    /// Properties listed but not checked, with why (token properties on named inputs).
    pub skipped: Vec<(Property, String)>,
}

/// `v` with the seed of a `random:` input moved by `k` (other forms as they are).
fn reseeded(v: &serde_norway::Value, k: u64) -> serde_norway::Value {
    let mut v = v.clone();
    if let Some(seed) = v.get_mut("random").and_then(|r| r.get_mut("seed"))
        && let Some(n) = seed.as_u64()
    {
        *seed = serde_norway::Value::from(n.wrapping_add(k));
    }
    v
}

/// Every metamorphic case file, sorted.
pub fn discover(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&crate::project::cases_dir(root).join(DIR), &mut out);
    out.sort();
    out
}

/// Load and validate a metamorphic case.
pub fn load(root: &Path, file: &Path, models: &mut BTreeMap<String, Result<ModelSpec>>) -> Result<MetaCase> {
    let mut doc = Doc::read(file)?;
    let id = crate::case::case_id(&crate::project::cases_dir(root), file);
    let mf: MetaFile = doc.parse()?;
    let model = models.entry(mf.model.clone()).or_insert_with(|| load_model_spec(root, &mf.model)).clone();
    let model = model.map_err(|e| {
        if e.kind == crate::error::ErrorKind::Io {
            doc.err("model", format!("no model spec `{}`", mf.model)).hint("model specs live in cases/models/<id>.yaml")
        } else {
            e
        }
    })?;
    let causal = model.structure.causal;
    let named_mode = !mf.inputs.is_empty();
    let main = model.structure.main_input.clone();
    if !named_mode && main != "input_ids" {
        return Err(doc
            .err(
                "model",
                format!("`{}` takes no token ids (its main input is `{main}`): token inputs cannot be generated for it", model.class),
            )
            .hint(format!(
                "give its inputs under `inputs:` as in a case, e.g. `{main}: {{random: {{shape: [...], dtype: float32, seed: 1}}}}`"
            )));
    }
    if named_mode && main == "input_ids" {
        return Err(doc
            .err("inputs", format!("`{}` takes token ids, which a metamorphic case generates", model.class))
            .hint("remove `inputs:` and bound the generated ids with `generate:`; `inputs:` is for image and audio models"));
    }
    if let Some(k) = mf.inputs.keys().find(|k| crate::named::TOKEN_KEYS.contains(&k.as_str())) {
        return Err(doc
            .err(&format!("inputs.{k}"), format!("`{k}` is a token input: a metamorphic case generates those"))
            .hint(
                "give only the forward's named inputs (`pixel_values`, `input_features`, `decoder_input_ids`, ...)",
            ));
    }
    if mf.metamorphic.is_empty() {
        return Err(doc
            .err("metamorphic", "no properties to check")
            .hint(format!("list some of: {}", Property::NAMES.join(", "))));
    }
    let mut properties = Vec::new();
    let mut skipped = Vec::new();
    for (i, name) in mf.metamorphic.iter().enumerate() {
        let at = format!("metamorphic[{i}]");
        let p = Property::parse(name).ok_or_else(|| {
            let hint = match did_you_mean(name, Property::NAMES.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!("properties: {}", Property::NAMES.join(", ")),
            };
            doc.err(&at, format!("unknown property `{name}`")).hint(hint)
        })?;
        if named_mode && !p.takes_named_inputs() {
            skipped
                .push((p, format!("`{name}` varies generated token ids; this case gives named inputs: not checked")));
            continue;
        }
        if p.needs_causal() && !causal {
            return Err(doc
                .err(&at, format!("`{name}` needs a causal model; `{}` is not one", model.class))
                .hint("remove it: later tokens change earlier ones in an encoder by design"));
        }
        if properties.contains(&p) {
            return Err(doc.err(&at, format!("`{name}` is listed twice")).hint("list each property once"));
        }
        properties.push(p);
    }
    let g = &mf.generate;
    let range = |key: &str, v: Option<[usize; 2]>, default: [usize; 2], min: usize| -> Result<[usize; 2]> {
        let r = v.unwrap_or(default);
        if r[0] > r[1] || r[0] < min {
            return Err(doc
                .err(
                    &format!("generate.{key}"),
                    format!("`{key}: [{}, {}]` is not a range of at least {min}", r[0], r[1]),
                )
                .hint(format!("give `[low, high]` with {min} <= low <= high")));
        }
        Ok(r)
    };
    let generate = Generate {
        cases: g.cases.unwrap_or(4).max(1),
        seed: g.seed.unwrap_or(0),
        rows: range("rows", g.rows, [1, 3], 1)?,
        tokens: range("tokens", g.tokens, [1, 10], 1)?,
        padding: range("padding", g.padding, [1, 3], 1)?,
        steps: range("steps", g.steps, [1, 3], 1)?,
    };
    if properties.contains(&Property::Batch) && generate.rows[1] < 2 {
        return Err(doc
            .err("generate.rows", "`batch` needs batches of at least 2 rows")
            .hint("raise the upper bound of `rows` to 2 or more"));
    }
    if let Some(max) = model.config.opt_usize("max_position_embeddings")?.filter(|_| !named_mode) {
        let longest = generate.tokens[1] + generate.padding[1].max(generate.steps[1]) + model.structure.position_offset;
        if longest > max {
            return Err(doc
                .err("generate", format!("inputs of up to {longest} positions exceed max_position_embeddings {max}"))
                .hint("lower `tokens`, `padding` or `steps`"));
        }
    }
    let tolerance = match &mf.tolerance {
        Some(t) => {
            t.validate().map_err(|m| doc.err("tolerance", m))?;
            if t.noise.is_some() {
                return Err(doc
                    .err("tolerance.noise", "`noise:` needs goldens' noise floors; metamorphic cases have no goldens")
                    .hint("use atol/rtol/cosine/sqnr_db"));
            }
            t.clone()
        }
        None => Tolerance::default(),
    };
    if mf.taps.is_empty() {
        return Err(doc.err("taps", "no taps to compare").hint("list at least one, e.g. `taps: [logits]`"));
    }
    let taps = expand_taps(&doc, &mf.taps, &model.structure.modules, &tolerance)?;
    if let Some(e) = &mf.engines
        && e.is_empty()
    {
        return Err(doc
            .err("engines", "empty engine list")
            .hint("remove `engines:` to run every engine that runs the model"));
    }
    let mut named = Vec::new();
    if named_mode {
        for k in 0..generate.cases as u64 {
            let raw: BTreeMap<String, serde_norway::Value> =
                mf.inputs.iter().map(|(n, v)| (n.clone(), reseeded(v, k))).collect();
            named.push(crate::named::validate(&doc, &raw, &model)?);
        }
        let given: Vec<&str> = named[0].iter().map(|n| n.name.as_str()).collect();
        if let Some(need) = model.structure.inputs.iter().find(|i| i.required && !given.contains(&i.name.as_str())) {
            return Err(doc
                .err(
                    "inputs",
                    format!("the forward of `{}` needs `{}`, which `inputs:` does not give", model.class, need.name),
                )
                .hint(format!("add `{}` under `inputs:` ({}, rank {})", need.name, need.dtype, need.rank)));
        }
        if properties.contains(&Property::Batch) && named[0][0].shape[0] < 2 {
            return Err(doc
                .err(
                    "inputs",
                    format!(
                        "`batch` needs inputs of at least 2 rows; `{}` has {}",
                        named[0][0].name, named[0][0].shape[0]
                    ),
                )
                .hint("give a batch of 2 or more (the first axis)"));
        }
    }
    let one = IdMatrix { batch: 1, seq: 1, data: vec![0] };
    let base_inputs = match named.first() {
        Some(set) => Inputs {
            input_ids: IdMatrix { batch: set[0].shape[0], seq: 0, data: vec![] },
            named: set.clone(),
            ..Default::default()
        },
        None => Inputs { input_ids: one, ..Default::default() },
    };
    let base = Case {
        id: id.clone(),
        file: file.to_path_buf(),
        description: mf.description,
        model,
        inputs: base_inputs,
        taps,
        engine_positions: (0..mf.engines.as_ref().map_or(0, |e| e.len()))
            .map(|i| doc.pos(&format!("engines[{i}]")))
            .collect(),
        engines: mf.engines,
        compare_padding: false,
        tolerance,
        decode: None,
        bisect: false,
        text: None,
        shrink: None,
        reference: None,
        engine_options: Default::default(),
    };
    Ok(MetaCase { id, file: file.to_path_buf(), properties, generate, base, named, skipped })
}

impl MetaCase {
    /// The inputs `property` is checked on.
    pub fn space(&self, property: Property) -> InputSpace {
        let g = &self.generate;
        let config = &self.base.model.config;
        let causal = self.base.model.structure.causal;
        let (head, tail, all) = specials(config, causal);
        let vocab = config.usize("vocab_size").unwrap_or(1) as i64;
        let ids: Vec<i64> = (0..vocab).filter(|i| !all.contains(i)).collect();
        let head = head.first().copied();
        let tail = if causal { None } else { tail.first().copied() };
        let steps = property.uses_steps();
        let min_len = if head.is_some() && tail.is_some() && !steps { 3 } else { 1 };
        let layout = Layout {
            vocab: vocab as usize,
            pad_id: config.get("pad_token_id").and_then(|v| v.as_i64()).unwrap_or(0),
            simple_id: ids.first().copied().unwrap_or(0),
            mask: true,
            joint: steps,
            prefix_only: false,
            min_rows: if property == Property::Batch { 2 } else { 1 },
            min_pad: usize::from(property == Property::Padding),
            min_steps: 1,
        };
        let rows = if property == Property::Batch { [g.rows[0].max(2), g.rows[1]] } else { g.rows };
        InputSpace {
            layout,
            rows: rows[0]..=rows[1],
            tokens: g.tokens[0].max(min_len)..=g.tokens[1].max(min_len),
            pad: if property == Property::Padding { g.padding[0]..=g.padding[1] } else { 0..=0 },
            steps: steps.then(|| g.steps[0]..=g.steps[1]),
            head,
            tail,
            ids,
        }
    }

    /// The base case on generated named-input set `k`.
    pub fn named_case(&self, k: usize) -> Case {
        let set = &self.named[k];
        let mut case = self.base.clone();
        case.inputs = Inputs {
            input_ids: IdMatrix { batch: set[0].shape[0], seq: 0, data: vec![] },
            named: set.clone(),
            ..Default::default()
        };
        case
    }

    fn regressions_file(&self) -> PathBuf {
        self.file.with_extension(REGRESSIONS_EXT)
    }
}

/// How one property went.
#[derive(Debug)]
pub enum Outcome {
    Holds {
        inputs: u32,
    },
    /// Fails on `minimal` (shrunk from a generated input).
    Fails {
        minimal: Candidate,
        violation: Violation,
        evaluations: u32,
    },
    /// Fails on generated named-input set `input` (named inputs are not shrunk).
    FailsOn {
        input: usize,
        violation: Violation,
    },
    Error(String),
}

/// `check` for a case with named inputs: each generated set in turn, no shrinking.
fn check_named(meta: &MetaCase, property: Property, model: &dyn LoadedModel) -> Outcome {
    for k in 0..meta.named.len() {
        match properties::check_named(property, &meta.named_case(k), model) {
            Ok(None) => {}
            Ok(Some(violation)) => return Outcome::FailsOn { input: k, violation },
            Err(e) => return Outcome::Error(format!("generated input {}: {e}", k + 1)),
        }
    }
    Outcome::Holds { inputs: meta.named.len() as u32 }
}

/// A named-input set for a person: `pixel_values float32 [2, 3, 16, 16], ...`.
pub fn describe_named(set: &[NamedInput]) -> String {
    set.iter().map(|n| format!("{} {} {:?}", n.name, n.data.dtype(), n.shape)).collect::<Vec<_>>().join(", ")
}

/// Check `property` of `meta` on `model` with proptest: generated inputs, shrinking, and the
/// persisted seeds of earlier failures replayed first.
pub fn check(meta: &MetaCase, property: Property, model: &dyn LoadedModel) -> Outcome {
    if !meta.named.is_empty() {
        return check_named(meta, property, model);
    }
    let defaults = Config::default();
    let env = |k: &str| std::env::var_os(k).is_some();
    // proptest takes the path as &'static str: a few bytes per check, for the process's life.
    let persist: &'static str = Box::leak(meta.regressions_file().to_string_lossy().into_owned().into_boxed_str());
    let config = Config {
        cases: if env("PROPTEST_CASES") { defaults.cases } else { meta.generate.cases },
        max_shrink_iters: if env("PROPTEST_MAX_SHRINK_ITERS") {
            defaults.max_shrink_iters
        } else {
            crate::shrink::DEFAULT_BUDGET
        },
        rng_seed: RngSeed::Fixed(meta.generate.seed.wrapping_add(property as u64)),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(persist))),
        ..defaults
    };
    let space = meta.space(property);
    let layout = space.layout.clone();
    let evaluations = RefCell::new(0u32);
    let last = RefCell::new(None::<Violation>);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&space, |cand| {
        *evaluations.borrow_mut() += 1;
        match properties::check(property, &meta.base, model, &layout, &cand) {
            Ok(None) => Ok(()),
            Ok(Some(v)) => {
                let msg = v.what.clone();
                *last.borrow_mut() = Some(v);
                Err(TestCaseError::fail(msg))
            }
            Err(e) => {
                let v = Violation { what: format!("the engine failed: {e}"), taps: vec![], first: None };
                *last.borrow_mut() = Some(v);
                Err(TestCaseError::fail(e.to_string()))
            }
        }
    });
    match result {
        Ok(()) => Outcome::Holds { inputs: runner.config().cases },
        Err(TestError::Fail(_, minimal)) => {
            // The last failing call was on the minimal input.
            let violation = last.into_inner().unwrap_or(Violation { what: String::new(), taps: vec![], first: None });
            Outcome::Fails { minimal, violation, evaluations: evaluations.into_inner() }
        }
        Err(TestError::Abort(why)) => Outcome::Error(format!("proptest aborted: {why}")),
    }
}

/// Run every property of `meta` on `engine` and build the trial's report; `message` is the text
/// a failing trial prints.
pub fn run_trial(
    meta: &MetaCase,
    engine: &dyn Engine,
    model: Result<&dyn LoadedModel>,
    rerun: String,
) -> (TrialReport, String) {
    let trial = format!("{}::{}", engine.name(), meta.id);
    let mut report = TrialReport::new(trial.clone(), engine.name(), &meta.id, meta.file.clone(), rerun);
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            report.verdict = Verdict::Error;
            report.error = Some(e.to_string());
            return (report, format!("error: {e}"));
        }
    };
    // Outputs-only engines are checked on the taps they produce.
    let produced = model.taps();
    let (taps, skipped) = crate::trial::split_produced(meta.base.taps.iter().collect(), produced.as_deref());
    if taps.is_empty() {
        report.verdict = Verdict::Error;
        let e = format!(
            "engine `{}` produces none of the case's taps (it produces only {})",
            engine.name(),
            produced.unwrap_or_default().join(", ")
        );
        report.error = Some(e.clone());
        return (report, format!("error: {e}"));
    }
    report.notes.extend(crate::trial::not_produced_note(engine.name(), &skipped, produced.as_deref()));
    let mut narrowed = meta.clone();
    narrowed.base.taps = taps.into_iter().cloned().collect();
    let meta = &narrowed;
    for (p, why) in &meta.skipped {
        report.notes.push(format!("{} skipped: {why}", p.name()));
    }
    let mut lines: Vec<String> = report.notes.iter().map(|n| format!("note: {n}")).collect();
    let mut failed = false;
    let mut persisted = false;
    for &p in &meta.properties {
        match check(meta, p, model) {
            Outcome::Holds { inputs } => lines.push(format!("ok   {} ({inputs} generated inputs)", p.name())),
            Outcome::FailsOn { input, violation } => {
                failed = true;
                lines.push(format!("FAIL {}: {}", p.name(), violation.what));
                lines.push(format!(
                    "     on generated input {} of {} ({}; named inputs are not shrunk)",
                    input + 1,
                    meta.named.len(),
                    describe_named(&meta.named[input])
                ));
                if report.verdict == Verdict::Pass {
                    report.verdict = Verdict::Fail;
                    report.taps = violation.taps;
                    report.first_divergence = violation.first;
                }
            }
            Outcome::Fails { minimal, violation, evaluations } => {
                failed = true;
                persisted = true;
                lines.push(format!("FAIL {}: {}", p.name(), violation.what));
                lines.push(format!(
                    "     minimal input ({}, after {evaluations} evaluations): {}",
                    minimal.size(),
                    describe(&minimal, &meta.space(p).layout)
                ));
                if report.verdict == Verdict::Pass {
                    report.verdict = Verdict::Fail;
                    report.taps = violation.taps;
                    report.first_divergence = violation.first;
                }
            }
            Outcome::Error(e) => {
                lines.push(format!("ERROR {}: {e}", p.name()));
                report.verdict = Verdict::Error;
                report.error.get_or_insert(e);
            }
        }
    }
    if failed && persisted {
        lines.push(format!(
            "failing seeds are kept in {} and replayed first",
            crate::error::display_path(&meta.regressions_file())
        ));
    }
    let mut message =
        format!("{} {trial} ({})\n", verdict_word(report.verdict), crate::error::display_path(&meta.file));
    for l in &lines {
        message.push_str(&format!("  {l}\n"));
    }
    if !report.taps.is_empty() {
        message.push_str(&terminal::render(&report));
    }
    (report, message)
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Error => "ERROR",
    }
}

/// An input in the case-file notation: `input_ids [[1, 5]], attention_mask ..., decode [[7]]`.
pub fn describe(c: &Candidate, layout: &Layout) -> String {
    let (inputs, decode) = c.materialize(layout);
    let rows =
        |m: &IdMatrix| format!("[{}]", (0..m.batch).map(|b| format!("{:?}", m.row(b))).collect::<Vec<_>>().join(", "));
    let mut s = format!("input_ids {}", rows(&inputs.input_ids));
    if let Some(m) = inputs.attention_mask.as_ref().filter(|m| m.data.contains(&0)) {
        s.push_str(&format!(", attention_mask {}", rows(m)));
    }
    if let Some(d) = &decode {
        s.push_str(&format!(", then {}", rows(d)));
    }
    s
}
