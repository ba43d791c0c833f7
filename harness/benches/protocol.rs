//! What a persistent (protocol 2) external engine costs on the harness's side:
//! `cargo bench -p harness --bench protocol` prints one JSON line.
//!
//! The engine is a standard-library Python script that computes nothing: for each `forward` it
//! links tensors prepared beforehand into the request's output directory, and logs how long it
//! held each request (from reading its line to writing its reply). Per forward, the harness's
//! cost is the wall time of `LoadedModel::run` (inputs written as .npy, the request line, the
//! reply, every output read back and mapped) minus that engine time, which leaves the pipe's
//! latency on the harness's side (an upper bound). Two shapes:
//! - `tiny`: llama/mha's 29 taps (the reference engine's outputs, 1 x 7 tokens), a tiny case;
//! - `transfer`: one `logits` tap of 64 MiB (float32), for the bytes per second read back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::case::load_case;
use harness::engine::Engine;

const ENGINE: &str = r#"
import json, os, sys, time
src, log = os.environ["BENCH_SRC"], open(os.environ["BENCH_LOG"], "a")
for line in sys.stdin:
    t0 = time.perf_counter()
    req = json.loads(line)
    op = req.get("op")
    if op == "shutdown":
        break
    reply = {"id": req.get("id"), "ok": True}
    if op == "forward":
        for name in os.listdir(src):
            os.symlink(os.path.join(src, name), os.path.join(req["output_dir"], name))
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    if op == "forward":
        log.write(f"{(time.perf_counter() - t0) * 1e3}\n")
        log.flush()
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    /// Harness-side milliseconds per forward (wall minus the engine's own time).
    harness_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    bytes: u64,
}

/// `n` forwards of `case` through the null engine serving the tensors in `src`.
fn run(case_id: &str, src: &Path, taps: &[&str], n: usize, scratch: &Path) -> Run {
    let root = root();
    let case = load_case(&root, &root.join(format!("cases/{case_id}.yaml")), &mut Default::default()).unwrap();
    let log = scratch.join(format!("{}.log", src.file_name().unwrap().to_string_lossy()));
    let script = scratch.join("null_engine.py");
    std::fs::write(&script, ENGINE).unwrap();
    let file = scratch.join("null.yaml");
    std::fs::write(
        &file,
        format!(
            "command: [python3, '{}']\nprotocol: 2\nfamilies: [{}]\nenv: {{BENCH_SRC: '{}', BENCH_LOG: '{}'}}\nnames: []\nlayouts: []\n",
            script.display(),
            case.model.class,
            src.display(),
            log.display()
        ),
    )
    .unwrap();
    let engine = harness::engine::external::ExternalEngine::load(&root, &file).unwrap();
    let model = engine.load(&case.model).unwrap();
    let mut wall = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n + 5 {
        let t = Instant::now();
        let out = model.run(&case.inputs, taps).unwrap();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = out.values().map(|t| 4 * t.numel() as u64).sum();
    }
    drop(model);
    let engine_ms: Vec<f64> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| l.parse::<f64>().unwrap()).collect();
    // The first 5 warm the page cache and the interpreter.
    let (wall, engine_ms) = (wall[5..].to_vec(), engine_ms[5..].to_vec());
    let harness_ms = wall.iter().zip(&engine_ms).map(|(w, e)| w - e).collect();
    Run { harness_ms, wall_ms: wall, bytes }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let root = root();
    // tiny: what the reference engine computes for llama/mha, under HF names.
    let case = load_case(&root, &root.join("cases/llama/mha.yaml"), &mut Default::default()).unwrap();
    let reference = harness::engines::reference::ReferenceEngine::new();
    let outputs = reference.load(&case.model).unwrap().run(&case.inputs, &[]).unwrap();
    let tiny = scratch.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    let taps: Vec<&str> = case.taps.iter().map(|t| t.name.as_str()).collect();
    for name in &taps {
        harness::tensor::write_npy(&tiny.join(format!("{name}.npy")), &outputs[*name]).unwrap();
    }
    let small = run("llama/mha", &tiny, &taps, 200, scratch.path());
    // transfer: one 64 MiB logits tensor [batch, seq, n].
    let big = scratch.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let (b, s) = (case.inputs.input_ids.batch, case.inputs.input_ids.seq);
    let n = (16 << 20) / (b * s);
    let data: Vec<f32> = (0..b * s * n).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let t = harness::tensor::Tensor::new(vec![b, s, n], data).unwrap();
    harness::tensor::write_npy(&big.join("logits.npy"), &t).unwrap();
    let large = run("llama/mha", &big, &["logits"], 20, scratch.path());
    let gbps = large.bytes as f64 / (median(large.harness_ms.clone()) * 1e-3) / 1e9;
    println!(
        "{}",
        serde_json::json!({
            "tiny_taps": taps.len(),
            "tiny_bytes": small.bytes,
            "tiny_harness_ms": median(small.harness_ms.clone()),
            "tiny_wall_ms": median(small.wall_ms.clone()),
            "tiny_forwards": small.wall_ms.len(),
            "transfer_bytes": large.bytes,
            "transfer_harness_ms": median(large.harness_ms.clone()),
            "transfer_wall_ms": median(large.wall_ms.clone()),
            "transfer_gb_per_s": gbps,
        })
    );
}
