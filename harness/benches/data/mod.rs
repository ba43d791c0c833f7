//! Benchmark data shared by the Rust benchmarks and `tools/bench_numpy.py`: pairs of `.npy`
//! files (engine output `a_<n>.npy`, golden `e_<n>.npy`) under `target/bench-data/`, or
//! `$HARNESS_BENCH_DATA`. Generated once, deterministically; `e_268435456.npy` (256 Mi float32,
//! 1 GiB of data) doubles as the 1 GiB golden, with a manifest naming its sha256.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use harness::golden::{Goldens, Manifest, Verifier, sha256_file};

/// Tap sizes in elements: 16 Mi, 64 Mi, 256 Mi.
pub const SIZES: [usize; 3] = [1 << 24, 1 << 26, 1 << 28];
/// The 1 GiB golden: 256 Mi float32.
pub const GIB: usize = 1 << 28;
pub const TOL: harness::metrics::AllClose = harness::metrics::AllClose { atol: 1e-4, rtol: 1e-3 };

pub fn dir() -> PathBuf {
    let d = std::env::var_os("HARNESS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn path(which: char, n: usize) -> PathBuf {
    dir().join(format!("{which}_{n}.npy"))
}

/// Golden-like values (uniform in [-4, 4)) and an engine output within 1e-5 of them, except
/// every 1,000,003rd element, off by 1e-2 (a few mismatches, as in a real near-miss).
fn generate(n: usize) {
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ n as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut e = Vec::with_capacity(n);
    let mut a = Vec::with_capacity(n);
    for i in 0..n {
        let g = next() * 8.0 - 4.0;
        e.push(g);
        a.push(g + (next() - 0.5) * 2e-5 + if i % 1_000_003 == 7 { 1e-2 } else { 0.0 });
    }
    write_npy(&path('e', n), &e);
    write_npy(&path('a', n), &a);
}

/// A float32 C-order .npy, written at disk speed (one header, then the raw little-endian data).
fn write_npy(path: &Path, v: &[f32]) {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", v.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&tmp).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(bytemuck::cast_slice(v)).unwrap();
    f.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Make sure the files of size `n` exist.
pub fn ensure(n: usize) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !path('a', n).exists() || !path('e', n).exists() {
        eprintln!("generating benchmark data: {} and {}", path('a', n).display(), path('e', n).display());
        generate(n);
    }
}

/// Engine output and golden of one size, in memory.
pub type Pair = Arc<(Vec<f32>, Vec<f32>)>;

/// The pair of size `n`, read into memory (as an engine's output would be).
pub fn pair(n: usize) -> Pair {
    static CACHE: Mutex<Vec<(usize, Pair)>> = Mutex::new(Vec::new());
    if let Some((_, p)) = CACHE.lock().unwrap().iter().find(|(m, _)| *m == n) {
        return p.clone();
    }
    ensure(n);
    let read = |w| harness::tensor::read_npy(&path(w, n), None).unwrap().into_vec();
    let p = Arc::new((read('a'), read('e')));
    CACHE.lock().unwrap().push((n, p.clone()));
    p
}

/// The 1 GiB golden `e_268435456.npy` as a case's goldens (tap `x`), with its sha256 computed
/// once and kept beside it.
pub fn goldens_1gib(verifier: Verifier) -> Goldens {
    static SHA: OnceLock<String> = OnceLock::new();
    ensure(GIB);
    let file = path('e', GIB);
    let sha = SHA.get_or_init(|| {
        let side = file.with_extension("npy.sha256");
        let meta = std::fs::metadata(&file).unwrap();
        let stamp = format!("{:?} {}", meta.modified().unwrap(), meta.len());
        if let Ok(s) = std::fs::read_to_string(&side)
            && let Some((h, st)) = s.split_once('\n')
            && st == stamp
        {
            return h.to_string();
        }
        let h = sha256_file(&file).unwrap();
        std::fs::write(&side, format!("{h}\n{stamp}")).unwrap();
        h
    });
    // A committed manifest with one 1 GiB tap in place of its taps: it keeps every field the
    // format has.
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../goldens/llama/mha/manifest.json");
    let mut manifest: Manifest = serde_json::from_str(&std::fs::read_to_string(real).unwrap()).unwrap();
    manifest.case = "bench/1gib".into();
    manifest.module_order = vec!["x".into()];
    manifest.inputs.clear();
    manifest.taps = vec![harness::golden::TapEntry {
        name: "x".into(),
        file: file.file_name().unwrap().to_str().unwrap().into(),
        shape: vec![GIB],
        dtype: "float32".into(),
        sha256: sha.clone(),
        noise: None,
    }];
    Goldens::new(dir(), manifest, Arc::new(verifier))
}

/// The verifier a run would use, remembering checks under the data directory.
pub fn verifier() -> Verifier {
    Verifier::new(Some(dir().join("verified")), harness::golden::CACHE_MIN_BYTES, 2)
}
