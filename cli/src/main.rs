//! The `harness` command line.

mod init;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use harness::case::{Case, case_id, load_case};
use harness::engine::external::{self, EngineMapping, EngineSpec};
use harness::engine::{Engine, Registry};
#[cfg(feature = "reference")]
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::error::{Error, did_you_mean, display_path};
use harness::golden::{Store, atomic, describe, lock, pending, session};
use harness::report::{Verdict, terminal};
use harness::runner::{Suite, discover, find_root};
use harness::shrink::{Budget, OracleChoice, regression, shrink_case};
use harness::tolerance::Tolerance;

#[derive(Parser)]
#[command(name = "harness", version, about = "Differential testing of ML inference engines against HF goldens")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite (every case on every engine) and print a summary report.
    ///
    /// Takes the same arguments as `cargo test -- ...`: any number of filters, --exact, --skip,
    /// --list, --ignored, --format json, --test-threads, --timings.
    Run {
        /// Write report.json, junit.xml and index.html into this directory (also:
        /// HARNESS_REPORT=DIR). Give it before the test arguments.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Pending goldens (written by `tools/regen_goldens.py --pending`) and provenance.
    Goldens {
        #[command(subcommand)]
        cmd: GoldensCmd,
    },
    /// Start a project here (or in DIR): harness.toml, a tiny model spec and case, a CI workflow,
    /// an engine stub, and the case's goldens when a Python with the goldens tool is at hand.
    Init {
        /// Where (default: the current directory); created if absent. Existing files are never
        /// overwritten: init refuses instead.
        dir: Option<PathBuf>,
        /// The engine under test: a program speaking the JSON protocol, or a Rust crate.
        #[arg(long, value_enum, default_value = "external")]
        engine: init::Kind,
        /// The engine's name (trials are named `<name>::<case>`).
        #[arg(long, default_value = "my-engine")]
        name: String,
        /// The Python that has the goldens tool (pip install <harness>/tools).
        #[arg(long, default_value = "python3")]
        python: String,
        /// Where the harness's crates are (for a Rust engine's path dependencies; default: the
        /// checkout this binary was built from).
        #[arg(long, value_name = "DIR")]
        harness_path: Option<PathBuf>,
        /// Write the files only; do not run the goldens tool.
        #[arg(long)]
        no_goldens: bool,
    },
    /// Run one case on one engine and write its taps as .npy files plus dump.json.
    Dump {
        /// Case id: its path under cases/ without .yaml, e.g. llama/mha.
        case: String,
        #[arg(long, default_value = "reference")]
        engine: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Every module of the family, not only the case's taps.
        #[arg(long)]
        every_module: bool,
    },
    /// Compare two .npy files or two directories of them (a dump, a goldens directory). A is the
    /// reference; prints the per-tap table and the first divergence like a trial. Exit code 1
    /// when B is out of tolerance.
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Tolerance (default: atol 1e-4, rtol 1e-3). Giving any criterion replaces the default.
        #[arg(long)]
        atol: Option<f64>,
        #[arg(long)]
        rtol: Option<f64>,
        #[arg(long)]
        cosine: Option<f64>,
        #[arg(long)]
        sqnr_db: Option<f64>,
        /// Also write report.json, junit.xml and index.html into this directory.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// B is this external engine's own dump: map its tensor names and layouts with the rules
        /// of cases/engines/<NAME>.yaml.
        #[arg(long, value_name = "NAME")]
        engine: Option<String>,
        /// Compare only real tokens: an attention mask `[batch, seq]` as a .npy file (0 =
        /// padding), applied to tensors whose leading axes are `[batch, seq]`.
        #[arg(long, value_name = "MASK.npy", conflicts_with = "case")]
        mask: Option<PathBuf>,
        /// Take the mask from this case's inputs (and compare padding if it says
        /// `compare_padding: true`).
        #[arg(long, value_name = "CASE")]
        case: Option<String>,
    },
    /// Shrink a failing case's input to a minimal one that fails the same way (same first
    /// divergent tap family, same hint), print it, and write it as a regression case under
    /// cases/regressions/.
    Shrink {
        /// Case id: its path under cases/ without .yaml, e.g. llama/decode.
        case: String,
        /// The engine under test.
        #[arg(long, default_value = "reference")]
        engine: String,
        /// Where the expected outputs of smaller inputs come from: engine:NAME, hf (a live HF
        /// process, tools/hf_oracle.py) or prefix (the goldens' prefixes, causal models).
        /// Default: the case's `shrink.oracle`, else engine:reference for any other engine.
        #[arg(long, value_name = "ORACLE")]
        oracle: Option<String>,
        /// Evaluations to spend (default: the case's `shrink.budget`, else 300);
        /// PROPTEST_MAX_SHRINK_ITERS caps it, PROPTEST_MAX_SHRINK_TIME (ms) limits the time.
        #[arg(long, value_name = "N")]
        budget: Option<u32>,
        /// Test the reference engine with a port bug of the mutant zoo injected
        /// (e.g. KvCacheWrongPosition, NoSlidingWindow, PoolLastToken).
        #[arg(long, value_name = "MUTATION")]
        inject: Option<String>,
        /// Print the minimal input only; write no regression case.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum GoldensCmd {
    /// List the cases and models with pending goldens.
    Status,
    /// Show per tap how the pending goldens differ from the accepted ones; on a terminal, ask
    /// to accept or reject each.
    Review {
        /// Case ids (or models/<id>); default: everything pending.
        ids: Vec<String>,
        /// Only print, never ask (the default when stdin is not a terminal).
        #[arg(long)]
        no_interactive: bool,
    },
    /// Move pending goldens into place, atomically per directory.
    Accept {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Drop pending goldens; the accepted ones stay untouched.
    Reject {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Print a case's manifest in words: generator versions, model hashes, dtype, tap order.
    Show { case: String },
    /// Regenerate goldens with the project's goldens tool (harness.toml `commands.regen`):
    /// the named cases, or every case.
    Regen {
        /// Case ids; default: every case.
        cases: Vec<String>,
    },
    /// Lay out every golden as a content-addressed store (`<sha[..2]>/<sha>`) in DIR, verified
    /// against the manifests, for upload to the `[goldens] remote` of harness.toml.
    ExportStore {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn fail(e: Error) -> ! {
    eprintln!("error: {e}");
    std::process::exit(2);
}

fn root() -> PathBuf {
    find_root().unwrap_or_else(|e| fail(e))
}

/// Load a case by id; an unknown id gets a did-you-mean from the cases on disk.
fn load(root: &Path, id: &str) -> Case {
    let id = id.trim_end_matches(".yaml");
    let cases = harness::project::cases_dir(root);
    let file = cases.join(format!("{id}.yaml"));
    if !file.is_file() {
        let ids: Vec<String> = discover(root).unwrap_or_default().iter().map(|f| case_id(&cases, f)).collect();
        let hint = match did_you_mean(id, ids.iter().map(String::as_str)) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("cases: {}", ids.join(", ")),
        };
        fail(Error::input(format!("no case `{id}`")).file(&file).hint(hint));
    }
    load_case(root, &file, &mut Default::default()).unwrap_or_else(|e| fail(e))
}

fn engine(registry: &Registry, name: &str) -> Arc<dyn Engine> {
    registry.get(name).cloned().unwrap_or_else(|| {
        let known = registry.names();
        let hint = match did_you_mean(name, known.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("engines: {}", known.join(", ")),
        };
        fail(Error::input(format!("unknown engine `{name}`")).hint(hint))
    })
}

/// The spec of external engine `name` (cases/engines/<name>.yaml).
fn external_engine(root: &Path, name: &str) -> EngineSpec {
    let file = external::engine_file(root, name);
    if !file.is_file() {
        let names: Vec<String> =
            external::spec::discover(root).unwrap_or_default().iter().map(|f| external::spec::engine_name(f)).collect();
        let hint = match did_you_mean(name, names.iter().map(String::as_str)) {
            Some(k) => format!("did you mean `{k}`?"),
            None if names.is_empty() => "declare it in cases/engines/<name>.yaml (docs/engine-protocol.md)".into(),
            None => format!("external engines: {}", names.join(", ")),
        };
        fail(Error::input(format!("no external engine `{name}`")).file(&file).hint(hint));
    }
    external::spec::load(root, &file).unwrap_or_else(|e| fail(e))
}

fn goldens(cmd: GoldensCmd) {
    let root = root();
    let store = Store::new(&root);
    let list = || pending::list(&store.dir).unwrap_or_else(|e| fail(e));
    let need_ids = |ids: &[String], all: bool| {
        if ids.is_empty() && !all {
            fail(Error::input("name the cases to act on, or give --all").hint("see `harness goldens status`"));
        }
    };
    let tidy = || {
        for n in atomic::recover(&store.dir).into_iter().chain(pending::clean_orphans(&store.dir)) {
            eprintln!("note: {n}");
        }
    };
    match cmd {
        GoldensCmd::Status => {
            let all = list();
            if all.is_empty() {
                println!("no pending goldens (tools/regen_goldens.py --pending writes new goldens for review)");
                return;
            }
            println!("pending goldens ({}):", all.len());
            for p in &all {
                let r = session::review_one(&root, p).unwrap_or_else(|e| fail(e));
                let what = if p.kind == pending::Kind::Case {
                    format!("{} of {} taps changed", r.moved(), r.taps.len())
                } else {
                    "model".to_string()
                };
                let notes = if r.notes.is_empty() { String::new() } else { format!("; {}", r.notes.join("; ")) };
                println!("  {:<28} {what}{notes}", p.id);
            }
            println!("review: harness goldens review; then harness goldens accept <case>|--all, or reject");
        }
        GoldensCmd::Review { ids, no_interactive } => {
            let sel = pending::select(list(), &ids, ids.is_empty()).unwrap_or_else(|e| fail(e));
            if sel.is_empty() {
                println!("no pending goldens (tools/regen_goldens.py --pending writes new goldens for review)");
                return;
            }
            let interactive = !no_interactive && std::io::stdin().is_terminal() && !pending::ci_is_set();
            if interactive {
                tidy();
            }
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let input: Option<&mut dyn std::io::BufRead> = if interactive { Some(&mut lock) } else { None };
            session::run(&root, &store.dir, &sel, input, &mut std::io::stdout()).unwrap_or_else(|e| fail(e));
            if !interactive {
                println!("accept: harness goldens accept <case>|--all; reject: harness goldens reject <case>|--all");
            }
        }
        GoldensCmd::Accept { ids, all } => {
            need_ids(&ids, all);
            pending::refuse_in_ci("accept").unwrap_or_else(|e| fail(e));
            tidy();
            for p in pending::select(list(), &ids, all).unwrap_or_else(|e| fail(e)) {
                // The goldens tool's writer lock: never mixed with a regeneration of the same case.
                let _held = lock::hold(&store.dir, &p.id, &mut |m| eprintln!("note: {m}")).unwrap_or_else(|e| fail(e));
                if !p.marker().is_file() {
                    continue; // a model already accepted with its case
                }
                for a in pending::accept(&store.dir, &p).unwrap_or_else(|e| fail(e)) {
                    println!("accepted {}: {} changed, {} removed", a.id, a.changed.len(), a.removed.len());
                }
            }
        }
        GoldensCmd::Reject { ids, all } => {
            need_ids(&ids, all);
            pending::refuse_in_ci("reject").unwrap_or_else(|e| fail(e));
            tidy();
            for p in pending::select(list(), &ids, all).unwrap_or_else(|e| fail(e)) {
                let _held = lock::hold(&store.dir, &p.id, &mut |m| eprintln!("note: {m}")).unwrap_or_else(|e| fail(e));
                if !p.marker().is_file() {
                    continue; // a regeneration that held the lock replaced it
                }
                pending::reject(&p).unwrap_or_else(|e| fail(e));
                println!("rejected {}: the accepted goldens are unchanged", p.id);
            }
        }
        GoldensCmd::Regen { cases } => {
            let project = harness::project::for_root(&root).unwrap_or_else(|e| fail(e));
            let commands: Vec<String> = if cases.is_empty() {
                vec![project.regen_all_command()]
            } else {
                cases.iter().map(|c| project.regen_command(c.trim_end_matches(".yaml"))).collect()
            };
            for c in commands {
                eprintln!("$ {c}");
                let status = std::process::Command::new("sh")
                    .args(["-c", &c])
                    .current_dir(&root)
                    .status()
                    .unwrap_or_else(|e| fail(Error::io(Path::new("sh"), &e)));
                if !status.success() {
                    fail(
                        Error::input(format!("the goldens tool failed ({status}): {c}"))
                            .file(project.file.clone().unwrap_or_else(|| root.clone()))
                            .hint("see its output above; `commands.regen` in harness.toml says how it is run"),
                    );
                }
            }
        }
        GoldensCmd::ExportStore { dir } => {
            let (written, present) =
                harness::golden::remote::export(&store.dir, &dir, &mut |what| eprintln!("  {what}"))
                    .unwrap_or_else(|e| fail(e));
            println!(
                "{} goldens written to {} ({present} already there); upload the directory as it is \
                 and name its URL as `[goldens] remote` in harness.toml",
                written,
                display_path(&dir)
            );
        }
        GoldensCmd::Show { case } => {
            let id = case.trim_end_matches(".yaml").to_string();
            let file = harness::project::cases_dir(&root).join(format!("{id}.yaml"));
            let loaded = load_case(&root, &file, &mut Default::default()).ok();
            print!("{}", describe::show(&store, &id, loaded.as_ref()).unwrap_or_else(|e| fail(e)));
        }
    }
}

/// A zoo mutation by name (its Rust spelling, e.g. `KvCacheWrongPosition`, `LayerNormEps(1e-5)`).
#[cfg(feature = "reference")]
fn zoo_mutation(name: &str) -> Mutation {
    let mut zoo = Mutation::probes("");
    zoo.retain(|m| !matches!(m, Mutation::TransposedWeight(_)));
    zoo.push(Mutation::DropoutOn(0.1));
    zoo.iter().find(|m| format!("{m:?}").eq_ignore_ascii_case(name)).cloned().unwrap_or_else(|| {
        let names: Vec<String> = zoo.iter().map(|m| format!("{m:?}")).collect();
        let hint = match did_you_mean(name, names.iter().map(String::as_str)) {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!("mutations: {}", names.join(", ")),
        };
        fail(Error::input(format!("unknown mutation `{name}`")).hint(hint))
    })
}

fn shrink(
    case: String,
    engine_name: String,
    oracle: Option<String>,
    budget: Option<u32>,
    inject: Option<String>,
    dry_run: bool,
) {
    let root = root();
    let case = load(&root, &case);
    #[cfg_attr(not(feature = "reference"), allow(unused_mut))]
    let mut registry = harness::engine::builtin();
    let engine_name = match inject {
        #[cfg(feature = "reference")]
        Some(m) => {
            if engine_name != "reference" {
                fail(Error::input("--inject applies to the reference engine").hint("drop --engine or --inject"));
            }
            let m = zoo_mutation(&m);
            let name = format!("reference+{m:?}");
            registry.add(Arc::new(ReferenceEngine::mutant(name.clone(), m)));
            name
        }
        #[cfg(not(feature = "reference"))]
        Some(_) => fail(
            Error::input("--inject needs the reference engine, and this build has none")
                .hint("build the harness with its `reference` feature"),
        ),
        None => engine_name,
    };
    let suite = Suite::new(root.clone(), registry);
    let e = engine(&suite.registry, &engine_name);
    if !case.inputs.named.is_empty() {
        return shrink_rows(&root, &suite, &case, &e, oracle.is_some(), dry_run);
    }
    let oracle = match oracle {
        Some(o) => o.parse::<OracleChoice>().unwrap_or_else(|e| fail(e)),
        None => harness::shrink::default_oracle(&case, &engine_name, &suite.registry),
    };
    let budget = Budget::from_env(budget.or(case.shrink.as_ref().and_then(|s| s.budget)));
    let mut s = shrink_case(&suite, &case, &e, &oracle, budget, true).unwrap_or_else(|e| fail(e));
    s.report.rerun = std::env::args().collect::<Vec<_>>().join(" ");
    print!("{}", terminal::render(&s.report));
    println!("\nminimal input ({}; the case has {}):", s.minimal_size, s.original_size);
    let rows =
        |m: &harness::case::IdMatrix| (0..m.batch).map(|b| format!("{:?}", m.row(b))).collect::<Vec<_>>().join(", ");
    println!("  input_ids: [{}]", rows(&s.case.inputs.input_ids));
    if let Some(m) = &s.case.inputs.attention_mask {
        println!("  attention_mask: [{}]", rows(m));
    }
    if let Some(t) = &s.case.inputs.token_type_ids {
        println!("  token_type_ids: [{}]", rows(t));
    }
    if let Some(d) = &s.case.decode {
        println!("  decode.tokens: [{}]", rows(&d.tokens));
    }
    println!("signature: {}", s.signature);
    println!(
        "{} evaluations (budget {}) in {:.1} s, oracle {}",
        s.evaluations,
        budget.evaluations,
        s.elapsed.as_secs_f64(),
        s.oracle
    );
    if let Some(why) = &s.stopped_early {
        println!("stopped early: {why}; a larger budget may shrink further");
    }
    if dry_run {
        return;
    }
    let path = regression::write(&root, &case, &s, &engine_name).unwrap_or_else(|e| fail(e));
    let id = regression::case_id(&case, &s);
    println!("wrote {}", display_path(&path));
    println!("next: {}", harness::golden::regen_command(&suite.root, &id));
    println!("      cargo test --test cases -- {id}    # then commit the case and goldens/{id}/");
}

/// `harness shrink` on a case with named inputs (an image, a spectrogram): cut the batch to the
/// first row that fails alone the same way, judged against the case's goldens cut to that row.
fn shrink_rows(
    root: &Path,
    suite: &Suite,
    case: &harness::case::Case,
    e: &Arc<dyn harness::engine::Engine>,
    oracle_given: bool,
    dry_run: bool,
) {
    if oracle_given {
        eprintln!(
            "note: --oracle does not apply to named inputs: each row is judged against the case's own goldens cut to that row"
        );
    }
    let model = suite.model(e, &case.model).unwrap_or_else(|e| fail(e));
    let expected = suite.expected(case).unwrap_or_else(|e| fail(e));
    let mut s = harness::shrink::rows::shrink_rows(case, e, model.as_ref(), expected.as_ref(), true)
        .unwrap_or_else(|e| fail(e));
    s.report.rerun = std::env::args().collect::<Vec<_>>().join(" ");
    print!("{}", terminal::render(&s.report));
    let kept: Vec<&str> = case
        .inputs
        .named
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| s.decoder_prefix.is_none() || !n.starts_with("decoder_"))
        .collect();
    let decoder = match s.decoder_prefix {
        Some((len, of)) => format!("; decoder_input_ids cut to its first {len} of {of} tokens (a causal decoder)"),
        None => String::new(),
    };
    println!(
        "\nminimal input: row {} of {}{decoder} ({} kept as they are: other named inputs shrink by batch rows only)",
        s.row,
        s.rows,
        kept.join(", ")
    );
    println!("signature: {}", s.signature);
    println!(
        "{} evaluations in {:.1} s, oracle: the case's goldens cut to one row (and the decoder's to the prefix)",
        s.evaluations,
        s.elapsed.as_secs_f64()
    );
    if dry_run {
        return;
    }
    let written = regression::write_row(root, case, &s, e.name()).unwrap_or_else(|e| fail(e));
    for p in &written {
        println!("wrote {}", display_path(p));
    }
    let id = regression::row_case_id(case, &s);
    println!("next: {}", harness::golden::regen_command(&suite.root, &id));
    println!("      cargo test --test cases -- {id}    # then commit the case, its .npy files and goldens/{id}/");
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { report, args } => {
            let argv = std::iter::once("harness run".to_string()).chain(args);
            let (args, filters) = harness::runner::parse_args(argv);
            // `rerun:` lines name the command actually used: this one.
            let mut h = harness::Harness::new().rerun("harness run --exact '{trial}'").filters(filters);
            if let Some(dir) = report {
                h = h.report_dir(dir);
            }
            let (suite, conclusion) = h.run_with(&args).unwrap_or_else(|e| fail(e));
            let mut reports = suite.reports.lock().unwrap().clone();
            if !args.list && !reports.is_empty() {
                reports.sort_by(|a, b| a.trial.cmp(&b.trial));
                println!("\n{}", terminal::summary(&reports));
            }
            conclusion.exit();
        }
        Cmd::Goldens { cmd } => goldens(cmd),
        Cmd::Init { dir, engine, name, python, harness_path, no_goldens } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            // The checkout this binary was built from: cli/ is one level under its root.
            let harness_path =
                harness_path.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf());
            let o = init::Options { dir, kind: engine, name, python, harness_path, goldens: !no_goldens };
            let files = init::init(&o).unwrap_or_else(|e| fail(e));
            for f in &files {
                println!("wrote {}", display_path(&o.dir.join(f)));
            }
            let mut have = false;
            if o.goldens {
                if init::has_goldens_tool(&o.python, &o.dir) {
                    init::goldens(&o).unwrap_or_else(|e| fail(e));
                    have = true;
                } else {
                    println!(
                        "note: `{}` cannot import the goldens tool (harness_goldens); goldens not generated",
                        o.python
                    );
                }
            }
            println!("next, in {}:", display_path(&o.dir));
            for step in init::next(&o, have) {
                println!("  {step}");
            }
        }
        Cmd::Shrink { case, engine, oracle, budget, inject, dry_run } => {
            shrink(case, engine, oracle, budget, inject, dry_run)
        }
        Cmd::Dump { case, engine: name, out, every_module } => {
            let root = root();
            let case = load(&root, &case);
            let suite = Suite::new(root, harness::engine::builtin());
            let e = engine(&suite.registry, &name);
            let m = harness::dump::dump(&suite, &case, &e, &out, every_module).unwrap_or_else(|e| fail(e));
            println!("wrote {} taps of {} on {} to {}", m.taps.len(), m.case, m.engine, display_path(&out));
            if !m.missing.is_empty() {
                println!("the engine did not return: {}", m.missing.join(", "));
            }
        }
        Cmd::Diff { a, b, atol, rtol, cosine, sqnr_db, report, engine, mask, case } => {
            let mask: Option<harness::case::IdMatrix> = match (mask, case) {
                (Some(p), _) => {
                    let t = harness::tensor::read_npy(&p, None).unwrap_or_else(|e| fail(e));
                    let [batch, seq] = t.shape()[..] else {
                        fail(Error::input(format!("the mask has shape {:?}, not [batch, seq]", t.shape())).file(&p))
                    };
                    Some(harness::case::IdMatrix { batch, seq, data: t.data().iter().map(|&v| v as i64).collect() })
                }
                (None, Some(id)) => {
                    let c = load(&root(), &id);
                    if c.compare_padding { None } else { c.inputs.attention_mask.clone() }
                }
                (None, None) => None,
            };
            let tol = if [atol, rtol, cosine, sqnr_db].iter().any(Option::is_some) {
                Tolerance { atol, rtol, cosine, sqnr_db, mismatch: None, argmax: None, noise: None }
            } else {
                Tolerance::default()
            };
            tol.validate()
                .unwrap_or_else(|m| fail(Error::input(m).hint("check the --atol/--rtol/--cosine/--sqnr-db values")));
            let spec = engine.map(|name| external_engine(&root(), &name));
            let mapping: Box<dyn harness::diff::Mapping> = match &spec {
                Some(s) => Box::new(EngineMapping { rules: &s.rules }),
                None => Box::new(harness::diff::Identity),
            };
            let d =
                harness::diff::diff_masked(&a, &b, &tol, mapping.as_ref(), mask.as_ref()).unwrap_or_else(|e| fail(e));
            for n in &d.notes {
                println!("note: {n}");
            }
            print!("{}", terminal::render(&d.report));
            if let Some(dir) = report {
                let cwd = std::env::current_dir().unwrap_or_default();
                let files = harness::report::write_reports(&dir, &cwd, std::slice::from_ref(&d.report))
                    .unwrap_or_else(|e| fail(e));
                eprintln!("report: {}", display_path(&files[2]));
            }
            std::process::exit(match d.report.verdict {
                Verdict::Pass => 0,
                Verdict::Fail => 1,
                Verdict::Error => 2,
            });
        }
    }
}
