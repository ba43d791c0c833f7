//! The golden lifecycle: staleness, pending goldens (status, review, accept, reject), provenance,
//! and the dump/diff tools.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use common::TempRepo;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::golden::pending::{self, Kind};
use harness::golden::review::{self, Change};
use harness::golden::{regen_command, session, sha256_file};
use harness::report::Verdict;
use harness::tensor::{Tensor, read_npy, write_npy};
use harness::tolerance::Tolerance;

const CASE: &str = "llama/mha";

#[test]
fn editing_case_inputs_without_regenerating_fails_as_stale_with_the_command() {
    let repo = TempRepo::with_cases(&[CASE]);
    let file = repo.path("cases/llama/mha.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("[[1, 17, 203,", "[[1, 18, 203,")).unwrap();
    let r = repo.run(CASE, "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(e.contains("goldens are stale: the case file"), "{e}");
    assert!(e.contains(&regen_command(repo.root(), CASE)), "{e}");
    assert!(r.taps.is_empty(), "a stale golden is never compared");
}

/// Every file of a directory with its sha256.
/// Goldens depend on a case's model, inputs, taps, decode, bisect and compare_padding, and on
/// its model spec's family, source, config, dtype and gguf: editing anything else (a description,
/// `engines:`, a tolerance, comments) leaves them fresh, while one changed config value does not.
#[test]
fn only_edits_that_change_goldens_make_them_stale() {
    let repo = TempRepo::with_cases(&["llama/mha"]);
    let case = repo.path("cases/llama/mha.yaml");
    let text = std::fs::read_to_string(&case).unwrap();
    let text = text.replace("description: one sequence", "description: an edited description of one sequence");
    std::fs::write(
        &case,
        format!("# a comment\nengines: [reference]\ntolerance: {{atol: 2.0e-4, rtol: 1.0e-3}}\n{text}"),
    )
    .unwrap();
    let spec = repo.path("cases/models/llama-tiny-mha.yaml");
    let spec_text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{spec_text}description: edited too\n")).unwrap();
    let r = repo.run("llama/mha", "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&r));

    std::fs::write(&spec, spec_text.replace("rms_norm_eps: 1.0e-6", "rms_norm_eps: 1.0e-5")).unwrap();
    let e = repo.load("llama/mha").unwrap_err().to_string();
    assert!(e.contains("structure is stale") && e.contains("rms_norm_eps"), "{e}");
}

fn snapshot(dir: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), sha256_file(&p).unwrap()))
        .collect()
}

/// What `regen_goldens.py --pending` writes when a transformers upgrade moves `logits`: the
/// accepted files untouched, `logits.npy.new` and the complete new manifest as
/// `manifest.json.new`.
fn make_pending(repo: &TempRepo, delta: f32) {
    let dir = repo.path("goldens/llama/mha");
    let t = read_npy(&dir.join("logits.npy"), None).unwrap();
    let shape = t.shape().to_vec();
    let mut v = t.into_vec();
    v[7] += delta;
    write_npy(&dir.join("logits.npy.new"), &Tensor::new(shape, v).unwrap()).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["generator"]["transformers"] = "9.9.9".into();
    for e in m["taps"].as_array_mut().unwrap() {
        if e["name"] == "logits" {
            e["sha256"] = sha256_file(&dir.join("logits.npy.new")).unwrap().into();
        }
    }
    std::fs::write(dir.join("manifest.json.new"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn pending_goldens_show_in_status_and_review_then_reject_leaves_the_old_untouched() {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = repo.path("goldens/llama/mha");
    let before = snapshot(&dir);
    make_pending(&repo, 0.25);
    let list = pending::list(&repo.path("goldens")).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id.as_str(), list[0].kind), (CASE, Kind::Case));

    // Trials still run on the accepted goldens.
    assert_eq!(repo.run(CASE, "reference", vec![]).verdict, Verdict::Pass);

    let r = session::review_one(repo.root(), &list[0]).unwrap();
    assert_eq!(r.notes, ["transformers 5.23.0 -> 9.9.9"]);
    assert_eq!(r.moved(), 1);
    let logits = r.taps.iter().find(|t| t.name == "logits").unwrap();
    let Change::Moved { metrics, within } = &logits.change else { panic!("{:?}", logits.change) };
    assert!((metrics.max_abs - 0.25).abs() < 1e-6, "{}", metrics.max_abs);
    assert_eq!(metrics.max_abs_at, Some(7));
    assert!(metrics.sqnr_db.is_finite() && metrics.cosine < 1.0);
    assert_eq!(*within, Some(false), "0.25 is beyond the case's default tolerance");
    let text = review::render(&r);
    assert!(text.contains("* logits") && text.contains("MOVED beyond the tap's tolerance"), "{text}");

    pending::reject(&list[0]).unwrap();
    assert_eq!(snapshot(&dir), before, "reject leaves exactly the accepted files");
    assert!(pending::list(&repo.path("goldens")).unwrap().is_empty());
}

#[test]
fn accept_moves_the_new_goldens_into_place() {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = repo.path("goldens/llama/mha");
    make_pending(&repo, 0.25);
    let new_logits = sha256_file(&dir.join("logits.npy.new")).unwrap();
    let new_manifest = std::fs::read(dir.join("manifest.json.new")).unwrap();
    let p = pending::list(&repo.path("goldens")).unwrap().remove(0);
    let done = pending::accept(&repo.path("goldens"), &p).unwrap();
    assert_eq!(done[0].changed, ["logits.npy"]);
    assert_eq!(sha256_file(&dir.join("logits.npy")).unwrap(), new_logits);
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), new_manifest);
    assert!(snapshot(&dir).keys().all(|k| !k.ends_with(".new")));
    // No temp directory left beside the case.
    assert_eq!(std::fs::read_dir(repo.path("goldens/llama")).unwrap().count(), 1);
    // The accepted golden is the one compared now: the engine did not change, so logits fail.
    let r = repo.run(CASE, "reference", vec![]);
    assert_eq!(r.first_divergent_tap().map(|t| t.name.as_str()), Some("logits"));
}

#[test]
fn accept_refuses_an_inconsistent_pending_set_and_changes_nothing() {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = repo.path("goldens/llama/mha");
    make_pending(&repo, 0.25);
    // The .new file no longer matches the pending manifest (e.g. a half-copied review).
    write_npy(&dir.join("logits.npy.new"), &Tensor::new(vec![1], vec![0.0]).unwrap()).unwrap();
    let before = snapshot(&dir);
    let p = pending::list(&repo.path("goldens")).unwrap().remove(0);
    let e = pending::accept(&repo.path("goldens"), &p).unwrap_err().to_string();
    assert!(e.contains("does not match the pending manifest"), "{e}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn interactive_review_accepts_or_rejects_per_answer() {
    let repo = TempRepo::with_cases(&[CASE, "llama/padded-batch"]);
    make_pending(&repo, 0.25);
    // A second pending case: padded-batch with only its manifest changed.
    let pb = repo.path("goldens/llama/padded-batch");
    std::fs::copy(pb.join("manifest.json"), pb.join("manifest.json.new")).unwrap();
    let before = snapshot(&pb);
    let list = pending::list(&repo.path("goldens")).unwrap();
    assert_eq!(list.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [CASE, "llama/padded-batch"]);
    let mut input = std::io::Cursor::new(b"maybe\ny\nn\n".to_vec());
    let mut out = Vec::new();
    let decided = session::run(repo.root(), &repo.path("goldens"), &list, Some(&mut input), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        decided,
        [(CASE.to_string(), session::Decision::Accept), ("llama/padded-batch".into(), session::Decision::Reject)]
    );
    assert!(out.contains("unknown answer `maybe`"), "{out}");
    assert!(out.contains("accepted llama/mha") && out.contains("rejected llama/padded-batch"), "{out}");
    let mut after = snapshot(&pb);
    after.retain(|k, _| !k.ends_with(".new"));
    let mut b = before.clone();
    b.retain(|k, _| !k.ends_with(".new"));
    assert_eq!(after, b);
    assert!(pending::list(&repo.path("goldens")).unwrap().is_empty());
}

fn harness_cmd(repo: &TempRepo) -> Command {
    let mut c = Command::new(common::harness_bin());
    c.env("HARNESS_ROOT", repo.root()).env_remove("CI").current_dir(repo.root());
    c
}

#[test]
fn cli_refuses_to_write_goldens_with_ci_set_and_lists_pending() {
    let repo = TempRepo::with_cases(&[CASE]);
    make_pending(&repo, 0.25);
    let before = snapshot(&repo.path("goldens/llama/mha"));
    for action in ["accept", "reject"] {
        let out = harness_cmd(&repo).args(["goldens", action, "--all"]).env("CI", "true").output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("refusing to {action} goldens with CI set")), "{err}");
    }
    assert_eq!(snapshot(&repo.path("goldens/llama/mha")), before);
    let out = harness_cmd(&repo).args(["goldens", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("llama/mha") && text.contains("1 of 29 taps changed; transformers 5.23.0 -> 9.9.9"),
        "{text}"
    );
    let out = harness_cmd(&repo).args(["goldens", "show", CASE]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "transformers 5.23.0",
        "matches cases/llama/mha.yaml",
        "seed 1",
        "29 taps are compared",
        "new goldens are pending",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let out = harness_cmd(&repo).args(["goldens", "accept", "llama/mah"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `llama/mha`?"));
}

#[test]
fn dump_then_diff_finds_the_first_divergence() {
    let repo = TempRepo::with_cases(&[CASE]);
    let mutant: Arc<dyn harness::engine::Engine> = Arc::new(ReferenceEngine::mutant(
        "perturbed",
        Mutation::PerturbWeight { name: "model.layers.0.self_attn.v_proj.weight".into(), index: 3, delta: 0.5 },
    ));
    let suite = repo.suite(vec![mutant.clone()]);
    let case = repo.load(CASE).unwrap();
    let good = repo.path("dumps/reference");
    let bad = repo.path("dumps/perturbed");
    let reference = suite.registry.get("reference").unwrap().clone();
    let m = harness::dump::dump(&suite, &case, &reference, &good, false).unwrap();
    assert_eq!(m.taps.len(), 29);
    assert!(good.join("model.layers.1.mlp.up_proj.npy").is_file() && good.join("dump.json").is_file());
    harness::dump::dump(&suite, &case, &mutant, &bad, false).unwrap();

    let tol = Tolerance::default();
    let id = harness::diff::Identity;
    // The reference engine's dump against HF's goldens: within tolerance.
    let d = harness::diff::diff(&repo.path("goldens/llama/mha"), &good, &tol, &id).unwrap();
    assert_eq!(d.report.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&d.report));
    // Two dumps: first divergence at the perturbed weight's first use, in forward order.
    let d = harness::diff::diff(&good, &bad, &tol, &id).unwrap();
    assert_eq!(d.report.first_divergent_tap().unwrap().name, "model.layers.0.self_attn.v_proj");
    assert!(d.report.taps[..d.report.first_divergence.unwrap()].iter().all(|t| t.status.is_pass()));
    // Two files.
    let f = "model.layers.0.self_attn.v_proj.npy";
    let d = harness::diff::diff(&good.join(f), &bad.join(f), &tol, &id).unwrap();
    assert_eq!(d.report.verdict, Verdict::Fail);
    // The CLI exits 1 on a divergence and prints the trial table.
    let out = harness_cmd(&repo).arg("diff").arg(&good).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("first divergence: model.layers.0.self_attn.v_proj"), "{text}");
}

/// A clone without `git lfs` holds pointer files: a golden or a model's weights that is a
/// pointer is an error naming the file and `git lfs pull`, not a parse error.
#[test]
fn git_lfs_pointers_are_named_with_git_lfs_pull() {
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 1048576\n";
    let repo = TempRepo::with_cases(&[CASE]);
    let manifest = std::fs::read_to_string(repo.path("goldens/llama/mha/manifest.json")).unwrap();
    let golden =
        ["logits.npy", "model.norm.npy"].into_iter().find(|f| manifest.contains(f)).expect("a golden of llama/mha");
    std::fs::write(repo.path(&format!("goldens/llama/mha/{golden}")), pointer).unwrap();
    let r = repo.run(CASE, "reference", vec![]);
    assert_ne!(r.verdict, Verdict::Pass);
    let text = format!("{} {:?}", r.error.clone().unwrap_or_default(), r.taps);
    assert!(text.contains("Git LFS pointer") && text.contains("git lfs pull"), "{text}");
    assert!(text.contains(golden), "the error names the file: {text}");
    assert!(text.contains("1048576 bytes"), "{text}");

    let repo = TempRepo::with_cases(&[CASE]);
    std::fs::write(repo.path("goldens/models/llama-tiny-mha/model.safetensors"), pointer).unwrap();
    let e = repo.load(CASE).unwrap_err();
    assert!(e.to_string().contains("model.safetensors") && e.to_string().contains("git lfs pull"), "{e}");
}

/// `harness goldens accept` takes the goldens tool's writer lock (an flock on
/// goldens/.locks/<case>.lock, as tools/harness_goldens/store.py takes it): while another
/// process holds it, accept waits, says for whom, and goes on when it is released.
#[test]
fn accept_waits_for_a_regeneration_holding_the_writer_lock() {
    let repo = TempRepo::with_cases(&[CASE]);
    make_pending(&repo, 0.25);
    let lock = harness::golden::lock::lock_file(&repo.path("goldens"), CASE);
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let holder = "import fcntl, os, sys, time\n\
                  fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n\
                  fcntl.flock(fd, fcntl.LOCK_EX)\n\
                  os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n\
                  print('held', flush=True)\n\
                  time.sleep(1.5)\n\
                  os.unlink(sys.argv[1])\n";
    let mut py = Command::new("python3")
        .args(["-c", holder])
        .arg(&lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(py.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "held");
    let t = std::time::Instant::now();
    let out = harness_cmd(&repo).args(["goldens", "accept", CASE]).output().unwrap();
    let waited = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("note: waiting for another writer of {CASE} (pid {})", py.id())), "{err}");
    assert!(waited >= std::time::Duration::from_millis(1000), "accept did not wait: {waited:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted llama/mha"));
    py.wait().unwrap();
    assert!(pending::list(&repo.path("goldens")).unwrap().is_empty());
}

/// `harness diff` compares padding positions unless told the mask: `--case` takes the case's,
/// `--mask` a .npy; garbage at padding then does not count, as in a trial.
#[test]
fn diff_with_the_case_mask_ignores_padding() {
    let case = "llama/padded-batch";
    let repo = TempRepo::with_cases(&[case]);
    let a = repo.path(&format!("goldens/{case}"));
    let b = repo.path("dump");
    std::fs::create_dir_all(&b).unwrap();
    let mask = repo.load(case).unwrap().inputs.attention_mask.unwrap();
    let (bs, s) = (mask.batch, mask.seq);
    for e in std::fs::read_dir(&a).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "npy") {
            continue;
        }
        let t = read_npy(&p, None).unwrap();
        let shape = t.shape().to_vec();
        let mut v = t.into_vec();
        if shape.len() == 3 && shape[0] == bs && shape[1] == s {
            let w = shape[2];
            for (i, &m) in mask.data.iter().enumerate() {
                if m == 0 {
                    v[i * w..(i + 1) * w].iter_mut().for_each(|x| *x = 1e3);
                }
            }
        }
        write_npy(&b.join(p.file_name().unwrap()), &Tensor::new(shape, v).unwrap()).unwrap();
    }
    let run =
        |extra: &[&str]| harness_cmd(&repo).arg("diff").arg(&a).arg(&b).args(extra).output().unwrap().status.code();
    assert_eq!(run(&[]), Some(1), "padding garbage counts without a mask");
    assert_eq!(run(&["--case", case]), Some(0));
    let m = repo.path("mask.npy");
    let mt = Tensor::new(vec![bs, s], mask.data.iter().map(|&x| x as f32).collect()).unwrap();
    write_npy(&m, &mt).unwrap();
    assert_eq!(run(&["--mask", m.to_str().unwrap()]), Some(0));
}
