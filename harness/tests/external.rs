//! External-process engines (cases/engines/*.yaml) and engine-vs-engine cases.
//!
//! The engines here are tiny shell scripts (tests/engines/): `replay.sh` "computes" by copying
//! tensors prepared by the test (the reference engine's outputs under ggml-like names, in ggml's
//! reversed layout), `sleep.sh` hangs, `crash.sh` exits 1. No Python is involved.

mod common;

use common::skip::{Outcome, Skip};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempRepo;
use harness::engine::Engine;
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TapStatus, TrialReport, Verdict, terminal};
use harness::tensor::{Tensor, write_npy};

const CASE: &str = "llama/mha";

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/engines").join(name).display().to_string()
}

/// The engine's own name for an HF tap: `model.layers.N.rest` -> `blk.N.rest`,
/// `model.embed_tokens` -> `token_embd`; the rest unchanged.
fn own_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        return format!("blk.{rest}");
    }
    if hf == "model.embed_tokens" { "token_embd".into() } else { hf.into() }
}

/// Dims reversed, as ggml stores them.
fn reversed(t: &Tensor) -> Tensor {
    let shape = t.shape();
    let n = shape.len();
    let strides: Vec<usize> = (0..n).map(|k| shape[k + 1..].iter().product()).collect();
    let out_shape: Vec<usize> = shape.iter().rev().copied().collect();
    let mut data = vec![0.0; t.numel()];
    for (i, v) in data.iter_mut().enumerate() {
        // Output index i over out_shape; source index is the same multi-index read backwards.
        let mut rem = i;
        let mut src = 0;
        for k in (0..n).rev() {
            let idx = rem % out_shape[k];
            rem /= out_shape[k];
            src += idx * strides[n - 1 - k];
        }
        *v = t.data()[src];
    }
    Tensor::new(out_shape, data).unwrap()
}

/// The reference engine's outputs for the case, written as the replay engine's tensors: per-layer
/// ones reversed (ggml order), under the engine's own names.
fn replay_dir(repo: &TempRepo, reverse: bool) -> PathBuf {
    let case = repo.load(CASE).unwrap();
    let model = ReferenceEngine::new().load(&case.model).unwrap();
    let taps: Vec<&str> = case.taps.iter().map(|t| t.name.as_str()).collect();
    let outs = model.run(&case.inputs, &taps).unwrap();
    let dir = repo.path("replay");
    std::fs::create_dir_all(&dir).unwrap();
    for (hf, t) in &outs {
        let name = own_name(hf);
        let t = if reverse && name.starts_with("blk.") { reversed(t) } else { t.clone() };
        write_npy(&dir.join(format!("{name}.npy")), &t).unwrap();
    }
    dir
}

const RULES: &str = r#"names:
  - {engine: token_embd, hf: model.embed_tokens}
  - {engine: 'blk\.(\d+)', hf: 'model.layers.$1'}
  - {engine: 'blk\.(\d+)\.(.+)', hf: 'model.layers.$1.$2'}
"#;

/// Write `cases/engines/<name>.yaml` running `script` with `env`, plus `extra` YAML.
fn engine_file(repo: &TempRepo, name: &str, script_name: &str, env: &[(&str, &str)], extra: &str) {
    let env: Vec<String> = env.iter().map(|(k, v)| format!("  {k}: '{v}'")).collect();
    let env = if env.is_empty() { String::new() } else { format!("env:\n{}\n", env.join("\n")) };
    repo.write(
        &format!("cases/engines/{name}.yaml"),
        &format!(
            "command: [sh, '{}', \"{{request}}\"]\nfamilies: [LlamaForCausalLM]\n{env}{extra}",
            script(script_name)
        ),
    );
}

/// The case, run on `engine`.
fn run_on(repo: &TempRepo, engine: &str) -> TrialReport {
    let case = repo.load(CASE).unwrap();
    let suite = repo.suite(vec![]);
    let e = suite.registry.get(engine).unwrap_or_else(|| panic!("{engine} not registered: {:?}", suite.engine_errors));
    suite.run_trial(&case, &e.clone())
}

fn replay_repo(reverse_layout: bool, extra: &str) -> (TempRepo, PathBuf) {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = replay_dir(&repo, true);
    let copy = repo.path("request-copy.json");
    let layouts = if reverse_layout { "layouts:\n  - {engine: 'blk\\..*', reverse: true}\n" } else { "" };
    let env = [("REPLAY_DIR", dir.to_str().unwrap()), ("REQUEST_COPY", copy.to_str().unwrap())];
    engine_file(&repo, "replay", "replay.sh", &env, &format!("{RULES}{layouts}{extra}"));
    (repo, dir)
}

fn names_and_layouts_are_mapped_and_the_request_is_complete() -> Outcome {
    let (repo, _) = replay_repo(true, "");
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Pass, "{}", terminal::render(&r));
    // The reference engine's own numbers came back through names, a reversed layout and .npy:
    // every tap is exactly as far from its golden as the reference engine is.
    let direct = repo.run(CASE, "reference", vec![]);
    let max_abs = |r: &TrialReport| r.taps.iter().map(|t| t.metrics.as_ref().unwrap().max_abs).collect::<Vec<_>>();
    assert_eq!(max_abs(&r), max_abs(&direct));
    let req: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.path("request-copy.json")).unwrap()).unwrap();
    assert_eq!(req["protocol"], 1);
    assert_eq!(req["model"]["family"], "LlamaForCausalLM");
    assert_eq!(req["model"]["config"]["hidden_size"], 64);
    assert_eq!(req["inputs"]["input_ids"]["shape"], serde_json::json!([1, 12]));
    let taps = req["taps"].as_array().unwrap();
    assert_eq!(taps.len(), r.taps.len());
    let find = |hf: &str| taps.iter().find(|t| t["hf"] == hf).unwrap()["engine"].clone();
    assert_eq!(find("model.layers.1.self_attn.o_proj"), "blk.1.self_attn.o_proj");
    assert_eq!(find("model.embed_tokens"), "token_embd");
    assert_eq!(find("logits"), "logits");
    // The inputs are int64 .npy files next to request.json (gone with the request directory).
    assert!(Path::new(req["model"]["dir"].as_str().unwrap()).join("model.safetensors").is_file());
    Ok(())
}

fn a_missing_layout_rule_names_the_tap_and_suggests_the_rule() -> Outcome {
    let (repo, _) = replay_repo(false, "");
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(
        e.contains(
            "cases/engines/replay.yaml: engine `replay` gave tap `model.layers.0.input_layernorm` (its `blk.0.input_layernorm`) shape [64, 12, 1] after the \
             layout rules; HF's is [batch=1, seq=12, ...]"
        ),
        "{e}"
    );
    assert!(e.ends_with("(hint: its dimensions look reversed (ggml order): add `{engine: 'blk\\.0\\.input_layernorm', reverse: true}` under `layouts:`)"), "{e}");
    Ok(())
}

fn a_wrong_shape_past_the_leading_axes_is_a_shape_mismatch_with_a_hint() -> Outcome {
    // Per-token rows flattened differently: [1, 12, 64] written as [1, 12, 4, 16].
    let (repo, _) = replay_repo(
        false,
        "layouts:\n  - {engine: 'blk\\.1\\.self_attn', reverse: true, reshape: [batch, seq, 4, 16]}\n  - {engine: 'blk\\..*', reverse: true}\n",
    );
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
    let t = r.first_divergent_tap().unwrap();
    assert_eq!(t.name, "model.layers.1.self_attn");
    assert_eq!(t.status, TapStatus::ShapeMismatch { actual: vec![1, 12, 4, 16], expected: vec![1, 12, 64] });
    assert!(r.hints.iter().any(|h| h.message.contains("only the shape differs")), "{:?}", r.hints);
    Ok(())
}

fn a_missing_tap_names_the_engine_file_and_the_tap() -> Outcome {
    let (repo, dir) = replay_repo(true, "");
    std::fs::remove_file(dir.join("blk.1.mlp.up_proj.npy")).unwrap();
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(
        e.contains("cases/engines/replay.yaml: engine `replay` wrote no tensor for tap `model.layers.1.mlp.up_proj`"),
        "{e}"
    );
    assert!(
        e.contains("looked for `blk.1.mlp.up_proj`") && e.contains("(hint: check the engine's `names:` rules"),
        "{e}"
    );
    Ok(())
}

fn an_unreadable_output_names_the_tensor_and_the_tap() -> Outcome {
    let (repo, dir) = replay_repo(true, "");
    std::fs::write(dir.join("blk.0.mlp.npy"), b"\x93NUMPY garbage").unwrap();
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(e.contains("cases/engines/replay.yaml: engine `replay`'s tensor `blk.0.mlp` `blk.0.mlp.npy` for tap `model.layers.0.mlp` is unreadable"), "{e}");
    assert!(e.contains("hint: write one little-endian C-order .npy"), "{e}");
    Ok(())
}

fn outputs_of_another_dtype_than_declared_are_refused() -> Outcome {
    let (repo, _) = replay_repo(true, "dtype: bfloat16\n");
    let e = run_on(&repo, "replay").error.unwrap();
    assert!(e.contains("is float32, but its engine file declares `dtype: bfloat16`"), "{e}");
    Ok(())
}

fn a_layout_rule_that_does_not_fit_is_located() -> Outcome {
    let (repo, _) = replay_repo(false, "layouts:\n  - {engine: 'blk\\..*', reshape: [batch, seq, 7]}\n");
    let e = run_on(&repo, "replay").error.unwrap();
    let text = std::fs::read_to_string(repo.path("cases/engines/replay.yaml")).unwrap();
    let line = text.lines().position(|l| l.contains("reshape")).unwrap() + 1;
    let at = format!("cases/engines/replay.yaml:{line}:5: layout rule `blk\\..*` (reshape [batch, seq, 7])");
    assert!(e.contains(&at), "{e}");
    assert!(e.contains("cannot reshape [64, 12, 1] (768 values) to [1, 12, 7]"), "{e}");
    Ok(())
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

/// Waits up to 5 s for `pid` to be gone (or a zombie waiting for init); panics with `what` if it
/// still runs.
fn assert_ends(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid).is_some_and(|s| s != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(process_state(pid).is_none_or(|s| s == 'Z'), "{what} {pid} survived: {:?}", process_state(pid));
}

fn a_hanging_engine_is_killed_at_its_timeout_with_its_children() -> Outcome {
    let repo = TempRepo::with_cases(&[CASE]);
    let pid_file = repo.path("child.pid");
    engine_file(&repo, "sleeper", "sleep.sh", &[("PID_FILE", pid_file.to_str().unwrap())], "timeout: 1\n");
    let start = Instant::now();
    let r = run_on(&repo, "sleeper");
    let took = start.elapsed();
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(
        e.contains("engine `sleeper` did not finish within its timeout of 1 s and was killed with its process group"),
        "{e}"
    );
    assert!(e.contains("its stderr:\n    | loading weights..."), "{e}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // Dead, or a zombie waiting for init to reap it; never still sleeping.
    assert_ends(pid, "child");
    Ok(())
}

fn a_crash_is_reported_with_its_status_and_stderr_tail() -> Outcome {
    let repo = TempRepo::with_cases(&[CASE]);
    engine_file(&repo, "crash", "crash.sh", &[], "");
    let r = run_on(&repo, "crash");
    assert_eq!(r.verdict, Verdict::Error);
    let e = r.error.unwrap();
    assert!(e.starts_with("engine `crash` failed: /"), "{e}");
    assert!(e.contains("cases/engines/crash.yaml: engine `crash` exited with status 1 after"), "{e}");
    assert!(e.contains("the last 20 lines of its stderr:\n    | trace line 7\n"), "{e}");
    assert!(e.ends_with("    | error: unsupported tensor type q4_k in blk.0.attn_q"), "{e}");
    assert!(!e.contains("trace line 6\n"), "{e}");
    Ok(())
}

fn bad_engine_files_become_load_trials_and_hide_nothing() -> Outcome {
    let (repo, _) = replay_repo(true, "");
    repo.write("cases/engines/broken.yaml", "command: [x]\nfamilies: [LlamaForCausalLM]\ntimout: 3\n");
    let suite = repo.suite(vec![]);
    let names: Vec<String> = suite.trials().unwrap().iter().map(|t| t.name().to_string()).collect();
    assert!(names.contains(&"load::engines/broken".to_string()), "{names:?}");
    assert!(names.contains(&"reference::llama/mha".to_string()), "{names:?}");
    let (_, _, e) = &suite.engine_errors[0];
    assert!(e.to_string().ends_with("broken.yaml:3:1: unknown key `timout` (hint: did you mean `timeout`?)"), "{e}");
    // A case that names the broken engine says why it is unknown.
    let text = std::fs::read_to_string(repo.path("cases/llama/mha.yaml")).unwrap();
    repo.write("cases/llama/mha.yaml", &format!("{text}engines: [broken]\n"));
    let case = repo.load(CASE).unwrap();
    let e = suite.engines_for(&case).err().unwrap().to_string();
    assert!(e.contains("engine `broken` is declared in") && e.contains("which does not load"), "{e}");
    // An external engine runs only where a case lists it unless it says `default: true`.
    let plain = repo.load("llama/mha").map(|mut c| {
        c.engines = None;
        c
    });
    let engines: Vec<String> =
        suite.engines_for(&plain.unwrap()).unwrap().iter().map(|e| e.name().to_string()).collect();
    // The built-in engines for the family, without `replay` (an external engine, not default).
    assert!(engines.contains(&"reference".to_string()) && !engines.contains(&"replay".to_string()), "{engines:?}");
    Ok(())
}

fn an_engine_that_is_not_installed_is_ignored_outside_ci_with_the_reason() -> Outcome {
    let repo = TempRepo::with_cases(&[CASE]);
    repo.write(
        "cases/engines/absent.yaml",
        "command: [tools/.venv/bin/no-such-python, x.py]\nfamilies: [LlamaForCausalLM]\nsetup: make venv\n",
    );
    let suite = repo.suite(vec![]);
    let case = repo.load(CASE).unwrap();
    let e = suite.registry.get("absent").unwrap().clone();
    let reason = suite.unavailable(&case, &e).unwrap();
    assert!(reason.contains("its command `tools/.venv/bin/no-such-python` does not exist"), "{reason}");
    assert!(reason.ends_with("set it up with: make venv"), "{reason}");
    // Run anyway (as in CI): an error with the same reason, never a pass.
    let r = suite.run_trial(&case, &e);
    assert_eq!(r.verdict, Verdict::Error);
    assert!(r.error.unwrap().contains("does not exist"));
    Ok(())
}

/// A case compared against another engine instead of goldens.
fn engine_vs_engine_repo() -> TempRepo {
    let repo = TempRepo::with_cases(&[CASE]);
    let text = std::fs::read_to_string(repo.path("cases/llama/mha.yaml")).unwrap();
    repo.write("cases/llama/vs-reference.yaml", &format!("{text}reference: {{engine: reference}}\n"));
    repo
}

fn engine_vs_engine_localizes_and_hints_a_mutant() -> Outcome {
    let repo = engine_vs_engine_repo();
    let mutant: Arc<dyn Engine> = Arc::new(ReferenceEngine::mutant("rope-interleaved", Mutation::RopeInterleaved));
    let r = repo.run("llama/vs-reference", "rope-interleaved", vec![mutant]);
    assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
    // RoPE acts inside attention: q/k/v projections still match, the attention output does not.
    let first = r.first_divergent_tap().unwrap();
    assert_eq!(first.name, "model.layers.0.self_attn.o_proj", "{}", terminal::render(&r));
    assert!(r.taps[..r.first_divergence.unwrap()].iter().all(|t| t.status.is_pass()));
    let top = &r.hints[0];
    assert!(top.message.contains("interleaved pairs"), "{}", terminal::render(&r));
    // The reference itself passes against the reference: no goldens were needed.
    assert!(!repo.path("goldens/llama/vs-reference").exists());
    assert_eq!(repo.run("llama/vs-reference", "perturbed", vec![perturbed()]).verdict, Verdict::Fail);
    Ok(())
}

fn perturbed() -> Arc<dyn Engine> {
    Arc::new(ReferenceEngine::mutant(
        "perturbed",
        Mutation::PerturbWeight { name: "model.layers.1.mlp.up_proj.weight".into(), index: 5, delta: 0.5 },
    ))
}

fn engine_vs_engine_excludes_the_reference_and_checks_its_name() -> Outcome {
    let repo = engine_vs_engine_repo();
    let suite = repo.suite(vec![perturbed()]);
    let case = repo.load("llama/vs-reference").unwrap();
    // Every default engine but the reference itself (mutants are not default).
    let engines: Vec<String> = suite.engines_for(&case).unwrap().iter().map(|e| e.name().to_string()).collect();
    assert!(!engines.is_empty() && !engines.iter().any(|e| e == "reference" || e == "perturbed"), "{engines:?}");
    let text = std::fs::read_to_string(repo.path("cases/llama/vs-reference.yaml")).unwrap();
    repo.write("cases/llama/vs-reference.yaml", &text.replace("engine: reference}", "engine: refrence}"));
    let case = repo.load("llama/vs-reference").unwrap();
    let e = suite.engines_for(&case).err().unwrap().to_string();
    assert!(e.ends_with("vs-reference.yaml:16:21: unknown engine `refrence` (hint: did you mean `reference`?)"), "{e}");
    Ok(())
}

fn diff_applies_an_engines_rules() -> Outcome {
    let (repo, dir) = replay_repo(true, "");
    let spec = harness::engine::external::spec::load(repo.root(), &repo.path("cases/engines/replay.yaml")).unwrap();
    let mapping = harness::engine::external::EngineMapping { rules: &spec.rules };
    let tol = harness::tolerance::Tolerance::default();
    let d = harness::diff::diff(&repo.path("goldens/llama/mha"), &dir, &tol, &mapping).unwrap();
    assert_eq!(d.report.verdict, Verdict::Pass, "{}", terminal::render(&d.report));
    assert_eq!(d.report.taps.len(), repo.load(CASE).unwrap().taps.len());
    // Without the rules, B's names match only the taps it writes under their HF names.
    let d = harness::diff::diff(&repo.path("goldens/llama/mha"), &dir, &tol, &harness::diff::Identity).unwrap();
    let found: Vec<&str> =
        d.report.taps.iter().filter(|t| t.status != TapStatus::Missing).map(|t| t.name.as_str()).collect();
    assert_eq!(found, ["model.norm", "logits"]);
    Ok(())
}

/// The generic engine of every class (HF in bfloat16, tools/adapters/hf_bf16.py) with a bug
/// planted by $HARNESS_HF_PATCH, written there and not in the reference engine: a Gemma 2 port
/// that skips the norm after each feed-forward block fails first at that norm, and a Phi-3 port
/// that scales its attention output fails first at that projection.
fn generic_engine_with_a_planted_bug_fails_at_that_tap() -> Outcome {
    let python = common::repo_root().join("tools/.venv/bin/python");
    if !python.exists() {
        return Err(Skip(format!(
            "{} does not exist (hint: python3 -m venv tools/.venv && tools/.venv/bin/pip install -r tools/requirements.txt)",
            python.display()
        )));
    }
    for (case, patch, first) in [
        (
            "gemma2/sequence",
            "skip:model.layers.1.post_feedforward_layernorm",
            "model.layers.1.post_feedforward_layernorm",
        ),
        ("phi3/sequence", "scale:model.layers.0.self_attn.o_proj:1.5", "model.layers.0.self_attn.o_proj"),
    ] {
        let repo = TempRepo::with_cases(&[case]);
        std::os::unix::fs::symlink(common::repo_root().join("tools"), repo.path("tools")).unwrap();
        let engine = std::fs::read_to_string(common::repo_root().join("cases/engines/hf-bf16.yaml")).unwrap();
        repo.write("cases/engines/hf-bf16.yaml", &engine);
        repo.write("cases/engines/hf-bf16-bug.yaml", &format!("{engine}env: {{HARNESS_HF_PATCH: '{patch}'}}\n"));
        let clean = repo.run(case, "hf-bf16", vec![]);
        assert_eq!(clean.verdict, Verdict::Pass, "{}", terminal::render(&clean));
        let r = repo.run(case, "hf-bf16-bug", vec![]);
        assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
        let i = r.first_divergence.unwrap();
        assert_eq!(r.taps[i].name, first, "{}", terminal::render(&r));
        assert!(r.taps[..i].iter().all(|t| t.status.is_pass()), "{}", terminal::render(&r));
    }
    Ok(())
}

/// A protocol-2 engine (tests/engines/replay2.py) on the replay tensors, with `env` knobs.
fn replay2_repo(env: &[(&str, &str)], extra: &str) -> TempRepo {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = replay_dir(&repo, true);
    let mut vars = vec![
        format!("  REPLAY_DIR: '{}'", dir.display()),
        format!("  REPLAY2_LOG: '{}'", repo.path("requests.jsonl").display()),
        format!("  REPLAY2_STARTS: '{}'", repo.path("starts.txt").display()),
    ];
    vars.extend(env.iter().map(|(k, v)| format!("  {k}: '{v}'")));
    repo.write(
        "cases/engines/replay2.yaml",
        &format!(
            "command: [python3, '{}']\nprotocol: 2\noptions: {{kv_cache: f32}}\nfamilies: [LlamaForCausalLM]\n\
             env:\n{}\n{RULES}layouts:\n  - {{engine: 'blk\\..*', reverse: true}}\n{extra}",
            script("replay2.py"),
            vars.join("\n")
        ),
    );
    repo
}

fn starts(repo: &TempRepo) -> usize {
    std::fs::read_to_string(repo.path("starts.txt")).map_or(0, |s| s.lines().count())
}

fn protocol_2_starts_the_engine_once_per_model_and_compares_as_protocol_1() -> Outcome {
    let repo = replay2_repo(&[], "");
    // Per-case engine options, merged over the engine file's (not a goldens input: still fresh).
    let file = repo.path(&format!("cases/{CASE}.yaml"));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\nengine_options:\n  replay2: {{kv_cache: f16, seed: 3}}\n")).unwrap();
    let case = repo.load(CASE).unwrap();
    let suite = repo.suite(vec![]);
    let e = suite.registry.get("replay2").unwrap_or_else(|| panic!("{:?}", suite.engine_errors)).clone();
    let direct = repo.run(CASE, "reference", vec![]);
    for _ in 0..3 {
        let r = suite.run_trial(&case, &e);
        assert_eq!(r.verdict, Verdict::Pass, "{}", terminal::render(&r));
        let max = |r: &TrialReport| r.taps.iter().map(|t| t.metrics.as_ref().unwrap().max_abs).collect::<Vec<_>>();
        assert_eq!(max(&r), max(&direct));
        assert!(r.notes.iter().any(|n| n.contains("replay2 test engine")), "{:?}", r.notes);
    }
    assert_eq!(starts(&repo), 1, "one process for three forwards");
    let log = std::fs::read_to_string(repo.path("requests.jsonl")).unwrap();
    let reqs: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reqs[0]["op"], "load");
    assert_eq!(reqs[0]["protocol"], 2);
    assert_eq!(reqs[0]["model"]["class"], "LlamaForCausalLM");
    let fwd = &reqs[1];
    assert_eq!(fwd["op"], "forward");
    assert_eq!(fwd["options"]["kv_cache"], "f16", "the case's option wins");
    assert_eq!(fwd["options"]["seed"], 3);
    assert_eq!(fwd["case"], CASE);
    assert_eq!(reqs[0]["options"]["kv_cache"], "f32", "`load` gets the engine file's options");
    assert_eq!(fwd["inputs"]["position_ids"]["shape"], serde_json::json!([1, 12]));
    assert!(Path::new(fwd["inputs"]["input_ids"]["file"].as_str().unwrap()).is_absolute());
    drop(suite);
    // The suite's end sends `shutdown`: the last line the engine read.
    let log = std::fs::read_to_string(repo.path("requests.jsonl")).unwrap();
    assert!(log.lines().last().unwrap().contains("shutdown"), "{log}");
    Ok(())
}

fn a_run_stops_its_engines_and_removes_their_session_files() -> Outcome {
    let repo = replay2_repo(&[], "default: true\n");
    // A name of its own: session directories are named after the engine.
    std::fs::rename(repo.path("cases/engines/replay2.yaml"), repo.path("cases/engines/replay2-ends.yaml")).unwrap();
    let sessions = || common::session_dirs("replay2-ends");
    let before = sessions();
    let args = libtest_mimic::Arguments::from_iter(["cases", "--test-threads", "1", "--quiet"]);
    let (suite, conclusion) =
        harness::Harness::new().root(repo.root()).filters(vec!["replay2-ends::".into()]).run_with(&args).unwrap();
    assert_eq!((conclusion.num_passed, conclusion.num_failed), (1, 0));
    // Still holding the suite, as `harness run` does up to its `process::exit`.
    let log = std::fs::read_to_string(repo.path("requests.jsonl")).unwrap();
    assert!(log.lines().last().unwrap().contains("shutdown"), "the engine was not stopped: {log}");
    let pid: u32 = std::fs::read_to_string(repo.path("starts.txt")).unwrap().trim().parse().unwrap();
    assert_ends(pid, "engine process");
    let left: Vec<String> = sessions().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "session directories left behind: {left:?}");
    drop(suite);
    Ok(())
}

/// Ctrl-C during `harness run`: the engine's process group (which the terminal's SIGINT does not
/// reach: it is a group of its own) is killed and its session directory removed; the harness
/// still dies of SIGINT, as a shell expects.
fn an_interrupted_run_ends_its_engines_and_removes_their_session_files() -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let repo = TempRepo::with_cases(&[CASE]);
    let pid_file = repo.path("engine.pid");
    // An engine that starts and never answers `load`.
    repo.write(
        "cases/engines/sighang.yaml",
        &format!(
            "command: [sh, -c, 'echo $$ > {}; exec sleep 60']\nprotocol: 2\nfamilies: ['*']\ndefault: true\n\
             timeout: 120\nnames: []\nlayouts: []\n",
            pid_file.display()
        ),
    );
    let sessions = || common::session_dirs("sighang");
    let before = sessions();
    let mut child = std::process::Command::new(common::harness_bin())
        .args(["run", "sighang::", "--test-threads", "1"])
        .env("HARNESS_ROOT", repo.root())
        .env_remove("CI")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let started = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = started.filter(|_| sessions().len() > before.len()) {
            break pid;
        }
        assert!(Instant::now() < until, "the engine did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: a signal to the child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "harness run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert_ends(pid, "engine process (after the interrupt)");
    let left: Vec<String> = sessions().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "session directories left behind: {left:?}");
    Ok(())
}

fn protocol_2_taps_an_engine_does_not_produce_are_noted_not_failed() -> Outcome {
    let repo = replay2_repo(&[("REPLAY2_NOT_PRODUCED", "model.layers.0.self_attn.o_proj")], "");
    let r = run_on(&repo, "replay2");
    assert_eq!(r.verdict, Verdict::Pass, "{}", terminal::render(&r));
    assert!(!r.taps.iter().any(|t| t.name == "model.layers.0.self_attn.o_proj"));
    let note = r.notes.iter().find(|n| n.starts_with("not compared")).expect("a note");
    assert_eq!(note, "not compared: engine `replay2` did not produce `model.layers.0.self_attn.o_proj` (fused away)");
    Ok(())
}

/// Block runs (protocol 2's optional `block` op) give external engines the `added` column: with
/// layer 0's output off, layer 1's output is off too, but run alone on the golden of its input it
/// adds nothing (the replay engine answers block requests with the reference's tensors).
fn protocol_2_block_runs_fill_the_added_column() -> Outcome {
    let blocks = r#"[{"path": "model.layers.1", "input": "model.layers.0"}]"#;
    let repo = replay2_repo(&[("REPLAY2_BLOCKS", blocks), ("REPLAY2_BLOCK_DIR", "clean")], "");
    let dir = repo.path("replay");
    std::fs::create_dir_all(repo.path("clean")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, repo.path("clean").join(p.file_name().unwrap())).unwrap();
    }
    for name in ["blk.0", "blk.1"] {
        let p = dir.join(format!("{name}.npy"));
        let t = harness::tensor::read_npy(&p, None).unwrap();
        let off: Vec<f32> = t.data().iter().map(|v| v + 1e-2).collect();
        write_npy(&p, &Tensor::new(t.shape().to_vec(), off).unwrap()).unwrap();
    }
    let r = run_on(&repo, "replay2");
    assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
    let tap = |n: &str| r.taps.iter().find(|t| t.name == n).unwrap();
    assert!(!tap("model.layers.1").status.is_pass());
    let log0 = std::fs::read_to_string(repo.path("requests.jsonl")).unwrap();
    let added = tap("model.layers.1")
        .added
        .as_ref()
        .unwrap_or_else(|| panic!("layer 1 was run alone: {}", &log0[log0.len().saturating_sub(1500)..]));
    assert!(added.within_tolerance && added.max_abs < 1e-5, "{added:?}");
    assert!(tap("model.layers.0").added.is_none(), "no block announced for layer 0");
    let log = std::fs::read_to_string(repo.path("requests.jsonl")).unwrap();
    let block: serde_json::Value =
        serde_json::from_str(log.lines().find(|l| l.contains("\"block\"")).expect("a block request")).unwrap();
    assert_eq!(block["block"], "model.layers.1");
    assert_eq!(block["input"]["shape"], serde_json::json!(tap("model.layers.0").shape));
    Ok(())
}

fn protocol_2_a_crash_fails_that_request_and_the_next_one_restarts_the_engine() -> Outcome {
    let repo = replay2_repo(&[("REPLAY2_CRASH_ON", "2")], "");
    let case = repo.load(CASE).unwrap();
    let suite = repo.suite(vec![]);
    let e = suite.registry.get("replay2").unwrap().clone();
    assert_eq!(suite.run_trial(&case, &e).verdict, Verdict::Pass);
    let r = suite.run_trial(&case, &e);
    assert_eq!(r.verdict, Verdict::Error);
    let msg = r.error.unwrap();
    assert!(msg.contains("exited with status 3 during its `forward` request"), "{msg}");
    assert!(msg.contains("replay2: crashing as asked"), "the stderr tail: {msg}");
    assert_eq!(suite.run_trial(&case, &e).verdict, Verdict::Pass, "restarted");
    assert_eq!(starts(&repo), 2);
    Ok(())
}

fn protocol_2_a_silent_engine_is_killed_at_its_timeout() -> Outcome {
    let repo = replay2_repo(&[("REPLAY2_HANG", "1")], "timeout: 1\n");
    let t = Instant::now();
    let r = run_on(&repo, "replay2");
    assert_eq!(r.verdict, Verdict::Error);
    let msg = r.error.unwrap();
    assert!(msg.contains("did not answer its `forward` request within its timeout of 1 s"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // Stray stdout is a protocol error that names the line.
    let repo = replay2_repo(&[("REPLAY2_NOISE", "1")], "");
    let msg = run_on(&repo, "replay2").error.unwrap();
    assert!(msg.contains("wrote a line on stdout that is not JSON: \"loading weights... done\""), "{msg}");
    Ok(())
}

/// One engine tensor feeding several taps (HF's `self_attn` returns its `o_proj`'s output), and a
/// layout given as a sequence of ops: the replay engine writes `o_proj` only, each per-layer
/// tensor reversed, and the rules map it back.
fn one_tensor_feeds_several_taps_and_layout_ops_run_in_order() -> Outcome {
    let repo = TempRepo::with_cases(&[CASE]);
    let dir = replay_dir(&repo, true);
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".self_attn.npy") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let env = [("REPLAY_DIR", dir.to_str().unwrap())];
    let rules = "names:\n  - {engine: token_embd, hf: model.embed_tokens}\n  \
                 - {engine: 'blk\\.(\\d+)\\.self_attn\\.o_proj', hf: ['model.layers.$1.self_attn.o_proj', 'model.layers.$1.self_attn']}\n  \
                 - {engine: 'blk\\.(\\d+)', hf: 'model.layers.$1'}\n  \
                 - {engine: 'blk\\.(\\d+)\\.(.+)', hf: 'model.layers.$1.$2'}\n\
                 layouts:\n  - engine: 'blk\\..*'\n    ops:\n      - {reverse: true}\n      \
                 - {reshape: [-1]}\n      - {reshape: [batch, seq, -1]}\n";
    engine_file(&repo, "replay", "replay.sh", &env, rules);
    let r = run_on(&repo, "replay");
    assert_eq!(r.verdict, Verdict::Pass, "{}", terminal::render(&r));
    let attn = r.taps.iter().find(|t| t.name == "model.layers.0.self_attn").expect("self_attn compared");
    assert!(attn.status.is_pass());
    Ok(())
}

/// Depth bisection of an external engine runs it on model files cut to k layers: llama.cpp reads
/// its layer count from the GGUF, so a lowered config alone would still run every layer and every
/// depth would look divergent. With one weight of layer 1 perturbed in the GGUF and only `logits`
/// exposed, bisection must name layer 1.
fn depth_bisection_gives_an_external_engine_files_cut_to_k_layers() -> Outcome {
    let python = common::repo_root().join("tools/.venv/bin/python");
    let have =
        std::process::Command::new(&python).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !have {
        return Err(Skip(format!(
            "llama-cpp-python is not installed in {} (hint: tools/.venv/bin/pip install -r \
             tools/adapters/requirements-llama-cpp.txt; .ci/run installs it)",
            python.display()
        )));
    }
    let case = "llama/gguf-f32";
    let repo = TempRepo::with_cases(&[case]);
    std::os::unix::fs::symlink(common::repo_root().join("tools"), repo.path("tools")).unwrap();
    // The shipped engine file with only `logits` exposed: an outputs-only engine.
    let text = std::fs::read_to_string(common::repo_root().join("cases/engines/llama-cpp.yaml")).unwrap();
    let (head, rest) = text.split_once("\ntaps:\n").unwrap();
    let names = rest.find("\nnames:").unwrap();
    repo.write("cases/engines/llama-cpp.yaml", &format!("{head}\ntaps: [logits]{}", &rest[names..]));
    let clean = repo.run(case, "llama-cpp", vec![]);
    assert_eq!(clean.verdict, Verdict::Pass, "{}", terminal::render(&clean));
    // Perturb one element of blk.1.ffn_down.weight (F32) in place.
    let gguf = repo.path("goldens/models/llama-tiny-gguf/model.f32.gguf");
    let mut f = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let info = &content.tensor_infos["blk.1.ffn_down.weight"];
    let at = (content.tensor_data_offset + info.offset) as usize + 4 * 3;
    let mut bytes = std::fs::read(&gguf).unwrap();
    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 0.5;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&gguf, bytes).unwrap();
    let r = repo.run(case, "llama-cpp", vec![]);
    assert_eq!(r.verdict, Verdict::Fail, "{}", terminal::render(&r));
    let b = r.bisection.as_ref().expect("an outputs-only external engine is bisected");
    assert_eq!(b.first_divergent_layer.as_deref(), Some("model.layers.1"), "{}", b.describe());
    let passed: Vec<usize> = b.probes.iter().filter(|p| p.pass).map(|p| p.depth).collect();
    assert_eq!(passed, [1], "depth 1 runs layer 0 only and matches its golden: {:?}", b.probes);
    Ok(())
}

tests!(
    one_tensor_feeds_several_taps_and_layout_ops_run_in_order,
    protocol_2_starts_the_engine_once_per_model_and_compares_as_protocol_1,
    protocol_2_taps_an_engine_does_not_produce_are_noted_not_failed,
    a_run_stops_its_engines_and_removes_their_session_files,
    an_interrupted_run_ends_its_engines_and_removes_their_session_files,
    protocol_2_block_runs_fill_the_added_column,
    protocol_2_a_crash_fails_that_request_and_the_next_one_restarts_the_engine,
    protocol_2_a_silent_engine_is_killed_at_its_timeout,
    generic_engine_with_a_planted_bug_fails_at_that_tap,
    names_and_layouts_are_mapped_and_the_request_is_complete,
    a_missing_layout_rule_names_the_tap_and_suggests_the_rule,
    a_wrong_shape_past_the_leading_axes_is_a_shape_mismatch_with_a_hint,
    a_missing_tap_names_the_engine_file_and_the_tap,
    an_unreadable_output_names_the_tensor_and_the_tap,
    outputs_of_another_dtype_than_declared_are_refused,
    a_layout_rule_that_does_not_fit_is_located,
    a_hanging_engine_is_killed_at_its_timeout_with_its_children,
    a_crash_is_reported_with_its_status_and_stderr_tail,
    bad_engine_files_become_load_trials_and_hide_nothing,
    an_engine_that_is_not_installed_is_ignored_outside_ci_with_the_reason,
    engine_vs_engine_localizes_and_hints_a_mutant,
    engine_vs_engine_excludes_the_reference_and_checks_its_name,
    diff_applies_an_engines_rules,
    depth_bisection_gives_an_external_engine_files_cut_to_k_layers,
);
