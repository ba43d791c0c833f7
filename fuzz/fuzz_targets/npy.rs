#![no_main]
//! .npy files: any bytes must give a tensor or an error, never a panic or a huge allocation.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = harness::tensor::parse_npy_bytes(data, None);
    let _ = harness::tensor::parse_npy_bytes(data, Some("bfloat16"));
});
