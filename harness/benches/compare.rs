//! Metrics throughput against a plain read of the same memory, and golden loading against
//! reading the file once. `cargo bench -p harness --bench compare`; `tools/bench_report.py` runs
//! it with numpy's equivalent and prints docs/performance.md's table.

use std::io::Read;

use divan::Bencher;
use divan::counter::BytesCount;
use harness::metrics::{compare, compare_golden};
use harness::tensor::Tensor;
use rayon::prelude::*;

mod data;

// Counts the allocations of each benchmark: a compare allocates a few kilobytes of bookkeeping,
// never a tap-sized temporary.
#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    println!("metrics kernel: {}", harness::metrics::isa());
    divan::main();
}

/// Sum with independent lanes, so the loop is bound by memory, not by the add latency.
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// The plain read: both arrays summed, split in chunks over the cores like `compare`.
#[divan::bench(args = data::SIZES, sample_count = 15, sample_size = 1)]
fn read(b: Bencher, n: usize) {
    let p = data::pair(n);
    b.counter(BytesCount::new(8 * n)).bench(|| {
        p.0.par_chunks(1 << 16).zip(p.1.par_chunks(1 << 16)).map(|(x, y)| (sum(x) + sum(y)) as f64).sum::<f64>()
    });
}

/// Every metric of a tap in one pass (allclose count, max abs, mean abs, max rel, cosine, NMSE).
#[divan::bench(args = data::SIZES, sample_count = 15, sample_size = 1)]
fn metrics(b: Bencher, n: usize) {
    let p = data::pair(n);
    b.counter(BytesCount::new(8 * n)).bench(|| compare(&p.0, &p.1, data::TOL, None));
}

/// Reading the 1 GiB golden once, as `cat` would: read(2) through a 1 MiB buffer.
#[divan::bench(sample_count = 15, sample_size = 1)]
fn read_once_1gib(b: Bencher) {
    data::ensure(data::GIB);
    let path = data::path('e', data::GIB);
    let mut buf = vec![0u8; 1 << 20];
    b.counter(BytesCount::new(4 * data::GIB)).bench_local(|| {
        let mut f = std::fs::File::open(&path).unwrap();
        let mut total = 0;
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break total;
            }
            total += k;
        }
    });
}

/// The engine output of the 1 GiB tap, as the tensor an engine returns.
fn output_1gib() -> Tensor {
    Tensor::new(vec![data::GIB], data::pair(data::GIB).0.clone()).unwrap()
}

/// Load the 1 GiB golden as a trial does (header, shape, remembered hash) and compare it with an
/// engine output held in memory: the golden's file is streamed through the comparison.
#[divan::bench(sample_count = 15, sample_size = 1)]
fn load_compare_1gib(b: Bencher) {
    let out = output_1gib();
    let g = data::goldens_1gib(data::verifier());
    g.load("x").unwrap();
    b.counter(BytesCount::new(4 * data::GIB)).bench_local(|| {
        let t = g.load("x").unwrap();
        compare_golden(&out, &t, data::TOL, None)
    });
}

/// The same through a memory map of the golden (what diagnosis and logits metrics use), for
/// comparison: mapping and unmapping 262,144 pages is kernel work that streaming avoids.
#[divan::bench(sample_count = 15, sample_size = 1)]
fn load_compare_1gib_mapped(b: Bencher) {
    let out = output_1gib();
    let g = data::goldens_1gib(data::verifier());
    g.load("x").unwrap();
    b.counter(BytesCount::new(4 * data::GIB)).bench_local(|| {
        let t = g.load("x").unwrap();
        compare(out.data(), t.data(), data::TOL, None)
    });
}

/// The same on first sight of the golden: its sha256 is computed in full.
#[divan::bench(sample_count = 5, sample_size = 1)]
fn load_compare_1gib_first(b: Bencher) {
    let out = output_1gib();
    let g = data::goldens_1gib(harness::golden::Verifier::new(None, 0, 0));
    b.counter(BytesCount::new(4 * data::GIB)).bench_local(|| {
        let t = g.load("x").unwrap();
        compare_golden(&out, &t, data::TOL, None)
    });
}
