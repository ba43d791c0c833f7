//! The `harness` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use harness::case::{Case, case_id, load_case};
use harness::engine::external::{self, EngineMapping, EngineSpec};
use harness::engine::{Engine, Registry};
use harness::error::{Error, did_you_mean, display_path};
use harness::golden::{Store, atomic, describe, pending, session};
use harness::report::{Verdict, terminal};
use harness::runner::{Suite, discover, find_root};
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
    /// Takes the same arguments as `cargo test -- ...`: filters, --exact, --list, --ignored,
    /// --format json, --test-threads.
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
    let file = root.join("cases").join(format!("{id}.yaml"));
    if !file.is_file() {
        let ids: Vec<String> =
            discover(root).unwrap_or_default().iter().map(|f| case_id(&root.join("cases"), f)).collect();
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
                pending::reject(&p).unwrap_or_else(|e| fail(e));
                println!("rejected {}: the accepted goldens are unchanged", p.id);
            }
        }
        GoldensCmd::Show { case } => {
            let id = case.trim_end_matches(".yaml").to_string();
            let file = root.join("cases").join(format!("{id}.yaml"));
            let loaded = load_case(&root, &file, &mut Default::default()).ok();
            print!("{}", describe::show(&store, &id, loaded.as_ref()).unwrap_or_else(|e| fail(e)));
        }
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { report, args } => {
            let argv = std::iter::once("harness run".to_string()).chain(args);
            let args = libtest_mimic::Arguments::from_iter(argv);
            let (suite, conclusion) = harness::runner::run_suite_with(&args, Registry::builtin(), report);
            let mut reports = suite.reports.lock().unwrap().clone();
            if !args.list && !reports.is_empty() {
                reports.sort_by(|a, b| a.trial.cmp(&b.trial));
                println!("\n{}", terminal::summary(&reports));
            }
            conclusion.exit();
        }
        Cmd::Goldens { cmd } => goldens(cmd),
        Cmd::Dump { case, engine: name, out, every_module } => {
            let root = root();
            let case = load(&root, &case);
            let suite = Suite::new(root, Registry::builtin());
            let e = engine(&suite.registry, &name);
            let m = harness::dump::dump(&suite, &case, &e, &out, every_module).unwrap_or_else(|e| fail(e));
            println!("wrote {} taps of {} on {} to {}", m.taps.len(), m.case, m.engine, display_path(&out));
            if !m.missing.is_empty() {
                println!("the engine did not return: {}", m.missing.join(", "));
            }
        }
        Cmd::Diff { a, b, atol, rtol, cosine, sqnr_db, report, engine } => {
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
            let d = harness::diff::diff(&a, &b, &tol, mapping.as_ref()).unwrap_or_else(|e| fail(e));
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
