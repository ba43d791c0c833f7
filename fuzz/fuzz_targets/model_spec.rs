#![no_main]
//! Model specs: any bytes must give a spec or an error, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir();
    let file = root.join("cases/models/fuzz.yaml");
    let Ok(doc) = harness::yaml::Doc::from_bytes(&file, data.to_vec()) else { return };
    let _ = harness::case::parse_model_spec(&root, "fuzz", doc);
});
