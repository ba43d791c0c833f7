//! Helpers for integration tests: a throwaway copy of part of the repository.

#![allow(dead_code)]

pub mod skip;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use harness::case::{Case, load_case};
use harness::engine::Engine;
use harness::report::TrialReport;
use harness::runner::Suite;

/// The `harness` binary (crate harness-cli), which `cargo test` builds next to the test binaries.
pub fn harness_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("harness");
    assert!(
        bin.is_file(),
        "{} does not exist: `cargo test` at the workspace root builds it (or: cargo build -p harness-cli)",
        bin.display()
    );
    bin
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A temp directory holding copies of the given cases, their model specs, weights and goldens.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

/// The case text with its `engines:` list cut to the built-in engines: a temporary repository
/// has no engine files (cases/engines/), and a test that wants one writes it (a list of only
/// engine files is kept as it is). Editing `engines:` leaves the goldens fresh.
fn builtin_engines_only(src: &Path, text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("engines: [").and_then(|l| l.strip_suffix(']')) {
            Some(list) => {
                let kept: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !src.join(format!("cases/engines/{n}.yaml")).exists())
                    .collect();
                // Only engine files: the test writes the ones it runs.
                if kept.is_empty() { line.to_string() } else { format!("engines: [{}]", kept.join(", ")) }
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

impl TempRepo {
    pub fn with_cases(case_ids: &[&str]) -> TempRepo {
        let src = repo_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("cases/models")).unwrap();
        std::fs::create_dir_all(root.join("goldens/models")).unwrap();
        for id in case_ids {
            let case_file = src.join("cases").join(format!("{id}.yaml"));
            let text = builtin_engines_only(&src, &std::fs::read_to_string(&case_file).unwrap());
            let dst = root.join("cases").join(format!("{id}.yaml"));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::write(&dst, &text).unwrap();
            let model = text.lines().find_map(|l| l.strip_prefix("model: ")).unwrap().trim().to_string();
            std::fs::copy(
                src.join(format!("cases/models/{model}.yaml")),
                root.join(format!("cases/models/{model}.yaml")),
            )
            .unwrap();
            let mdir = src.join("goldens/models").join(&model);
            if mdir.exists() && !root.join("goldens/models").join(&model).exists() {
                copy_dir(&mdir, &root.join("goldens/models").join(&model));
            }
            let gdir = src.join("goldens").join(id);
            if gdir.exists() {
                copy_dir(&gdir, &root.join("goldens").join(id));
            }
        }
        TempRepo { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn load(&self, id: &str) -> harness::Result<Case> {
        load_case(self.root(), &self.path(&format!("cases/{id}.yaml")), &mut Default::default())
    }

    pub fn suite(&self, engines: Vec<Arc<dyn Engine>>) -> Arc<Suite> {
        let mut r = harness::engine::builtin();
        for e in engines {
            r.add(e);
        }
        Suite::new(self.root().to_path_buf(), r)
    }

    /// Run one case on one engine (by name) and return the report.
    pub fn run(&self, id: &str, engine: &str, extra: Vec<Arc<dyn Engine>>) -> TrialReport {
        let suite = self.suite(extra);
        let case = self.load(id).expect("case loads");
        let e = suite.registry.get(engine).expect("engine registered").clone();
        suite.run_trial(&case, &e)
    }
}

/// Keep a generated section of `file` (relative to the repository root, e.g. `docs/diagnosis.md`;
/// between `<!-- NAME:start -->` and `<!-- NAME:end -->`) equal to `content`;
/// `HARNESS_UPDATE_README=1` rewrites it instead of failing.
pub fn check_generated_section(file: &str, name: &str, content: &str) {
    // Tests of one binary may rewrite sections of the same file at once.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = repo_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (start, end) = (format!("<!-- {name}:start -->\n"), format!("<!-- {name}:end -->"));
    let (Some(i), Some(j)) = (text.find(&start), text.find(&end)) else {
        panic!("{file} has no `{start}` ... `{end}` section");
    };
    let current = &text[i + start.len()..j];
    if current == content {
        return;
    }
    if std::env::var("HARNESS_UPDATE_README").is_ok_and(|v| v == "1") {
        let new = format!("{}{}{}", &text[..i + start.len()], content, &text[j..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!(
        "{file}'s `{name}` section is out of date; rerun with HARNESS_UPDATE_README=1 to rewrite it.\n--- {file}\n{current}\n--- generated\n{content}"
    );
}

/// The engine session directories (`harness-<engine>-session-*`) in the temp dir now: a test
/// compares them before and after a run.
pub fn session_dirs(engine: &str) -> Vec<String> {
    let prefix = format!("harness-{engine}-session-");
    let names = std::fs::read_dir(std::env::temp_dir()).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok());
    names.filter(|n| n.starts_with(&prefix)).collect()
}
