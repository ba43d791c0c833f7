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
    let engines = match suite.engines_for(&case) {
        Ok(e) => e,
        Err(e) => return Some(e.to_string()),
    };
    let r = suite.run_trial(&case, &engines[0]);
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
        std::fs::create_dir_all(repo.path("cases/bad")).unwrap();
        std::fs::write(repo.path(&format!("cases/{id}.yaml")), std::fs::read(&f).unwrap()).unwrap();
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case_error(&repo, &id)))
            .unwrap_or_else(|_| panic!("{name}: panicked"))
            .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = msg.replace(&repo.root().display().to_string(), "<repo>");
        out += &check_line(&name, &msg, "cases/bad/");
    }
    insta::assert_snapshot!("cases", out);
}

#[test]
fn bad_model_specs_give_located_one_line_errors() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let mut out = String::new();
    for f in corpus("models") {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        repo.write(&format!("cases/models/{name}.yaml"), &std::fs::read_to_string(&f).unwrap());
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::case::load_model_spec(repo.root(), &name).err().map(|e| e.to_string())
        }))
        .unwrap_or_else(|_| panic!("{name}: panicked"))
        .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = msg.replace(&repo.root().display().to_string(), "<repo>");
        out += &check_line(&name, &msg, &format!("cases/models/{name}.yaml"));
    }
    insta::assert_snapshot!("models", out);
}

#[test]
fn bad_engine_files_give_located_one_line_errors() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let mut out = String::new();
    for f in corpus("engines") {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let rel = format!("cases/engines/{name}.yaml");
        repo.write(&rel, &std::fs::read_to_string(&f).unwrap());
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::engine::external::spec::load(repo.root(), &repo.path(&rel)).err().map(|e| e.to_string())
        }))
        .unwrap_or_else(|_| panic!("{name}: panicked"))
        .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = msg.replace(&repo.root().display().to_string(), "<repo>");
        out += &check_line(&name, &msg, &rel);
        std::fs::remove_file(repo.path(&rel)).unwrap();
    }
    insta::assert_snapshot!("engines", out);
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

/// Re-sign one golden's sha256 in its manifest (as if tools/ had written the file).
fn resign(repo: &TempRepo, case: &str, tap: &str) {
    let path = repo.path(&format!("goldens/{case}/{tap}.npy"));
    let mpath = repo.path(&format!("goldens/{case}/manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for e in m["taps"].as_array_mut().unwrap() {
        if e["name"] == tap {
            e["sha256"] = harness::golden::sha256_file(&path).unwrap().into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn edit_manifest(repo: &TempRepo, f: impl FnOnce(&mut serde_json::Value)) {
    let mpath = repo.path("goldens/llama/mha/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Bad inputs that need more than one file: goldens and manifests tampered with, model
/// directories that escape the repository or hold only a pickle.
#[test]
fn constructed_bad_inputs() {
    type Setup = fn(&TempRepo);
    let scenarios: Vec<(&str, Setup)> = vec![
        ("stale-case", |r| {
            let p = r.path("cases/llama/mha.yaml");
            let t = std::fs::read_to_string(&p).unwrap().replace("[[1, 17,", "[[1, 18,");
            std::fs::write(p, t).unwrap();
        }),
        ("stale-model-spec", |r| {
            let p = r.path("cases/models/llama-tiny-mha.yaml");
            let t = std::fs::read_to_string(&p).unwrap().replace("seed: 1}", "seed: 7}");
            std::fs::write(p, t).unwrap();
        }),
        ("golden-edited-behind-manifest", |r| {
            let p = r.path("goldens/llama/mha/logits.npy");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 1] ^= 0x40;
            std::fs::write(p, b).unwrap();
        }),
        ("golden-with-nan", |r| {
            let p = r.path("goldens/llama/mha/logits.npy");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
            std::fs::write(p, b).unwrap();
            resign(r, "llama/mha", "logits");
        }),
        ("golden-truncated", |r| {
            let p = r.path("goldens/llama/mha/model.norm.npy");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(p, &b[..b.len() - 10]).unwrap();
            resign(r, "llama/mha", "model.norm");
        }),
        ("manifest-not-json", |r| {
            std::fs::write(r.path("goldens/llama/mha/manifest.json"), "{\"format\": 1,").unwrap()
        }),
        ("manifest-shape-differs", |r| {
            edit_manifest(r, |m| {
                for e in m["taps"].as_array_mut().unwrap() {
                    if e["name"] == "logits" {
                        e["shape"] = serde_json::json!([1, 12, 255]);
                    }
                }
            })
        }),
        ("manifest-file-escapes", |r| {
            edit_manifest(r, |m| {
                for e in m["taps"].as_array_mut().unwrap() {
                    if e["name"] == "logits" {
                        e["file"] = "../../../etc/passwd".into();
                    }
                }
            })
        }),
        ("manifest-missing-tap", |r| {
            edit_manifest(r, |m| m["taps"].as_array_mut().unwrap().retain(|e| e["name"] != "model.norm"))
        }),
        ("weights-missing", |r| {
            std::fs::remove_file(r.path("goldens/models/llama-tiny-mha/model.safetensors")).unwrap()
        }),
        ("weights-pickle-only", |r| {
            std::fs::create_dir_all(r.path("models/pickled")).unwrap();
            std::fs::copy(r.path("goldens/models/llama-tiny-mha/config.json"), r.path("models/pickled/config.json"))
                .unwrap();
            std::fs::write(r.path("models/pickled/pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
            std::fs::write(
                r.path("cases/models/llama-tiny-mha.yaml"),
                "family: LlamaForCausalLM\nsource:\n  path: models/pickled\n",
            )
            .unwrap();
        }),
        ("model-path-symlink-escapes", |r| {
            let outside = tempfile::tempdir().unwrap().keep();
            std::os::unix::fs::symlink(outside, r.path("models-link")).unwrap();
            std::fs::write(
                r.path("cases/models/llama-tiny-mha.yaml"),
                "family: LlamaForCausalLM\nsource:\n  path: models-link\n",
            )
            .unwrap();
        }),
    ];
    let mut out = String::new();
    for (name, setup) in scenarios {
        let repo = TempRepo::with_cases(&["llama/mha"]);
        setup(&repo);
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case_error(&repo, "llama/mha")))
            .unwrap_or_else(|_| panic!("{name}: panicked"))
            .unwrap_or_else(|| panic!("{name}: no error"));
        let msg = msg.replace(&repo.root().display().to_string(), "<repo>");
        // The symlink's temp target varies from run to run.
        let msg = match msg.split_once("resolves to `") {
            Some((a, b)) => format!("{a}resolves to `<outside>{}", &b[b.find('`').unwrap()..]),
            None => msg,
        };
        out += &check_line(name, &msg, "<repo>/");
    }
    insta::assert_snapshot!("constructed", out);
}

/// A user's broken case among good ones: the whole run (the `harness run` front-end, the same
/// runner as `cargo test --test cases`) gives one failing `load::` trial with the file, line and
/// a did-you-mean, runs the other cases, and nothing panics.
#[test]
fn a_typo_case_among_good_ones_fails_alone_without_a_panic() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    std::fs::create_dir_all(repo.path("cases/zz")).unwrap();
    std::fs::copy(corpus_file("cases", "top-level-typo.yaml"), repo.path("cases/zz/bad.yaml")).unwrap();
    let o = std::process::Command::new(common::harness_bin())
        .args(["run", "--test-threads", "1"])
        .current_dir(repo.root())
        .env_remove("CI")
        .env("HARNESS_ROOT", repo.root())
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(101), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let line = |name: &str| out.lines().find(|l| l.starts_with(&format!("test {name} "))).unwrap_or("").to_string();
    assert!(line("load::zz/bad").ends_with("... FAILED"), "{out}");
    assert!(out.contains("cases/zz/bad.yaml:5:1: unknown key `tolerence`"), "{out}");
    assert!(out.contains("did you mean `tolerance`?"), "{out}");
    assert!(line("reference::llama/mha").ends_with("... ok"), "{out}");
}

fn corpus_file(sub: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input").join(sub).join(name)
}
