//! The harness in another repository: `harness init` scaffolds a project that goes green, and
//! goldens can live in a content-addressed remote store fetched on demand (tested against a
//! local HTTP server started here).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TempRepo;
use common::skip::{Outcome, Skip};
use harness::report::Verdict;

const CASE: &str = "llama/mha";

fn harness(dir: &Path) -> Command {
    let mut c = Command::new(common::harness_bin());
    c.current_dir(dir).env_remove("HARNESS_ROOT").env_remove("CI");
    c
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn init_writes_a_project_and_never_overwrites() -> Outcome {
    let d = tempfile::tempdir().unwrap();
    let o = harness(d.path()).args(["init", "--no-goldens", "--name", "my-port"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "harness.toml",
        "cases/models/gpt2-tiny.yaml",
        "cases/gpt2/smoke.yaml",
        "cases/engines/my-port.yaml",
        "engine/my-port.py",
        ".github/workflows/harness.yml",
    ] {
        assert!(d.path().join(f).is_file(), "{f} missing:\n{}", text(&o));
    }
    let out = text(&o);
    assert!(out.contains("next, in") && out.contains("-m harness_goldens --case gpt2/smoke"), "{out}");
    // Before the goldens exist, the run says how to make them.
    let run = harness(d.path()).args(["run"]).output().unwrap();
    assert!(
        text(&run).contains("no recorded structure") && text(&run).contains("-m harness_goldens"),
        "{}",
        text(&run)
    );
    // A second init refuses and changes nothing.
    std::fs::write(d.path().join("cases/gpt2/smoke.yaml"), "mine").unwrap();
    let again = harness(d.path()).args(["init", "--no-goldens", "--name", "my-port"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already exists here; nothing was written"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(d.path().join("cases/gpt2/smoke.yaml")).unwrap(), "mine");

    let r = tempfile::tempdir().unwrap();
    let o = harness(r.path()).args(["init", "--no-goldens", "--engine", "rust"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let cargo = std::fs::read_to_string(r.path().join("Cargo.toml")).unwrap();
    let api = common::repo_root().join("api");
    assert!(cargo.contains(&format!("harness-api = {{ path = \"{}\" }}", api.display())), "{cargo}");
    assert!(r.path().join("tests/cases.rs").is_file() && r.path().join("src/lib.rs").is_file());
    let ci = std::fs::read_to_string(r.path().join(".github/workflows/harness.yml")).unwrap();
    assert!(ci.contains("cargo nextest run --partition hash:${{ matrix.shard }}/2"), "{ci}");
    Ok(())
}

fn venv_python() -> Result<PathBuf, Skip> {
    let p = common::repo_root().join("tools/.venv/bin/python");
    if p.exists() {
        Ok(p)
    } else {
        Err(Skip(format!(
            "{} does not exist (hint: python3 -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt)",
            p.display()
        )))
    }
}

/// From nothing to a green run in the commands `harness init` prints.
fn init_then_goldens_then_run_is_green() -> Outcome {
    let python = venv_python()?;
    let d = tempfile::tempdir().unwrap();
    let o = harness(d.path()).args(["init", "--python"]).arg(&python).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.path().join("goldens/gpt2/smoke/manifest.json").is_file(), "no goldens:\n{}", text(&o));
    let run = harness(d.path()).arg("run").output().unwrap();
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    let ok = out.lines().any(|l| l.starts_with("test reference::gpt2/smoke ") && l.ends_with("... ok"));
    assert!(ok, "{out}");
    // The stub engine runs nothing yet: the case does not list it, so it has no trial.
    assert!(!out.contains("my-engine::"), "{out}");
    Ok(())
}

/// A minimal HTTP/1.1 file server over `dir` on 127.0.0.1; counts the requests it answered.
fn serve(dir: PathBuf) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/store/", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                    break;
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let path = line.split_whitespace().nth(1).unwrap_or("").trim_start_matches("/store/").to_string();
            let file = dir.join(&path);
            let resp = match (path.contains(".."), std::fs::read(&file)) {
                (false, Ok(body)) => {
                    let mut r =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .into_bytes();
                    r.extend(body);
                    r
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = s.write_all(&resp);
        }
    });
    (url, hits)
}

fn goldens_come_from_a_remote_store_over_http_verified_and_cached() -> Outcome {
    let repo = TempRepo::with_cases(&[CASE]);
    let store = tempfile::tempdir().unwrap();
    let (written, present) = harness::golden::remote::export(&repo.path("goldens"), store.path(), &mut |_| {}).unwrap();
    let dir = repo.path("goldens/llama/mha");
    let npys: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    // One object per distinct content (a tap that is another's tensor is stored once).
    assert!(written > 5 && written + present >= npys.len(), "{written}+{present} objects for {} goldens", npys.len());
    for p in &npys {
        std::fs::remove_file(p).unwrap();
    }
    let (url, hits) = serve(store.path().to_path_buf());
    repo.write("harness.toml", &format!("[goldens]\nremote = \"{url}\"\ncache = \"cache\"\n"));
    let r = repo.run(CASE, "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Pass, "{:?} {:?}", r.error, r.taps.iter().map(|t| &t.status).collect::<Vec<_>>());
    let fetched = hits.load(Ordering::SeqCst);
    // Each distinct golden once (taps with the same content share an object).
    assert!(fetched > 5 && fetched <= written, "{fetched} requests for {written} objects");
    // Cached: a second run asks nothing.
    let r = repo.run(CASE, "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Pass);
    assert_eq!(hits.load(Ordering::SeqCst), fetched, "the cache was not used");

    // A store object that does not hash to its name is refused, naming the golden.
    std::fs::remove_dir_all(repo.path("cache")).unwrap();
    for e in walk(store.path()) {
        std::fs::write(&e, b"tampered").unwrap();
    }
    let r = repo.run(CASE, "reference", vec![]);
    assert_ne!(r.verdict, Verdict::Pass);
    let all = format!("{:?} {:?}", r.error, r.taps.iter().map(|t| &t.status).collect::<Vec<_>>());
    assert!(all.contains("not the manifest's") && all.contains("goldens/llama/mha/"), "{all}");
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// `harness run` takes libtest's arguments, several filters included (`cargo test` passes them).
fn run_takes_several_filters_and_skip() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/mha", "llama/gqa", "distilbert/sequence"]);
    let o = harness(repo.root()).args(["run", "--list", "llama/mha", "bert/", "--skip", "candle"]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let listed: Vec<&str> = out.lines().filter_map(|l| l.strip_suffix(": test")).collect();
    assert_eq!(listed, ["reference::distilbert/sequence", "reference::llama/mha"], "{out}");
    Ok(())
}

/// An engine that is not installed makes its trials ignored with the reason outside CI and failed
/// under CI, for metamorphic cases as for golden ones.
fn a_metamorphic_trial_of_an_engine_not_installed_is_ignored_outside_ci() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    repo.write(
        "cases/engines/absent.yaml",
        "command: [tools/.venv/bin/no-such-python, x.py]\nprotocol: 2\nfamilies: [LlamaForCausalLM]\nsetup: make venv\n",
    );
    repo.write(
        "cases/metamorphic/absent.yaml",
        "model: llama-tiny-mha\nmetamorphic: [determinism]\ngenerate: {cases: 1, seed: 1, rows: [1, 1], tokens: [2, 3]}\n\
         taps: [logits]\nengines: [absent]\n",
    );
    let o = harness(repo.root()).args(["run", "--exact", "absent::metamorphic/absent"]).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("absent::metamorphic/absent ... ignored (engine `absent` is not installed here"), "{out}");
    let o =
        harness(repo.root()).env("CI", "true").args(["run", "--exact", "absent::metamorphic/absent"]).output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    Ok(())
}

tests!(
    run_takes_several_filters_and_skip,
    a_metamorphic_trial_of_an_engine_not_installed_is_ignored_outside_ci,
    init_writes_a_project_and_never_overwrites,
    init_then_goldens_then_run_is_green,
    goldens_come_from_a_remote_store_over_http_verified_and_cached,
);
