//! Shrinking on the mutant zoo: each injected port bug shrinks to the smallest input that still
//! shows it, with the same signature, within 300 evaluations.

mod common;

use common::skip::{Outcome, Skip};

use std::sync::Arc;

use common::TempRepo;
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::Verdict;
use harness::report::terminal::render;
use harness::shrink::signature::Signature;
use harness::shrink::{Budget, OracleChoice, Shrunk, regression, shrink_case};

const BUDGET: u32 = 300;

fn shrink(repo: &TempRepo, case: &str, m: Mutation, oracle: OracleChoice) -> Shrunk {
    let engine: Arc<dyn Engine> = Arc::new(ReferenceEngine::mutant("mutant", m));
    let suite = repo.suite(vec![engine.clone()]);
    let case = repo.load(case).expect("case loads");
    let budget = Budget { evaluations: BUDGET, time: None };
    let s = shrink_case(&suite, &case, &engine, &oracle, budget, true).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}: {} -> {} in {} evaluations, {:.2} s ({})",
        case.id,
        s.original_size,
        s.minimal_size,
        s.evaluations,
        s.elapsed.as_secs_f64(),
        s.signature
    );
    assert!(s.evaluations <= BUDGET && s.stopped_early.is_none(), "{:?}", s.stopped_early);
    s
}

fn ids(s: &Shrunk) -> Vec<Vec<i64>> {
    let m = &s.case.inputs.input_ids;
    (0..m.batch).map(|b| m.row(b).to_vec()).collect()
}

fn no_sliding_window_shrinks_to_a_sequence_just_longer_than_the_window() -> Outcome {
    let repo = TempRepo::with_cases(&["modernbert/long"]);
    let s = shrink(&repo, "modernbert/long", Mutation::NoSlidingWindow, OracleChoice::Engine("reference".into()));
    // local_attention 8: token i sees |i - j| <= 4, so 6 tokens is the first length where the
    // first token has a key outside its window. CLS (1) and SEP (2) are kept.
    let row = &ids(&s)[0];
    assert_eq!(row.len(), 8 / 2 + 2, "{row:?}");
    assert_eq!((row[0], row[row.len() - 1]), (1, 2));
    assert_eq!(s.signature.tap, "layers.*.attn");
    Ok(())
}

fn last_token_pooling_shrinks_to_cls_one_token_sep_on_modernbert() -> Outcome {
    let repo = TempRepo::with_cases(&["modernbert/sequence"]);
    let s = shrink(&repo, "modernbert/sequence", Mutation::PoolLastToken, OracleChoice::Engine("reference".into()));
    // The config names CLS (1) and SEP (2) and the case's row has them: kept, with one token
    // between (the smallest input a tokenizer makes from non-empty text).
    assert_eq!(ids(&s), vec![vec![1, 3, 2]]);
    assert!(s.signature.tap.starts_with("pooled.cls"), "{}", s.signature);
    Ok(())
}

fn last_token_pooling_shrinks_to_two_tokens_on_bert() -> Outcome {
    let repo = TempRepo::with_cases(&["bert/padded-batch"]);
    let s = shrink(&repo, "bert/padded-batch", Mutation::PoolLastToken, OracleChoice::Engine("reference".into()));
    // bert-tiny's config names no CLS/SEP id, so nothing is kept: two tokens, one row, no padding.
    let rows = ids(&s);
    assert_eq!((rows.len(), rows[0].len()), (1, 2), "{rows:?}");
    assert!(s.case.inputs.attention_mask.as_ref().is_none_or(|m| !m.data.contains(&0)));
    Ok(())
}

fn kv_cache_wrong_position_shrinks_to_one_prompt_token_and_one_step() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/decode"]);
    let s = shrink(&repo, "llama/decode", Mutation::KvCacheWrongPosition, OracleChoice::Engine("reference".into()));
    assert_eq!(ids(&s), vec![vec![1]], "the prompt keeps BOS only");
    assert_eq!(s.case.decode.as_ref().unwrap().tokens.shape(), [1, 1]);
    assert_eq!(s.signature.tap, "model.layers.*.self_attn@decode");
    Ok(())
}

fn a_shrunk_input_becomes_a_regression_case_the_runner_picks_up() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/decode"]);
    // The prefix oracle: the goldens' own rows and positions, so candidates are prefixes of a
    // row of the case (prompt and decode tokens as one sequence): BOS, then the prompt's second
    // token fed as the one decode step.
    let s = shrink(&repo, "llama/decode", Mutation::KvCacheWrongPosition, OracleChoice::Prefix);
    assert_eq!(ids(&s).iter().map(Vec::len).collect::<Vec<_>>(), [1]);
    assert_eq!(s.case.decode.as_ref().unwrap().tokens.shape(), [1, 1]);
    let case = repo.load("llama/decode").unwrap();
    let path = regression::write(repo.root(), &case, &s, "mutant").unwrap();
    let id = regression::case_id(&case, &s);
    assert_eq!(id, "regressions/llama-decode-model.layers.self_attn-decode-decode_step");
    assert_eq!(path, repo.path(&format!("cases/{id}.yaml")));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Shrunk by `harness shrink` from cases/llama/decode.yaml (engine `mutant`"), "{text}");
    assert!(
        text.contains("# Signature: first divergence `model.layers.*.self_attn@decode`, hint decode_step."),
        "{text}"
    );
    // It loads like any case: the minimal input, the source case's taps.
    let r = repo.load(&id).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!((&r.inputs, &r.decode), (&s.case.inputs, &s.case.decode));
    assert_eq!(r.taps.len(), s.case.taps.len());
    // The runner makes it a trial, which asks for its goldens until tools/ generates them.
    let report = repo.run(&id, "reference", vec![]);
    assert_eq!(report.verdict, Verdict::Error);
    let err = report.error.unwrap();
    assert!(err.contains(&harness::golden::regen_command(repo.root(), &id)), "{err}");
    assert!(err.contains(&format!("harness-goldens --case {id}")), "{err}");
    Ok(())
}

/// The whole workflow with Python: shrink against a live HF process, write the regression case,
/// generate its goldens with tools/, and run it. Needs tools/.venv and two Python start-ups
/// (~20-40 s), so it is opt-in: `cargo test --test shrink -- --ignored`. CI tests the HF
/// oracle's protocol in tools/tests/test_hf_oracle.py.
fn shrink_against_hf_then_generate_goldens_and_run_the_regression_case() -> Outcome {
    let python = harness::shrink::hf::python(&common::repo_root());
    if !python.exists() {
        return Err(Skip(format!(
            "{} does not exist (hint: python3 -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt)",
            python.display()
        )));
    }
    if common::skip::ci() {
        return Err(Skip("tools/ refuses to write goldens under CI (hint: run it locally)".into()));
    }
    let repo = TempRepo::with_cases(&["modernbert/sequence"]);
    std::os::unix::fs::symlink(common::repo_root().join("tools"), repo.path("tools")).unwrap();
    let s = shrink(&repo, "modernbert/sequence", Mutation::PoolLastToken, OracleChoice::Hf);
    assert_eq!(ids(&s), vec![vec![1, 3, 2]]);
    let case = repo.load("modernbert/sequence").unwrap();
    regression::write(repo.root(), &case, &s, "mutant").unwrap();
    let id = regression::case_id(&case, &s);
    let out = std::process::Command::new(&python)
        .arg(repo.path("tools/regen_goldens.py"))
        .args(["--quiet", "--root"])
        .arg(repo.root())
        .args(["--case", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(repo.path(&format!("goldens/{id}/manifest.json")).exists());
    // The regression case passes on the reference and fails on the mutant the same way.
    let ok = repo.run(&id, "reference", vec![]);
    assert_eq!(ok.verdict, Verdict::Pass, "{}", render(&ok));
    let mutant: Arc<dyn Engine> = Arc::new(ReferenceEngine::mutant("mutant", Mutation::PoolLastToken));
    let bad = repo.run(&id, "mutant", vec![mutant]);
    let sig = Signature::of(&bad).unwrap_or_else(|| panic!("{}", render(&bad)));
    assert!(s.signature.matches(&sig), "{sig} vs {}", s.signature);
    Ok(())
}

fn cli_shrink_writes_the_regression_case_and_respects_proptest_max_shrink_iters() -> Outcome {
    let repo = TempRepo::with_cases(&["modernbert/long"]);
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(common::harness_bin());
        cmd.args(["shrink", "modernbert/long", "--inject", "NoSlidingWindow"]).env("HARNESS_ROOT", repo.root());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Three shrink steps after the original: stopped early, still a smaller failing input.
    let (out, err) = run(&[("PROPTEST_MAX_SHRINK_ITERS", "3")]);
    assert!(out.contains("4 evaluations (budget 4)") && out.contains("stopped early"), "{out}");
    assert!(err.contains("shrink: eval 2: 1 row x 25 tokens (dropped 23 tokens from every row)"), "{err}");
    let (out, _) = run(&[]);
    assert!(out.contains("minimal input (1 row x 6 tokens; the case has 1 row x 48 tokens):"), "{out}");
    assert!(out.contains("  input_ids: [[1, 3, 3, 3, 3, 2]]"), "{out}");
    let file = repo.path("cases/regressions/modernbert-long-layers.attn-known_bug.yaml");
    assert!(out.contains("wrote ") && file.exists(), "{out}");
    assert!(out.contains("next: harness-goldens --case regressions/modernbert-long"), "{out}");
    Ok(())
}

/// `harness shrink` on an image case: HF (tools/adapters/hf_patched.py) with its patch embedding
/// scaled fails on both images; the CLI cuts the batch to image 0 and writes it as a case with
/// its pixels in a .npy file, which loads back as that row.
fn cli_shrink_cuts_an_image_case_to_one_row() -> Outcome {
    let python = common::repo_root().join("tools/.venv/bin/python");
    if !python.exists() {
        return Err(Skip(format!("{} does not exist (hint: see the README's venv commands)", python.display())));
    }
    let repo = TempRepo::with_cases(&["vit/pixels"]);
    std::os::unix::fs::symlink(common::repo_root().join("tools"), repo.path("tools")).unwrap();
    repo.write(
        "cases/engines/vit-scaled.yaml",
        "command: [tools/.venv/bin/python, tools/adapters/hf_patched.py]\nprotocol: 2\nfamilies: ['*']\n\
         dtype: float32\ntimeout: 300\nenv: {HARNESS_HF_PATCH: 'scale:vit.embeddings.patch_embeddings:1.5'}\n\
         names: []\nlayouts: []\n",
    );
    let out = std::process::Command::new(common::harness_bin())
        .args(["shrink", "vit/pixels", "--engine", "vit-scaled"])
        .env("HARNESS_ROOT", repo.root())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("minimal input: row 0 of 2 (pixel_values kept as they are"), "{stdout}");
    assert!(stderr.contains("shrink: row 0 of 2 alone: fails the same way"), "{stderr}");
    let id = "regressions/vit-pixels-row0-vit.embeddings.patch_embeddings-uniform_scale";
    assert!(stdout.contains(&format!("cases/{id}.yaml")), "{stdout}");
    assert!(stdout.contains(&format!("cases/{id}.pixel_values.npy")), "{stdout}");
    let back = repo.load(id).unwrap_or_else(|e| panic!("{e}"));
    let case = repo.load("vit/pixels").unwrap();
    assert_eq!(back.inputs.named, vec![case.inputs.named[0].select_rows(&[0])]);
    // A case that passes is an error (exit 2, through process::exit): the engine's session
    // directory goes all the same.
    let engine = std::fs::read_to_string(repo.path("cases/engines/vit-scaled.yaml")).unwrap();
    let unpatched: String = engine.lines().filter(|l| !l.starts_with("env:")).map(|l| format!("{l}\n")).collect();
    repo.write("cases/engines/vit-unpatched-cli.yaml", &unpatched);
    let sessions = || common::session_dirs("vit-unpatched-cli");
    let before = sessions();
    let out = std::process::Command::new(common::harness_bin())
        .args(["shrink", "vit/pixels", "--engine", "vit-unpatched-cli"])
        .env("HARNESS_ROOT", repo.root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not fail on `vit-unpatched-cli` (verdict pass)"), "{stderr}");
    let left: Vec<String> = sessions().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "session directories left behind: {left:?}");
    Ok(())
}

fn a_cases_shrink_settings_are_validated_where_they_are_written() -> Outcome {
    let repo = TempRepo::with_cases(&["bert/tiny-2l"]);
    let text = std::fs::read_to_string(repo.path("cases/bert/tiny-2l.yaml")).unwrap();
    repo.write("cases/bert/tiny-2l.yaml", &format!("{text}shrink: {{oracle: prefix}}\n"));
    let e = repo.load("bert/tiny-2l").unwrap_err().to_string();
    assert!(e.contains("tiny-2l.yaml:") && e.contains("the prefix oracle needs a causal model"), "{e}");
    repo.write("cases/bert/tiny-2l.yaml", &format!("{text}shrink: {{oracle: reference}}\n"));
    let e = repo.load("bert/tiny-2l").unwrap_err().to_string();
    assert!(e.contains("unknown oracle `reference`") && e.contains("engine:NAME"), "{e}");
    repo.write("cases/bert/tiny-2l.yaml", &format!("{text}shrink: {{oracle: 'engine:reference', budget: 50}}\n"));
    let case = repo.load("bert/tiny-2l").unwrap();
    assert_eq!(
        harness::shrink::default_oracle(&case, "my-port", &harness::engine::builtin()),
        OracleChoice::Engine("reference".into())
    );
    assert_eq!(case.shrink.unwrap().budget, Some(50));
    Ok(())
}

tests!(
    no_sliding_window_shrinks_to_a_sequence_just_longer_than_the_window,
    last_token_pooling_shrinks_to_cls_one_token_sep_on_modernbert,
    last_token_pooling_shrinks_to_two_tokens_on_bert,
    kv_cache_wrong_position_shrinks_to_one_prompt_token_and_one_step,
    a_shrunk_input_becomes_a_regression_case_the_runner_picks_up,
    #[ignore = "needs tools/.venv; slow (Python start-up twice)"]
    shrink_against_hf_then_generate_goldens_and_run_the_regression_case,
    cli_shrink_writes_the_regression_case_and_respects_proptest_max_shrink_iters,
    a_cases_shrink_settings_are_validated_where_they_are_written,
    cli_shrink_cuts_an_image_case_to_one_row,
);
