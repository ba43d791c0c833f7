#![no_main]
//! Engine files (cases/engines/*.yaml): any bytes must give an engine spec or an error, never a
//! panic; the rules of a spec that loads must run backwards consistently and lay out any tensor
//! without panicking.

use harness::engine::external::{Dims, spec};
use harness::tensor::Tensor;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["model.embed_tokens", "model.layers.0.self_attn", "model.layers.12.mlp.up_proj", "logits"];

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir();
    let file = root.join("cases/engines/fuzz.yaml");
    let Ok(doc) = harness::yaml::Doc::from_bytes(&file, data.to_vec()) else { return };
    let Ok(spec) = spec::parse(&root, doc) else { return };
    for hf in NAMES {
        if let Some(name) = spec.rules.to_engine(hf) {
            assert_eq!(spec.rules.to_hf(&name), *hf, "{name} does not map back to {hf}");
        }
    }
    for name in ["blk.0.attn_out", "rope_cos", "token_embd"] {
        let t = Tensor::new(vec![2, 3, 4], (0..24).map(|v| v as f32).collect()).unwrap();
        let _ = spec.rules.layout(name, t, &Dims { batch: Some(1), seq: Some(3) });
    }
});
