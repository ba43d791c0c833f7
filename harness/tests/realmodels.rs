//! Real models: text inputs and the tokenizer check, sentence embeddings, checkpoints on disk
//! (`path:` and `hf:`), and absent checkpoints reported as ignored.
//!
//! Tests that need all-MiniLM-L6-v2 (`tools/fetch_models.sh` puts it in models/) are reported
//! as ignored when it is absent, and fail under CI, where `.ci/run` fetches it first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::skip::{Outcome, Skip};
use common::{TempRepo, repo_root};
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TapStatus, Verdict, terminal};
use harness::runner::Suite;

fn minilm_dir() -> PathBuf {
    repo_root().join("models/all-MiniLM-L6-v2")
}

/// The MiniLM checkpoint is there, or the test is skipped (ignored; a failure under CI).
fn need_minilm() -> Outcome {
    if minilm_dir().join("model.safetensors").is_file() {
        return Ok(());
    }
    Err(Skip("models/all-MiniLM-L6-v2 is absent (hint: run tools/fetch_models.sh)".into()))
}

/// Re-sign a copied case's manifest for edited case/model-spec files (as if tools/ had
/// generated the goldens from them), so the edit reaches the comparison instead of being
/// reported as stale goldens.
fn resign(repo: &TempRepo, case: &str, model: &str, revision: Option<&str>) {
    let mpath = repo.path(&format!("goldens/{case}/manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let digest = |rel: &str, keys: &[&str]| {
        harness::digest::of_yaml(&std::fs::read_to_string(repo.path(rel)).unwrap(), keys).unwrap()
    };
    m["case_digest"] = digest(&format!("cases/{case}.yaml"), harness::digest::CASE_KEYS).into();
    m["model"]["spec_digest"] = digest(&format!("cases/models/{model}.yaml"), harness::digest::SPEC_KEYS).into();
    if let Some(r) = revision {
        m["model"]["revision"] = r.into();
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// A temp repository with `case` whose MiniLM model spec points at this checkout's models/.
fn minilm_repo(case: &str) -> TempRepo {
    let repo = TempRepo::with_cases(&[case]);
    repo.write(
        "cases/models/all-minilm-l6-v2.yaml",
        &format!("family: BertModel\nsource:\n  path: {}\n  allow_outside_root: true\n", minilm_dir().display()),
    );
    resign(&repo, case, "all-minilm-l6-v2", None);
    repo
}

fn edit(repo: &TempRepo, rel: &str, from: &str, to: &str) {
    let p = repo.path(rel);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    std::fs::write(p, text.replacen(from, to, 1)).unwrap();
}

/// The outcome word libtest printed for `trial` (`ok`, `ignored`, `FAILED`).
fn outcome<'a>(out: &'a str, trial: &str) -> &'a str {
    let line =
        out.lines().find(|l| l.starts_with(&format!("test {trial} "))).unwrap_or_else(|| panic!("{trial}: {out}"));
    line.rsplit(' ').next().unwrap()
}

/// `harness run ARGS` on the repository at `root` (the reference engine's trials are enough
/// here; filtering keeps the test fast).
fn harness_run(root: &Path, args: &[&str], env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new(common::harness_bin());
    cmd.arg("run").args(args).env("HARNESS_ROOT", root).env_remove("HARNESS_REPORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn minilm_same_sentence_twice_embeds_identically() -> Outcome {
    need_minilm()?;
    let root = repo_root();
    let suite = Suite::new(root.clone(), harness::engine::builtin());
    let case = harness::case::load_case(&root, &root.join("cases/minilm/twice.yaml"), &mut Default::default()).unwrap();
    let engine = suite.registry.get("reference").unwrap().clone();
    let report = suite.run_trial(&case, &engine);
    assert_eq!(report.verdict, Verdict::Pass, "{}", terminal::render(&report));
    assert_eq!(report.taps[0].name, "tokenizer.input_ids", "the tokenizer is compared first");

    let model = suite.model(&engine, &case.model).unwrap();
    let out = harness::trial::run_case(&case, model.as_ref(), &["similarity"]).unwrap();
    let e = &out["sentence_embedding"];
    let d = e.shape()[1];
    assert_eq!(&e.data()[..d], &e.data()[d..2 * d], "rows 0 and 1 (the same sentence) differ");
    assert_ne!(&e.data()[..d], &e.data()[2 * d..3 * d]);
    let s = &out["similarity"];
    assert!((s.data()[1] - 1.0).abs() < 1e-6, "similarity of the same sentence {}", s.data()[1]);
    // sentence-transformers agrees: its two rows are identical too.
    let g = harness::tensor::read_npy(&root.join("goldens/minilm/twice/sentence_embedding.npy"), None).unwrap();
    assert_eq!(&g.data()[..d], &g.data()[d..2 * d]);
    Ok(())
}

fn minilm_ignoring_the_mask_fails_at_the_first_attention() -> Outcome {
    need_minilm()?;
    // Straight from the repository, without the known-bug probes (a dozen 6-layer re-runs):
    // only the localization is asserted here.
    let root = repo_root();
    let case =
        harness::case::load_case(&root, &root.join("cases/minilm/padded-batch.yaml"), &mut Default::default()).unwrap();
    let goldens = harness::golden::Store::new(&root).open(&case).unwrap();
    let model = ReferenceEngine::mutant("mutant", Mutation::IgnoreAttentionMask).load(&case.model).unwrap();
    let r = harness::trial::run(&case, "mutant", model.as_ref(), &goldens, String::new(), None);
    assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
    let first = r.first_divergent_tap().unwrap();
    assert_eq!(first.name, "encoder.layer.0.attention", "{}", terminal::render(&r));
    assert!(r.taps.iter().any(|t| t.name == "sentence_embedding" && !t.status.is_pass()));
    Ok(())
}

/// A port that truncates where tokenizer.json says (128) instead of sentence-transformers'
/// max_seq_length (256): the tokenizer tap reports it first, with the position and both tokens.
fn tokenizer_truncation_mismatch_is_reported_as_such() -> Outcome {
    need_minilm()?;
    let case = "minilm/unicode-long";
    let repo = minilm_repo(case);
    edit(
        &repo,
        &format!("cases/{case}.yaml"),
        "tokenizer: {truncation: true}",
        "tokenizer: {truncation: true, max_length: 128}",
    );
    resign(&repo, case, "all-minilm-l6-v2", None);
    let r = repo.run(case, "reference", vec![]);
    let text = terminal::render(&r);
    assert_eq!(r.verdict, Verdict::Fail, "{text}");
    let first = r.first_divergent_tap().unwrap();
    assert_eq!(first.name, "tokenizer.input_ids", "{text}");
    let TapStatus::Tokenizer { at, harness, hf, harness_shape } = &first.status else { panic!("{text}") };
    assert_eq!(at, &[0, 127]);
    assert_eq!(harness.as_ref().unwrap().token.as_deref(), Some("[SEP]"));
    assert_ne!(hf.as_ref().unwrap().id, 102);
    assert_eq!((harness_shape.as_slice(), first.shape.as_slice()), (&[1, 128][..], &[1, 256][..]));
    assert!(text.contains("tokenizer divergence at [0,127]: the harness has `[SEP]` (102)"), "{text}");
    assert!(text.contains("the model ran on the harness's tokenization"), "{text}");
    assert_eq!(r.hints[0].kind, harness::diagnose::HintKind::TokenizerDivergence);
    assert!(r.hints[0].message.contains("truncation"), "{}", r.hints[0].message);
    // The activations were computed on the harness's 128 tokens, not skipped.
    assert!(r.taps.iter().any(|t| t.name == "embeddings" && matches!(t.status, TapStatus::ShapeMismatch { .. })));
    Ok(())
}

fn tokenizer_special_tokens_mismatch_is_reported_at_position_zero() -> Outcome {
    need_minilm()?;
    let case = "minilm/twice";
    let repo = minilm_repo(case);
    edit(&repo, &format!("cases/{case}.yaml"), "taps:", "  tokenizer: {add_special_tokens: false}\ntaps:");
    resign(&repo, case, "all-minilm-l6-v2", None);
    let r = repo.run(case, "reference", vec![]);
    let text = terminal::render(&r);
    let first = r.first_divergent_tap().unwrap();
    let TapStatus::Tokenizer { at, harness, hf, .. } = &first.status else { panic!("{text}") };
    assert_eq!(at, &[0, 0]);
    assert_eq!(harness.as_ref().unwrap().token.as_deref(), Some("the"));
    assert_eq!(hf.as_ref().unwrap().token.as_deref(), Some("[CLS]"));
    assert!(r.hints[0].message.contains("add_special_tokens"), "{}", r.hints[0].message);
    Ok(())
}

/// No checkpoint: the trial is ignored with the reason and the command, never passed; asked
/// for (`--include-ignored`), it runs and fails with the same error.
fn absent_model_is_ignored_with_the_command_that_provides_it() -> Outcome {
    let repo = TempRepo::with_cases(&["minilm/twice", "bert/sequence"]);
    let (ok, out) = harness_run(repo.root(), &["reference::"], &[]);
    assert!(ok, "{out}");
    assert_eq!(outcome(&out, "reference::minilm/twice"), "ignored", "{out}");
    assert_eq!(outcome(&out, "reference::bert/sequence"), "ok", "{out}");
    // One ignored trial per engine that would run the case, each named in the note.
    let ignored: Vec<&str> = out.lines().filter(|l| l.contains("::minilm/twice") && l.ends_with("ignored")).collect();
    assert!(!ignored.is_empty(), "{out}");
    let n = ignored.len();
    let note = if n == 1 { "note: 1 trial ignored: ".to_string() } else { format!("note: {n} trials ignored: ") };
    assert!(out.contains(&note), "{out}");
    assert!(out.contains("model `all-minilm-l6-v2` is absent"), "{out}");
    assert!(out.contains("provide it with: tools/fetch_models.sh"), "{out}");
    assert!(out.contains(&format!("0 failed; {n} ignored")), "{out}");

    let (ok, out) = harness_run(repo.root(), &["reference::", "--include-ignored"], &[]);
    assert!(!ok, "{out}");
    assert_eq!(outcome(&out, "reference::minilm/twice"), "FAILED", "{out}");
    assert!(out.contains("the checkpoint directory `models/all-MiniLM-L6-v2` does not exist"), "{out}");
    let (_, listed) = harness_run(repo.root(), &["--list", "--ignored"], &[]);
    assert!(listed.contains("reference::minilm/twice: test") && !listed.contains("bert/sequence"), "{listed}");
    Ok(())
}

/// Lay out `files` as a Hugging Face cache snapshot of `org/name` at `hash`, `refs/main` -> hash.
fn cache_snapshot(cache: &Path, id: &str, hash: &str, files: &Path) {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(files.join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
}

fn hf_source_resolves_offline_and_pins_the_revision() -> Outcome {
    let repo = TempRepo::with_cases(&["bert/sequence"]);
    let cache = tempfile::tempdir().unwrap();
    let (h1, h2) = ("1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222");
    cache_snapshot(cache.path(), "test-org/bert-tiny", h1, &repo.path("goldens/models/bert-tiny"));
    repo.write("cases/models/bert-tiny.yaml", "family: BertModel\nsource:\n  hf: test-org/bert-tiny\n");
    let env = [("HF_HUB_CACHE", cache.path())];

    // Goldens made before the revision was pinned are stale, naming the revision.
    resign(&repo, "bert/sequence", "bert-tiny", None);
    let (ok, out) = harness_run(repo.root(), &["reference::"], &env);
    assert!(
        !ok && out.contains(
            "the model revision (none in the manifest, 1111111111111111111111111111111111111111 in the cache)"
        ),
        "{out}"
    );

    resign(&repo, "bert/sequence", "bert-tiny", Some(h1));
    let (ok, out) = harness_run(repo.root(), &["reference::"], &env);
    assert!(ok && outcome(&out, "reference::bert/sequence") == "ok", "{out}");

    // `main` moves to another commit: stale, even with identical files.
    cache_snapshot(cache.path(), "test-org/bert-tiny", h2, &repo.path("goldens/models/bert-tiny"));
    let (ok, out) = harness_run(repo.root(), &["reference::"], &env);
    assert!(!ok && out.contains(&format!("({h1} in the manifest, {h2} in the cache)")), "{out}");

    // A pinned revision still resolves to the first snapshot.
    repo.write(
        "cases/models/bert-tiny.yaml",
        &format!("family: BertModel\nsource:\n  hf: test-org/bert-tiny\n  revision: {h1}\n"),
    );
    resign(&repo, "bert/sequence", "bert-tiny", Some(h1));
    let (ok, out) = harness_run(repo.root(), &["reference::"], &env);
    assert!(ok, "{out}");

    // Not in this cache: ignored, with the download command.
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = harness_run(repo.root(), &["reference::"], &[("HF_HUB_CACHE", empty.path())]);
    assert!(ok && outcome(&out, "reference::bert/sequence") == "ignored", "{out}");
    assert!(
        out.contains(&format!("provide it with: huggingface-cli download test-org/bert-tiny --revision {h1}")),
        "{out}"
    );
    Ok(())
}

/// A hand edit of a checkpoint's tokenizer or config file makes its goldens stale, naming the
/// file (the manifest records their sha256), instead of surfacing as an engine bug.
fn edited_checkpoint_files_make_the_goldens_stale_naming_the_file() -> Outcome {
    need_minilm()?;
    let case = "minilm/twice";
    let repo = TempRepo::with_cases(&[case]);
    let copy = repo.path("ckpt");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(minilm_dir()).unwrap() {
        let p = e.unwrap().path();
        let dst = copy.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
            }
        } else if p.file_name().unwrap() == "model.safetensors" {
            std::os::unix::fs::symlink(&p, &dst).unwrap();
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
    repo.write("cases/models/all-minilm-l6-v2.yaml", "family: BertModel\nsource:\n  path: ckpt\n");
    resign(&repo, case, "all-minilm-l6-v2", None);
    assert_eq!(repo.run(case, "reference", vec![]).verdict, Verdict::Pass, "fresh before the edit");
    edit(&repo, "ckpt/tokenizer_config.json", "\"do_lower_case\": true", "\"do_lower_case\": false");
    let r = repo.run(case, "reference", vec![]);
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(e.contains("goldens are stale: the model file") && e.contains("ckpt/tokenizer_config.json"), "{e}");
    Ok(())
}

tests!(
    edited_checkpoint_files_make_the_goldens_stale_naming_the_file,
    minilm_same_sentence_twice_embeds_identically,
    minilm_ignoring_the_mask_fails_at_the_first_attention,
    tokenizer_truncation_mismatch_is_reported_as_such,
    tokenizer_special_tokens_mismatch_is_reported_at_position_zero,
    absent_model_is_ignored_with_the_command_that_provides_it,
    hf_source_resolves_offline_and_pins_the_revision,
);
