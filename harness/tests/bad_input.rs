//! The bad-input corpus: every file under tests/bad_input/ must give one clear error line that
//! names the file, never a panic. The messages are snapshot-tested: review them as a user would.

mod common;

use std::path::{Path, PathBuf};

use common::TempRepo;

fn corpus(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input").join(sub);
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// The error a user sees for a case file: loading, then opening its goldens, then running it.
fn case_error(repo: &TempRepo, id: &str) -> Option<String> {
    let case = match repo.load(id) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let suite = repo.suite(vec![]);
    let engine = suite.registry.get("reference").unwrap().clone();
    let r = suite.run_trial(&case, &engine);
    r.error.or_else(|| r.taps.iter().find_map(harness::report::terminal::tap_problem))
}

fn check_line(name: &str, msg: &str, file_hint: &str) -> String {
    assert!(!msg.contains('\n'), "{name}: error is not one line: {msg}");
    assert!(msg.contains(file_hint), "{name}: error does not name {file_hint}: {msg}");
    format!("{name}:\n  {msg}\n")
}

#[test]
fn bad_cases_give_located_one_line_errors() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let mut out = String::new();
    for f in corpus("cases") {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let id = format!("bad/{name}");
        repo.write(&format!("cases/{id}.yaml"), &std::fs::read_to_string(&f).unwrap());
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case_error(&repo, &id)))
            .unwrap_or_else(|_| panic!("{name}: panicked"))
            .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = msg.replace(&repo.root().display().to_string(), "<repo>");
        out += &check_line(&name, &msg, "cases/bad/");
    }
    insta::assert_snapshot!("cases", out);
}

#[test]
fn bad_npy_files_are_refused_with_the_reason() {
    let mut out = String::new();
    for f in corpus("npy") {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let msg = match harness::tensor::read_npy(&f, None) {
            Ok(t) => panic!("{name}: read as {t:?}"),
            Err(e) => e.to_string(),
        };
        let msg = msg.replace(Path::new(env!("CARGO_MANIFEST_DIR")).to_str().unwrap(), "<harness>");
        out += &check_line(&name, &msg, &name);
    }
    insta::assert_snapshot!("npy", out);
}
