//! Smoke run of the fuzz targets: every input of the committed fuzz corpus (fuzz/corpus/<target>)
//! and every crash artifact (fuzz/artifacts/<target>) goes through the same entry points as the
//! cargo-fuzz targets, so a regression is caught by `cargo test` without libFuzzer.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("fuzz");
    let mut v = Vec::new();
    for dir in [fuzz.join("corpus").join(target), fuzz.join("artifacts").join(target)] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            v.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    v.sort();
    v
}

#[test]
fn case_corpus() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("cases/models")).unwrap();
    std::fs::write(r.join("cases/models/llama-tiny-mha.yaml"), include_str!("../../cases/models/llama-tiny-mha.yaml"))
        .unwrap();
    let files = inputs("case");
    assert!(files.len() >= 10, "the case corpus is missing");
    for f in files {
        let Ok(data) = std::fs::read(&f) else { continue }; // a running fuzzer may remove files
        if let Ok(doc) = harness::yaml::Doc::from_bytes(&r.join("cases/fuzz.yaml"), data) {
            let _ = harness::case::parse_case(r, doc, &mut Default::default());
        }
    }
}

#[test]
fn model_spec_corpus() {
    let root = tempfile::tempdir().unwrap();
    let files = inputs("model_spec");
    assert!(!files.is_empty(), "the model_spec corpus is missing");
    for f in files {
        let Ok(data) = std::fs::read(&f) else { continue }; // a running fuzzer may remove files
        let file = root.path().join("cases/models/fuzz.yaml");
        if let Ok(doc) = harness::yaml::Doc::from_bytes(&file, data) {
            let _ = harness::case::parse_model_spec(root.path(), "fuzz", doc);
        }
    }
}

#[test]
fn npy_corpus() {
    let files = inputs("npy");
    assert!(files.len() >= 5, "the npy corpus is missing");
    for f in files {
        let Ok(data) = std::fs::read(&f) else { continue }; // a running fuzzer may remove files
        let _ = harness::tensor::parse_npy_bytes(&data, None);
        let _ = harness::tensor::parse_npy_bytes(&data, Some("bfloat16"));
    }
}

#[test]
fn engine_spec_corpus() {
    use harness::engine::external::{Dims, spec};
    let root = tempfile::tempdir().unwrap();
    let files = inputs("engine_spec");
    assert!(files.len() >= 10, "the engine_spec corpus is missing");
    let mut loaded = 0;
    for f in files {
        let Ok(data) = std::fs::read(&f) else { continue }; // a running fuzzer may remove files
        let file = root.path().join("cases/engines/fuzz.yaml");
        let Ok(doc) = harness::yaml::Doc::from_bytes(&file, data) else { continue };
        let Ok(spec) = spec::parse(root.path(), doc) else { continue };
        loaded += 1;
        // The same checks as fuzz_targets/engine_spec.rs.
        for hf in ["model.embed_tokens", "model.layers.0.self_attn", "model.layers.12.mlp.up_proj", "logits"] {
            if let Some(name) = spec.rules.to_engine(hf) {
                assert_eq!(spec.rules.to_hf(&name), hf, "{}: {name}", f.display());
            }
        }
        for name in ["blk.0.attn_out", "rope_cos", "token_embd"] {
            let t = harness::tensor::Tensor::new(vec![2, 3, 4], (0..24).map(|v| v as f32).collect()).unwrap();
            let _ = spec.rules.layout(name, t, &Dims::new(Some(1), Some(3)));
        }
    }
    assert!(loaded >= 1, "no engine file of the corpus loads");
}
