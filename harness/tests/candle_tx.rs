//! candle-transformers as an engine under test: the findings table, depth bisection, GGUF
//! tolerances and expected findings.

mod common;

use common::skip::{Outcome, Skip};

use std::sync::Arc;

use common::{TempRepo, repo_root};
use harness::case::{Inputs, ModelSpec};
use harness::engine::{Engine, LoadedModel, Outputs};
use harness::engines::candle_tx::causal::Causal;
use harness::engines::candle_tx::gguf::{GgufType, gguf_path};
use harness::engines::candle_tx::{Checkpoint, Noted};
use harness::engines::reference::{Mutation, ReferenceEngine};
use harness::report::{TrialReport, Verdict};
use harness::runner::{Suite, discover};

const ENGINES: [&str; 3] = ["candle-transformers", "candle-gguf-f32", "candle-gguf-q8_0"];

/// Every committed case on candle-transformers and the GGUF engines, as docs/findings.md's findings
/// table (`cargo test --test candle_tx -- findings --nocapture` prints it). Every trial must be
/// green: passing, or failing exactly as `cases/expected/<engine>.yaml` documents. Cases whose
/// model is generated (committed) always run; cases of checkpoints on disk (`path:`/`hf:`, e.g.
/// MiniLM) are a second test, ignored when the checkpoint is absent.
fn findings(real_models: bool) -> Outcome {
    let root = repo_root();
    let suite = Suite::new(root.clone(), harness::engine::builtin());
    let mut rows = Vec::new();
    let mut load_errors = Vec::new();
    let mut absent = Vec::new();
    for file in discover(&root).unwrap() {
        let case = match harness::case::load_case(&root, &file, &mut Default::default()) {
            Ok(c) => c,
            Err(e) if e.kind == harness::ErrorKind::ModelAbsent => {
                if real_models {
                    absent.push(e.to_string());
                }
                continue;
            }
            Err(e) => {
                load_errors.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        let generated = matches!(case.model.source, harness::case::Source::Random { .. });
        if generated == real_models {
            continue;
        }
        for engine in suite.engines_for(&case).unwrap() {
            if ENGINES.contains(&engine.name()) {
                rows.push((case.model.id.clone(), suite.run_trial(&case, &engine)));
            }
        }
    }
    assert!(load_errors.is_empty(), "case files that do not load:\n{}", load_errors.join("\n"));
    if !absent.is_empty() {
        absent.dedup();
        return Err(Skip(absent.join("; ")));
    }
    print_findings(&rows);
    let red: Vec<&TrialReport> = rows.iter().map(|(_, r)| r).filter(|r| !r.ok()).collect();
    assert!(
        red.is_empty(),
        "{}",
        red.iter().map(|r| harness::report::terminal::render(r)).collect::<Vec<_>>().join("\n")
    );
    let least = if real_models { 4 } else { 20 };
    assert!(rows.len() >= least, "only {} trials ran", rows.len());
    Ok(())
}

fn findings_table() -> Outcome {
    findings(false)
}

fn findings_table_real_models() -> Outcome {
    findings(true)
}

fn print_findings(rows: &[(String, TrialReport)]) {
    println!("| engine | case | model | verdict | first divergence | first divergent layer (bisection) | hint |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (model, r) in rows {
        let verdict = match (r.verdict, r.expected.as_ref()) {
            (Verdict::Pass, _) => "pass".to_string(),
            (v, Some(e)) if e.mismatch.is_none() => format!("{v:?} (documented)").to_lowercase(),
            (v, _) => format!("{v:?}").to_uppercase(),
        };
        let first = match (r.first_divergent_tap(), &r.error) {
            (Some(t), _) => format!(
                "`{}` (max_abs {}, cosine {:.6})",
                t.name,
                t.metrics.as_ref().map_or("-".into(), |m| format!("{:.2e}", m.max_abs)),
                t.metrics.as_ref().map_or(f64::NAN, |m| m.cosine)
            ),
            (None, Some(e)) => {
                let msg = e.split_once("failed: ").map_or(e.as_str(), |(_, m)| m);
                format!("error: {}", msg.split(" Layout").next().unwrap_or(msg))
            }
            _ => "-".into(),
        };
        let layer = r
            .bisection
            .as_ref()
            .and_then(|b| {
                b.first_divergent_layer
                    .as_ref()
                    .map(|l| format!("`{l}` (depth {:?})", b.first_divergent_depth.unwrap_or(0)))
            })
            .unwrap_or("-".into());
        let hint = r.hints.first().map_or("-".to_string(), |h| h.message.clone());
        println!("| {} | `{}` | {model} | {verdict} | {first} | {layer} | {hint} |", r.engine, r.case);
    }
}

/// The reference engine with a bug, exposing only final outputs (as candle-transformers does).
struct OutputsOnly(ReferenceEngine, Vec<String>);

struct OutputsOnlyModel(Box<dyn LoadedModel>, Vec<String>);

impl Engine for OutputsOnly {
    fn name(&self) -> &str {
        "outputs-only"
    }
    fn supports(&self, m: &ModelSpec) -> Result<(), String> {
        self.0.supports(m)
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, spec: &ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        Ok(Box::new(OutputsOnlyModel(self.0.load(spec)?, self.1.clone())))
    }
}

impl LoadedModel for OutputsOnlyModel {
    fn run(&self, inputs: &Inputs, taps: &[&str]) -> harness::Result<Outputs> {
        let want: Vec<&str> = taps.iter().copied().filter(|t| self.1.iter().any(|p| p == t)).collect();
        let mut out = self.0.run(inputs, &want)?;
        out.retain(|k, _| self.1.contains(k));
        Ok(out)
    }
    fn taps(&self) -> Option<Vec<String>> {
        Some(self.1.clone())
    }
}

fn outputs_only(m: Mutation, taps: &[&str]) -> Arc<dyn Engine> {
    Arc::new(OutputsOnly(ReferenceEngine::mutant("m", m), taps.iter().map(|s| s.to_string()).collect()))
}

fn perturb(name: &str) -> Mutation {
    Mutation::PerturbWeight { name: name.into(), index: 3, delta: 0.5 }
}

fn bisection_names_the_layer_whose_weight_is_wrong() -> Outcome {
    let repo = TempRepo::with_cases(&["distilbert/sharp", "llama/gguf-f32"]);
    for (case, weight, layer, taps) in [
        (
            "distilbert/sharp",
            "distilbert.transformer.layer.0.ffn.lin2.weight",
            "distilbert.transformer.layer.0",
            &["last_hidden_state"][..],
        ),
        (
            "distilbert/sharp",
            "distilbert.transformer.layer.1.attention.v_lin.weight",
            "distilbert.transformer.layer.1",
            &["last_hidden_state"][..],
        ),
        (
            "distilbert/sharp",
            "distilbert.transformer.layer.2.ffn.lin1.weight",
            "distilbert.transformer.layer.2",
            &["last_hidden_state"][..],
        ),
        ("llama/gguf-f32", "model.layers.1.mlp.down_proj.weight", "model.layers.1", &["logits"][..]),
        ("llama/gguf-f32", "model.layers.2.self_attn.q_proj.weight", "model.layers.2", &["logits"][..]),
    ] {
        let r = repo.run(case, "outputs-only", vec![outputs_only(perturb(weight), taps)]);
        assert_eq!(r.verdict, Verdict::Fail, "{case} with {weight}");
        let b = r.bisection.as_ref().unwrap_or_else(|| panic!("{case}: no bisection"));
        assert_eq!(b.first_divergent_layer.as_deref(), Some(layer), "{case} with {weight}: {}", b.describe());
        assert!(b.probes.len() <= 3, "binary search over 3 layers runs at most 3 depths: {:?}", b.probes);
        assert!(harness::report::terminal::render(&r).contains(&format!("first divergent layer `{layer}`")));
    }
    // A bug outside the layers: every depth diverges, bisection says depth 1.
    let r = repo.run("llama/gguf-f32", "outputs-only", vec![outputs_only(perturb("lm_head.weight"), &["logits"])]);
    assert_eq!(r.bisection.unwrap().first_divergent_depth, Some(1));
    Ok(())
}

fn outputs_only_engines_compare_the_intersection_and_say_what_they_skip() -> Outcome {
    let repo = TempRepo::with_cases(&["distilbert/sharp"]);
    let ok = repo.run("distilbert/sharp", "outputs-only", vec![outputs_only(Mutation::NoAttentionScale, &["logits"])]);
    assert_eq!(ok.taps.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["logits"]);
    assert!(ok.notes.iter().any(|n| n.starts_with("not compared: 8 of the case's taps")), "{:?}", ok.notes);
    let none =
        repo.run("distilbert/sharp", "outputs-only", vec![outputs_only(Mutation::NoAttentionScale, &["pooled.cls"])]);
    assert_eq!(none.verdict, Verdict::Error);
    assert!(none.error.unwrap().contains("produces none of the case's taps"));
    Ok(())
}

fn candle_transformers_reports_translations_and_unread_tensors() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/gqa", "modernbert/tiny-2l"]);
    let r = repo.run("llama/gqa", "candle-transformers", vec![]);
    assert_eq!(r.verdict, Verdict::Pass);
    assert!(
        r.notes.iter().any(|n| n.ends_with("rope_parameters.rope_theta -> rope_theta (500000.0)")),
        "{:?}",
        r.notes
    );
    let r = repo.run("modernbert/tiny-2l", "candle-transformers", vec![]);
    let unread = r.notes.iter().find(|n| n.contains("did not read")).expect("unread note");
    assert!(
        unread.contains("13 of the checkpoint's 27 tensors") && unread.contains("`embeddings.norm.bias`"),
        "{unread}"
    );
    Ok(())
}

/// Why the translation matters: candle-transformers' LlamaConfig defaults `rope_theta` to 10000,
/// so a transformers-5 config.json (theta under `rope_parameters`) silently runs the wrong RoPE.
fn untranslated_rope_theta_is_silently_wrong() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/gqa"]);
    let case = repo.load("llama/gqa").unwrap();
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(case.model.dir.join("config.json")).unwrap()).unwrap();
    assert!(!raw.contains_key("rope_theta"));
    let ckpt = Checkpoint::load(&case.model.dir).unwrap();
    let m = Causal::llama(&raw, ckpt.var_builder(), &case.model.dir.join("config.json")).unwrap();
    let out = m.run(&case.inputs, &["logits"]).unwrap();
    let golden = harness::golden::Store::new(repo.root()).open(&case).unwrap().load("logits").unwrap();
    let max = out["logits"].data().iter().zip(golden.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max > 1e-2, "the untranslated config should be visibly wrong, max_abs {max}");
    Ok(())
}

/// quantized_llama on the Q8_0 file, but told the q/k rows are in HF's half-split order (what a
/// GGUF written without llama.cpp's permutation would need): the case's tolerance rejects it.
struct NeoxGguf;

impl Engine for NeoxGguf {
    fn name(&self) -> &str {
        "gguf-neox"
    }
    fn implements(&self, class: &str) -> bool {
        class == "LlamaForCausalLM"
    }
    fn default_enabled(&self) -> bool {
        false
    }
    fn load(&self, spec: &ModelSpec) -> harness::Result<Box<dyn LoadedModel>> {
        use candle_core::quantized::gguf_file;
        let path = gguf_path(spec, GgufType::Q8_0);
        let mut f = std::fs::File::open(&path).unwrap();
        let mut ct = gguf_file::Content::read(&mut f).unwrap();
        ct.metadata.insert("general.architecture".into(), gguf_file::Value::String("qwen2".into()));
        let m = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            ct,
            &mut f,
            &candle_core::Device::Cpu,
        )?;
        Ok(Box::new(Noted::new(Box::new(Causal::gguf(m)), vec![])))
    }
}

fn q8_0_tolerance_rejects_a_rope_layout_mismatch() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/gguf-q8_0"]);
    let good = repo.run("llama/gguf-q8_0", "candle-gguf-q8_0", vec![]);
    assert_eq!(good.verdict, Verdict::Pass, "{}", harness::report::terminal::render(&good));
    let bad = repo.run("llama/gguf-q8_0", "gguf-neox", vec![Arc::new(NeoxGguf)]);
    assert_eq!(bad.verdict, Verdict::Fail);
    let m = bad.taps[0].metrics.as_ref().unwrap();
    assert!(m.sqnr_db < 20.0, "sqnr {}", m.sqnr_db);
    // Every layer has the bug, so the first one already diverges.
    assert_eq!(bad.bisection.unwrap().first_divergent_layer.as_deref(), Some("model.layers.0"));
    Ok(())
}

fn expected_findings_turn_red_when_fixed_or_changed() -> Outcome {
    let repo = TempRepo::with_cases(&["bert/tiny-2l", "distilbert/sharp"]);
    repo.write(
        "cases/expected/candle-transformers.yaml",
        "bert/tiny-2l:\n  finding: claimed bug\ndistilbert/sharp:\n  finding: gelu\n  first_divergent_layer: distilbert.transformer.layer.1\n",
    );
    let fixed = repo.run("bert/tiny-2l", "candle-transformers", vec![]);
    assert_eq!(fixed.verdict, Verdict::Pass);
    assert!(!fixed.ok());
    assert!(fixed.expected.unwrap().mismatch.unwrap().contains("it passes now"));
    let moved = repo.run("distilbert/sharp", "candle-transformers", vec![]);
    assert!(!moved.ok());
    let msg = moved.expected.unwrap().mismatch.unwrap();
    assert!(msg.contains("first divergent layer is `distilbert.transformer.layer.0`"), "{msg}");

    repo.write("cases/expected/candle-transformers.yaml", "distilbert/sharpp:\n  finding: x\n");
    let e = repo.suite(vec![]).expectations().unwrap_err().to_string();
    assert!(
        e.contains("candle-transformers.yaml:2:3: no case `distilbert/sharpp`")
            && e.contains("did you mean `distilbert/sharp`?"),
        "{e}"
    );
    repo.write("cases/expected/candle-transformer.yaml", "distilbert/sharp:\n  finding: x\n");
    let e = repo.suite(vec![]).expectations().unwrap_err().to_string();
    assert!(e.contains("did you mean `candle-transformers.yaml`?"), "{e}");
    Ok(())
}

fn gguf_older_than_the_weights_is_refused() -> Outcome {
    let repo = TempRepo::with_cases(&["llama/gguf-f32"]);
    let w = repo.path("goldens/models/llama-tiny-gguf/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let case = repo.load("llama/gguf-f32").unwrap();
    let e = harness::engines::candle_tx::gguf::GgufEngine::new(GgufType::F32).load(&case.model).err().unwrap();
    assert!(e.to_string().contains("was not converted from the current"), "{e}");
    Ok(())
}

tests!(
    findings_table,
    findings_table_real_models,
    bisection_names_the_layer_whose_weight_is_wrong,
    outputs_only_engines_compare_the_intersection_and_say_what_they_skip,
    candle_transformers_reports_translations_and_unread_tensors,
    untranslated_rope_theta_is_silently_wrong,
    q8_0_tolerance_rejects_a_rope_layout_mismatch,
    expected_findings_turn_red_when_fixed_or_changed,
    gguf_older_than_the_weights_is_refused,
);
