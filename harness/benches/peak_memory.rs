//! Peak memory of comparing a 1 GiB tap: `cargo bench -p harness --bench peak_memory` prints
//! one JSON line. The engine output is read into anonymous memory (as an engine would hold
//! it), the golden is loaded and compared as a trial does (streamed from its file); the
//! process's high-water RSS (VmHWM, which would count mapped golden pages too) minus both
//! tensors' sizes is the harness's own (negative: the golden never entered the process's RSS).

use std::io::Read;

mod data;

fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    data::ensure(data::GIB);
    let baseline = status("VmRSS:");
    // The engine output, read without mapping its file, so only anonymous memory holds it.
    let mut output = vec![0f32; data::GIB];
    let mut f = std::fs::File::open(data::path('a', data::GIB)).unwrap();
    let mut preamble = [0u8; 10];
    f.read_exact(&mut preamble).unwrap();
    let mut header = vec![0u8; u16::from_le_bytes([preamble[8], preamble[9]]) as usize];
    f.read_exact(&mut header).unwrap();
    f.read_exact(bytemuck::cast_slice_mut(&mut output)).unwrap();
    let output = harness::tensor::Tensor::new(vec![data::GIB], output).unwrap();
    let goldens = data::goldens_1gib(data::verifier());
    let golden = goldens.load("x").unwrap();
    assert!(golden.is_mapped());
    let m = harness::metrics::compare_golden(&output, &golden, data::TOL, None);
    let peak = status("VmHWM:");
    let (out_bytes, golden_bytes) = (4 * data::GIB as u64, 4 * data::GIB as u64);
    println!(
        "{}",
        serde_json::json!({
            "peak_rss": peak, "baseline_rss": baseline, "engine_output": out_bytes, "golden": golden_bytes,
            "overhead": peak as i64 - (out_bytes + golden_bytes) as i64, "mismatches": m.mismatches,
        })
    );
}
